package attest

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxProcFileBytes bounds each /proc/<pid> file the package reads. A stat
// line is a few hundred bytes (the command name is at most 16); a status file
// is under 2 KiB, plus about 6 bytes per supplementary group, so the bound
// admits several thousand groups.
const MaxProcFileBytes = 64 << 10

// maxLinkBytes is PATH_MAX: the kernel never returns a longer link target.
const maxLinkBytes = 4096

// readProcFile reads name under the directory handle dir, at most
// MaxProcFileBytes.
func readProcFile(dir int, pid int32, name string) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("attest: process %d: open %s: %w", pid, name, procErr(err))
	}
	defer unix.Close(fd)
	// Straight read(2)s into one buffer: /proc files are generated at read
	// time, and an os.File around the descriptor costs more than the read.
	b := make([]byte, 0, 2048)
	for {
		if len(b) == cap(b) {
			if len(b) > MaxProcFileBytes {
				return nil, fmt.Errorf("attest: process %d: %s is larger than %d bytes", pid, name, MaxProcFileBytes)
			}
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("attest: process %d: read %s: %w", pid, name, procErr(err))
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	if len(b) > MaxProcFileBytes {
		return nil, fmt.Errorf("attest: process %d: %s is larger than %d bytes", pid, name, MaxProcFileBytes)
	}
	return b, nil
}

// readExe reads the target of the exe link under the /proc/<pid> handle
// dir into buf, or into a buffer of PATH_MAX if the target fills buf. buf
// must not be empty.
func readExe(dir int, pid int32, buf []byte) ([]byte, error) {
	n, err := readlinkExe(dir, buf)
	if err == nil && n == len(buf) {
		buf = make([]byte, maxLinkBytes+1)
		n, err = readlinkExe(dir, buf)
	}
	if err != nil {
		return nil, fmt.Errorf("attest: process %d: readlink exe: %w", pid, procErr(err))
	}
	if n > maxLinkBytes {
		return nil, fmt.Errorf("attest: process %d: exe points to a path longer than %d bytes", pid, maxLinkBytes)
	}
	if n == 0 {
		return nil, fmt.Errorf("attest: process %d: exe is empty (a kernel thread?)", pid)
	}
	return buf[:n], nil
}

// exeName is "exe" as the C string readlinkat(2) takes; unix.Readlinkat
// would allocate one on every call.
var exeName = [...]byte{'e', 'x', 'e', 0}

// readlinkExe is readlinkat(dir, "exe", buf).
func readlinkExe(dir int, buf []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dir), uintptr(unsafe.Pointer(&exeName[0])),
		uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// parseStatusGroups returns the supplementary groups on the "Groups:" line of
// /proc/<pid>/status. An empty line means none; a missing line, a second one
// or a number that is not a gid is an error.
func parseStatusGroups(b []byte) ([]uint32, error) {
	var groups []uint32
	found := false
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		if found {
			return nil, errors.New("two Groups: lines")
		}
		found = true
		for _, f := range bytes.Fields(rest) {
			g, err := strconv.ParseUint(string(f), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("Groups: %q is not a gid", f)
			}
			groups = append(groups, uint32(g))
		}
	}
	if !found {
		return nil, errors.New("no Groups: line")
	}
	return groups, nil
}

// statStartTimeField is starttime's position in /proc/<pid>/stat counted
// from 1 (proc(5)); fields 1 and 2 are the pid and "(comm)".
const statStartTimeField = 22

// parseStatStartTime returns the starttime field of /proc/<pid>/stat. The
// command name in parentheses may itself contain spaces and parentheses, so
// the fields are counted from the last ')'.
func parseStatStartTime(b []byte) (uint64, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return 0, errors.New("the command name is not in parentheses")
	}
	fields := bytes.Fields(b[end+1:])
	i := statStartTimeField - 3 // fields after ')' start at field 3
	if len(fields) <= i {
		return 0, fmt.Errorf("%d fields after the command name; starttime is field %d", len(fields), statStartTimeField)
	}
	t, err := strconv.ParseUint(string(fields[i]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("starttime %q is not a number", fields[i])
	}
	return t, nil
}
