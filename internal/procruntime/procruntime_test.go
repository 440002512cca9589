package procruntime

import (
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"1024", 1024, ""},
		{"256MiB", 256 << 20, ""},
		{" 2 GiB ", 2 << 30, ""},
		{"64KiB", 64 << 10, ""},
		{"1GB", 1e9, ""},
		{"10B", 10, ""},
		{"", 0, `"" is not a size`},
		{"0", 0, `"0" is not a size`},
		{"-5MiB", 0, `"-5MiB" is not a size`},
		{"12 parsecs", 0, `"12 parsecs" is not a size`},
		{"9999999999999GiB", 0, "too large"},
	} {
		got, err := ParseBytes(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseBytes(%q) = %d, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// TestIsOff: YAML 1.1 turns an unquoted off into false, and both mean off.
func TestIsOff(t *testing.T) {
	for in, want := range map[string]bool{"off": true, "OFF": true, "false": true, "False": true, "": false, "0": false, "256MiB": false, "offline": false} {
		if got := IsOff(in); got != want {
			t.Errorf("IsOff(%q) = %v, want %v", in, got, want)
		}
	}
}
