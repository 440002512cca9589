package attest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/peer"
)

// listenUnix listens on a unix socket in a temp dir.
func listenUnix(t *testing.T) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "agent.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptPeer accepts one connection on ln through a's transport
// credentials and returns it, its state and the context a request on it
// carries.
func acceptPeer(t *testing.T, a *Attestor, ln *net.UnixListener) (net.Conn, *peerState, context.Context) {
	t.Helper()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn, info, err := a.TransportCredentials().ServerHandshake(raw)
	if err != nil {
		raw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, info.(authInfo).peer, peer.NewContext(t.Context(), &peer.Peer{Addr: conn.RemoteAddr(), AuthInfo: info})
}

// dialSelf connects the test process to ln and accepts the connection.
func dialSelf(t *testing.T, a *Attestor, ln *net.UnixListener) (net.Conn, *peerState, context.Context) {
	t.Helper()
	client, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return acceptPeer(t, a, ln)
}

// SelfSelectors are the selectors the test process must get for itself:
// its effective uid and gid (what SO_PEERCRED reports), its supplementary
// groups ascending, as the kernel keeps them, and its executable.
func SelfSelectors(t *testing.T) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	uid, gid := strconv.Itoa(os.Geteuid()), strconv.Itoa(os.Getegid())
	want := []string{"unix:uid:" + uid}
	if u, err := user.LookupId(uid); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	want = append(want, "unix:gid:"+gid)
	if g, err := user.LookupGroupId(gid); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(groups)
	for _, g := range groups {
		want = append(want, "unix:supplementary_gid:"+strconv.Itoa(g))
	}
	return append(want, "unix:path:"+exe)
}

func selectorStrings(sel []Selector) []string {
	out := make([]string, len(sel))
	for i, s := range sel {
		out[i] = s.String()
	}
	return out
}

// kernelAtLeast says whether the running kernel is at least major.minor.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		t.Fatalf("kernel release %q: %v", u.Release[:], err)
	}
	return maj > major || maj == major && min >= minor
}

