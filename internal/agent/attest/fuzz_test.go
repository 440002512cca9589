package attest

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseStatusGroups feeds arbitrary /proc/<pid>/status content to the
// Groups: parser. It must not panic, must not accept input without a Groups:
// line, and what it accepts must survive a round trip through the kernel's
// format. Seeds: real status files (root, a user with
// groups, a kernel thread) and malformed variants in
// testdata/fuzz/FuzzParseStatusGroups/.
func FuzzParseStatusGroups(f *testing.F) {
	f.Add([]byte("Name:\tx\nGroups:\t4 24 27 \n"))
	f.Add([]byte("Groups:\n"))
	f.Add([]byte("Groups:\t1\nGroups:\t2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > MaxProcFileBytes {
			t.Skip() // readProcFile never passes more
		}
		groups, err := parseStatusGroups(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if !bytes.Contains(b, []byte("Groups:")) {
			t.Fatalf("accepted input without a Groups: line: %q", b)
		}
		var line strings.Builder
		line.WriteString("Groups:\t")
		for _, g := range groups {
			line.WriteString(strconv.FormatUint(uint64(g), 10) + " ")
		}
		again, err := parseStatusGroups([]byte(line.String() + "\n"))
		if err != nil || fmt.Sprint(again) != fmt.Sprint(groups) {
			t.Fatalf("round trip of %v: %v, %v", groups, again, err)
		}
	})
}

// FuzzParseStatStartTime feeds arbitrary /proc/<pid>/stat content to the
// starttime parser. It must not panic, and a value it accepts must be what a
// stat line built around the same command name and that value yields. Seeds:
// real stat lines (command names with spaces and parentheses, a kernel
// thread) and malformed variants in testdata/fuzz/FuzzParseStatStartTime/.
func FuzzParseStatStartTime(f *testing.F) {
	f.Add([]byte("1 (systemd) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 7 1 1 1\n"))
	f.Add([]byte("7 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 99\n"))
	f.Add([]byte("7 cmd S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > MaxProcFileBytes {
			t.Skip()
		}
		st, err := parseStatStartTime(b)
		if err != nil {
			return
		}
		end := bytes.LastIndexByte(b, ')')
		again, err := parseStatStartTime(fmt.Appendf(bytes.Clone(b[:end+1]), " S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", st))
		if err != nil || again != st {
			t.Fatalf("rebuilt line gives %d, %v; want %d", again, err, st)
		}
	})
}