// On a kernel with SO_PEERPIDFD, a connection is bound to its caller at
// accept, and AttestPeer returns exactly the caller's selectors, twice.
func TestAttestPeerBoundToCaller(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !kernelAtLeast(t, 6, 5) {
		t.Skip("SO_PEERPIDFD needs Linux 6.5")
	}
	if !a.pidfds {
		t.Fatal("SO_PEERPIDFD is not used on a kernel that has it")
	}
	_, p, ctx := dialSelf(t, a, listenUnix(t))
	if !p.bound || p.err != nil {
		t.Fatalf("connection not bound to its caller: bound %v, error %v", p.bound, p.err)
	}
	want := Caller{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	if got, ok := CallerFromContext(ctx); !ok || got != want {
		t.Errorf("CallerFromContext = %+v, %v; want %+v", got, ok, want)
	}
	first, err := a.AttestPeer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := selectorStrings(first), SelfSelectors(t); !slices.Equal(got, want) {
		t.Errorf("selectors:\n got %q\nwant %q", got, want)
	}
	again, err := a.AttestPeer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if &again[0] != &first[0] || len(again) != len(first) || cap(again) != len(again) {
		t.Error("a second request on the connection did not reuse the selectors, or they have spare capacity")
	}
}

// The env var under which the test binary acts as a workload: it connects
// to the socket named by its value and, if helperWaitEnv is set, waits for
// a byte from the agent before it exits.
const (
	helperSocketEnv = "ATTEST_TEST_HELPER_SOCKET"
	helperWaitEnv   = "ATTEST_TEST_HELPER_WAIT"
)

// TestHelperWorkload is the workload process of the tests below, not a test.
func TestHelperWorkload(t *testing.T) {
	path := os.Getenv(helperSocketEnv)
	if path == "" {
		t.Skip("run by the tests that need another process")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if os.Getenv(helperWaitEnv) != "" {
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			t.Fatal(err)
		}
	}
}

func startWorkload(t *testing.T, ln *net.UnixListener, wait bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorkload$")
	cmd.Env = append(os.Environ(), helperSocketEnv+"="+ln.Addr().String())
	if wait {
		cmd.Env = append(cmd.Env, helperWaitEnv+"=1")
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// A workload attested while it runs is refused once it has exited, even
// though its connection is still open on the agent's side.
func TestAttestPeerCallerExited(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenUnix(t)
	cmd := startWorkload(t, ln, true)
	conn, p, ctx := acceptPeer(t, a, ln)
	pid := cmd.Process.Pid
	if p.caller.PID != int32(pid) {
		t.Fatalf("caller pid %d, want the workload's %d", p.caller.PID, pid)
	}
	sel, err := a.AttestPeer(ctx)
	if err != nil {
		t.Fatalf("while the workload runs: %v", err)
	}
	// The workload is this test binary: the same selectors as this process.
	if got, want := selectorStrings(sel), SelfSelectors(t); !slices.Equal(got, want) {
		t.Errorf("selectors:\n got %q\nwant %q", got, want)
	}

	if _, err := conn.Write([]byte{0}); err != nil { // let it exit
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("workload: %v", err)
	}
	_, err = a.AttestPeer(ctx)
	if !a.pidfds {
		// Unbound: the pid names no process ("the process has exited"), or
		// another one ("now names another process ...; the caller has
		// exited"), depending on what ran meanwhile.
		if err == nil || !strings.Contains(err.Error(), "has exited") {
			t.Fatalf("after the workload exited: error = %v, want one saying it has exited", err)
		}
		return
	}
	want := fmt.Sprintf("attest: process %d: the caller has exited; a connection is attested as the process that opened it, so open a new one", pid)
	if err == nil || err.Error() != want {
		t.Fatalf("after the workload exited: error = %v\nwant %q", err, want)
	}
}

// A workload that exits between connect and accept is refused at accept.
func TestAttestPeerCallerExitedBeforeAccept(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !a.pidfds {
		t.Skip("without SO_PEERPIDFD a pid reused before accept goes unnoticed")
	}
	ln := listenUnix(t)
	cmd := startWorkload(t, ln, false)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("workload: %v", err)
	}
	_, p, ctx := acceptPeer(t, a, ln)
	if p.bound || p.dir != -1 {
		t.Errorf("the connection of an exited caller holds /proc handle %d", p.dir)
	}
	_, err = a.AttestPeer(ctx)
	want := fmt.Sprintf("attest: process %d: the caller has exited; it left before the agent accepted its connection", cmd.Process.Pid)
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant %q", err, want)
	}
}

// Requests racing with Close either succeed or see the connection closed,
// and never read through a descriptor Close released; after Close every
// request is refused, even once the descriptor number names another
// directory.
func TestAttestPeerAfterClose(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !a.pidfds {
		t.Skip("no /proc handle to close without SO_PEERPIDFD")
	}
	conn, p, ctx := dialSelf(t, a, listenUnix(t))
	dirFD := p.dir
	wantErr := fmt.Sprintf("attest: process %d: the connection has been closed", os.Getpid())

	const workers = 4
	var started, done sync.WaitGroup
	started.Add(workers)
	done.Add(workers)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			defer done.Done()
			first := true
			for {
				_, err := a.AttestPeer(ctx)
				if first {
					started.Done()
					first = false
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	started.Wait()
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	done.Wait()
	close(errs)
	for err := range errs {
		if err.Error() != wantErr {
			t.Errorf("request racing with Close: error = %v, want %q", err, wantErr)
		}
	}

	// The lowest free descriptor, likely the one Close released, now
	// names a directory whose exe would give another path.
	other := t.TempDir()
	if err := os.Symlink("/usr/bin/impostor", filepath.Join(other, "exe")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(other, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	t.Logf("the /proc handle was descriptor %d; the new directory is %d", dirFD, fd)
	if _, err := a.AttestPeer(ctx); err == nil || err.Error() != wantErr {
		t.Fatalf("after Close: error = %v, want %q", err, wantErr)
	}
	if err := conn.Close(); err == nil {
		t.Error("a second Close succeeded")
	}
	if _, err := a.AttestPeer(ctx); err == nil || err.Error() != wantErr {
		t.Fatalf("after a second Close: error = %v, want %q", err, wantErr)
	}
}

// A connection's selectors are reused while its user and group names are
// fresh, and rebuilt, with names looked up again, when either is due.
func TestAttestPeerSelectorsCachedForNameTTL(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var userLookups, groupLookups int
	a, err := New(Config{Clock: func() time.Time { return now },
		LookupUser:  func(string) string { userLookups++; return fmt.Sprintf("user%d", userLookups) },
		LookupGroup: func(string) string { groupLookups++; return fmt.Sprintf("group%d", groupLookups) }})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenUnix(t)
	_, _, ctx := dialSelf(t, a, ln)
	attestAs := func() []Selector {
		t.Helper()
		sel, err := a.AttestPeer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return sel
	}
	names := func(sel []Selector) string {
		return fmt.Sprint(selectorStrings(sel)[1], " ", selectorStrings(sel)[3])
	}
	first := attestAs()
	if got := names(first); got != "unix:user:user1 unix:group:group1" || userLookups != 1 || groupLookups != 1 {
		t.Fatalf("first: %s after %d and %d lookups", got, userLookups, groupLookups)
	}
	now = now.Add(30 * time.Second)
	// The group names are forgotten (as when maxNames is reached) and
	// looked up again for another connection: the group's name is now
	// fresher than the user's.
	a.groups.mu.Lock()
	a.groups.names = nil
	a.groups.mu.Unlock()
	_, _, ctx2 := dialSelf(t, a, ln)
	if _, err := a.AttestPeer(ctx2); err != nil {
		t.Fatal(err)
	}
	if groupLookups != 2 {
		t.Fatalf("%d group lookups, want 2", groupLookups)
	}
	now = now.Add(29 * time.Second) // 59s after the first
	if sel := attestAs(); &sel[0] != &first[0] {
		t.Errorf("within the minute: rebuilt as %q", selectorStrings(sel))
	}
	now = now.Add(time.Second) // the user name is a minute old
	sel := attestAs()
	if got := names(sel); got != "unix:user:user2 unix:group:group2" || userLookups != 2 || groupLookups != 2 {
		t.Errorf("after the minute: %s after %d and %d lookups", got, userLookups, groupLookups)
	}
	if &sel[0] == &first[0] {
		t.Error("after the minute: the old selectors were reused")
	}
}

// Without a procfs (a fake tree) or SO_PEERPIDFD, a connection is not
// bound: each request reopens /proc/<pid> and compares the start time; a
// new executable gives new selectors.
func TestAttestPeerUnboundFakeProc(t *testing.T) {
	root := t.TempDir()
	pid := os.Getpid()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0\n", pid)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	setExe := func(target string) {
		t.Helper()
		os.Remove(filepath.Join(dir, "exe"))
		if err := os.Symlink(target, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
	setExe("/usr/bin/one")
	a, err := New(Config{ProcRoot: root, LookupUser: func(string) string { return "" }, LookupGroup: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	if a.pidfds {
		t.Fatal("SO_PEERPIDFD used with a proc root that is not procfs")
	}
	_, p, ctx := dialSelf(t, a, listenUnix(t))
	if p.bound || p.startTime != 77 || p.err != nil {
		t.Fatalf("bound %v, start time %d, error %v; want unbound, 77, none", p.bound, p.startTime, p.err)
	}
	last := func() string {
		t.Helper()
		sel, err := a.AttestPeer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return sel[len(sel)-1].String()
	}
	if got := last(); got != "unix:path:/usr/bin/one" {
		t.Errorf("path selector %q", got)
	}
	setExe("/usr/bin/two")
	if got := last(); got != "unix:path:/usr/bin/two" {
		t.Errorf("after exec: path selector %q", got)
	}
}

// Where SO_PEERGROUPS is missing (before Linux 4.13), the groups are read
// from /proc/<pid>/status at accept, on either path.
func TestBindGroupsFromStatus(t *testing.T) {
	self := Caller{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	t.Run("bound", func(t *testing.T) {
		a, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		if !a.pidfds {
			t.Skip("no SO_PEERPIDFD")
		}
		pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
		if err != nil {
			t.Fatal(err)
		}
		p := a.bind(kernelPeer{caller: self, groupsErr: unix.ENOPROTOOPT, pidfd: pidfd})
		defer p.close()
		if p.err != nil || !p.bound {
			t.Fatalf("bound %v, error %v", p.bound, p.err)
		}
		var got []int
		for _, g := range p.groups {
			got = append(got, int(g))
		}
		if !slices.Equal(got, want) {
			t.Errorf("groups %v, want %v", got, want)
		}
		if err := unix.Close(pidfd); !errors.Is(err, unix.EBADF) {
			t.Errorf("bind left the pidfd open (close: %v)", err)
		}
	})
	t.Run("unbound", func(t *testing.T) {
		root := t.TempDir()
		dir := filepath.Join(root, strconv.Itoa(os.Getpid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n", os.Getpid())
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tx\nGroups:\t4 27 \n"), 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := New(Config{ProcRoot: root})
		if err != nil {
			t.Fatal(err)
		}
		p := a.bind(kernelPeer{caller: self, groupsErr: unix.ENOPROTOOPT, pidfd: -1})
		if p.err != nil || p.bound || !slices.Equal(p.groups, []uint32{4, 27}) {
			t.Errorf("bound %v, groups %v, error %v; want unbound, [4 27], none", p.bound, p.groups, p.err)
		}
		p = a.bind(kernelPeer{caller: self, groupsErr: unix.EFAULT, pidfd: -1})
		if want := fmt.Sprintf("attest: process %d: SO_PEERGROUPS: bad address", os.Getpid()); p.err == nil || p.err.Error() != want {
			t.Errorf("error = %v, want %q", p.err, want)
		}
	})
}

// pidfdAlive tells a running process (or a zombie) from one that is gone.
func TestPidfdAlive(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep(1) to start: %v", err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Skipf("no pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	if alive, err := pidfdAlive(pidfd, nil); !alive || err != nil {
		t.Fatalf("running: %v, %v", alive, err)
	}
	cmd.Process.Kill()
	var si unix.Siginfo
	// Exited, not yet reaped: its pid is not free, it still counts.
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if alive, err := pidfdAlive(pidfd, nil); !alive || err != nil {
		t.Fatalf("zombie: %v, %v", alive, err)
	}
	cmd.Wait()
	if alive, err := pidfdAlive(pidfd, nil); alive || err != nil {
		t.Fatalf("reaped: %v, %v", alive, err)
	}
	if alive, err := pidfdAlive(-1, unix.EINVAL); alive || err != nil {
		t.Fatalf("no pidfd (EINVAL): %v, %v", alive, err)
	}
	if alive, err := pidfdAlive(-1, unix.ENODATA); alive || err == nil || err.Error() != "attest: SO_PEERPIDFD: no data available" {
		t.Fatalf("no peer (ENODATA): %v, %v", alive, err)
	}
}

// readGroups grows its buffer once to what the kernel asks for, and refuses
// an answer larger than NGROUPS_MAX or not made of whole gids.
func TestReadGroups(t *testing.T) {
	// kernel answers like getsockopt(SO_PEERGROUPS) for groups, or with
	// the given byte count and error.
	kernel := func(groups []uint32) func([]uint32) (int, error) {
		return func(buf []uint32) (int, error) {
			if len(buf) < len(groups) {
				return len(groups) * 4, unix.ERANGE
			}
			copy(buf, groups)
			return len(groups) * 4, nil
		}
	}
	answer := func(n int, err error) func([]uint32) (int, error) {
		return func([]uint32) (int, error) { return n, err }
	}
	many := make([]uint32, 1000)
	for i := range many {
		many[i] = uint32(i)
	}
	for _, tc := range []struct {
		name    string
		get     func([]uint32) (int, error)
		want    []uint32
		wantErr string
	}{
		{name: "none", get: kernel(nil)},
		{name: "few", get: kernel([]uint32{4, 24, 1 << 31}), want: []uint32{4, 24, 1 << 31}},
		{name: "more than the first buffer", get: kernel(many), want: many},
		{name: "NGROUPS_MAX", get: kernel(make([]uint32, maxGroups)), want: make([]uint32, maxGroups)},
		{name: "beyond NGROUPS_MAX", get: answer(maxGroups*4+4, unix.ERANGE), wantErr: "the kernel asked for 262148 bytes of groups; at most 65536 groups of 4 bytes are allowed"},
		{name: "ERANGE for less", get: answer(8, unix.ERANGE), wantErr: "the kernel asked for 8 bytes of groups; at most 65536 groups of 4 bytes are allowed"},
		{name: "ERANGE for a partial gid", get: answer(301, unix.ERANGE), wantErr: "the kernel asked for 301 bytes of groups; at most 65536 groups of 4 bytes are allowed"},
		{name: "ERANGE twice", get: func(buf []uint32) (int, error) { return len(buf)*4 + 4, unix.ERANGE }, wantErr: "the number of groups changed while they were read: numerical result out of range"},
		{name: "partial gid", get: answer(6, nil), wantErr: "the kernel returned 6 bytes of groups into a buffer of 128"},
		{name: "more than the buffer", get: answer(132, nil), wantErr: "the kernel returned 132 bytes of groups into a buffer of 128"},
		{name: "negative", get: answer(-4, nil), wantErr: "the kernel returned -4 bytes of groups into a buffer of 128"},
		{name: "unsupported", get: answer(0, unix.ENOPROTOOPT), wantErr: "protocol not available"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readGroups(tc.get)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) || (len(tc.want) == 0) != (got == nil) {
				t.Fatalf("groups = %v, %v; want %d groups", len(got), err, len(tc.want))
			}
		})
	}
}
