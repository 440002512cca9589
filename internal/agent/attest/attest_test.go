package attest_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestSelectorString(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    attest.Selector
		wantErr string
	}{
		{in: "unix:uid:1000", want: attest.Selector{Type: "unix", Value: "uid:1000"}},
		{in: "unix:path:/usr/bin/a:b", want: attest.Selector{Type: "unix", Value: "path:/usr/bin/a:b"}},
		{in: "k8s:ns", want: attest.Selector{Type: "k8s", Value: "ns"}},
		{in: "unix", wantErr: `attest: selector "unix": want type:value, such as unix:uid:1000`},
		{in: ":uid:1", wantErr: `attest: selector ":uid:1" has an empty type`},
		{in: "unix:", wantErr: `attest: selector "unix:" has an empty value`},
		{in: "", wantErr: `attest: selector "": want type:value, such as unix:uid:1000`},
	} {
		got, err := attest.ParseSelector(tc.in)
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("ParseSelector(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
}

func strs(sel []attest.Selector) []string {
	out := make([]string, len(sel))
	for i, s := range sel {
		out[i] = s.String()
	}
	return out
}

// serve runs a gRPC health server on a unix socket in a temp dir with a's
// transport credentials; every request is attested and the outcome sent to
// the returned channel.
func serve(t *testing.T, a *attest.Attestor) (string, <-chan result) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan result, 1)
	srv := grpc.NewServer(grpc.Creds(a.TransportCredentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			caller, _ := attest.CallerFromContext(ctx)
			sel, err := a.AttestPeer(ctx)
			results <- result{caller, sel, err}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return path, results
}

type result struct {
	caller attest.Caller
	sel    []attest.Selector
	err    error
}

func check(t *testing.T, path string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

// The test process connects to its own socket and is attested as itself.
func TestAttestPeerRealSocket(t *testing.T) {
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	path, results := serve(t, a)
	check(t, path)
	r := <-results
	if r.err != nil {
		t.Fatal(r.err)
	}
	wantCaller := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	if r.caller != wantCaller {
		t.Errorf("caller = %+v, want %+v", r.caller, wantCaller)
	}
	if got, want := strs(r.sel), attest.SelfSelectors(t); !slices.Equal(got, want) {
		t.Errorf("selectors:\n got %q\nwant %q", got, want)
	}

	// Attest by pid gives the same answer.
	sel, err := a.Attest(t.Context(), int32(os.Getpid()), uint32(os.Geteuid()), uint32(os.Getegid()))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strs(sel), attest.SelfSelectors(t); !slices.Equal(got, want) {
		t.Errorf("Attest:\n got %q\nwant %q", got, want)
	}
}

// A request on a connection whose process's start time has changed since
// accept (the pid was reused) is refused. The fake proc tree stands in for
// /proc of the test process's own pid, so the real socket path runs; as it
// is not a procfs, the connection is not bound to its caller and this is
// the start-time fallback of kernels without SO_PEERPIDFD.
func TestAttestPeerStartTimeChanged(t *testing.T) {
	root := t.TempDir()
	pid := os.Getpid()
	p := fakeProc{stat: statLine(pid, 1000), status: statusFile("Groups:\t\n"), exe: "/usr/bin/workload"}
	p.write(t, root, pid)
	a, err := attest.New(attest.Config{ProcRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	path, results := serve(t, a)

	// The connection is accepted while start time 1000 is recorded, then
	// the "process" is replaced before the request is attested.
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.err != nil {
		t.Fatalf("before the change: %v", r.err)
	}
	p.stat = statLine(pid, 2000)
	p.write(t, root, pid)
	if _, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	r := <-results
	want := fmt.Sprintf("attest: pid %d now names another process (start time 2000, the caller's was 1000); the caller has exited", pid)
	if r.err == nil || r.err.Error() != want {
		t.Fatalf("error = %v, want %q", r.err, want)
	}
}

// A request whose connection was accepted while its /proc entry could not
// be read is refused with the reason.
func TestAttestPeerUnreadableAtAccept(t *testing.T) {
	a, err := attest.New(attest.Config{ProcRoot: t.TempDir()}) // empty: no /proc/<pid>
	if err != nil {
		t.Fatal(err)
	}
	path, results := serve(t, a)
	check(t, path)
	r := <-results
	want := fmt.Sprintf("attest: process %d could not be read when it connected: attest: process %d: the process has exited: no such file or directory", os.Getpid(), os.Getpid())
	if r.err == nil || r.err.Error() != want {
		t.Fatalf("error = %v, want %q", r.err, want)
	}
}

func TestAttestPeerWithoutCredentials(t *testing.T) {
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.AttestPeer(t.Context())
	if want := "attest: the request did not arrive through the attestor's transport credentials"; err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestNewProcRoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := attest.New(attest.Config{ProcRoot: file}); err == nil || err.Error() != "attest: proc root "+file+" is not a directory; point it at the procfs mount" {
		t.Fatalf("error = %v", err)
	}
}

type fakeProc struct {
	stat, status string
	exe          string // symlink target; none if empty
}

func (p fakeProc) write(t *testing.T, root string, pid int) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"stat": p.stat, "status": p.status} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "exe")
	os.Remove(exe)
	if p.exe != "" {
		if err := os.Symlink(p.exe, exe); err != nil {
			t.Fatal(err)
		}
	}
}

// statLine is a /proc/<pid>/stat line with the given start time and a
// command name that contains spaces and parentheses.
func statLine(pid int, start uint64) string {
	return fmt.Sprintf("%d (my (odd) cmd) S 1 %d %d 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 %d 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n", pid, pid, pid, start)
}

func statusFile(groupsLine string) string {
	return "Name:\tworkload\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nFDSize:\t64\n" +
		groupsLine + "NStgid:\t42\nVmPeak:\t   1000 kB\n"
}

// The parsers and checks, on a fake /proc tree.
func TestAttestFakeProc(t *testing.T) {
	const pid = 42
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid()) // owner of the fake tree
	base := func(sel ...string) []string {
		s := strconv.FormatUint(uint64(uid), 10)
		g := strconv.FormatUint(uint64(gid), 10)
		out := []string{"unix:uid:" + s}
		if u, err := user.LookupId(s); err == nil {
			out = append(out, "unix:user:"+u.Username)
		}
		out = append(out, "unix:gid:"+g)
		if gr, err := user.LookupGroupId(g); err == nil {
			out = append(out, "unix:group:"+gr.Name)
		}
		return append(out, sel...)
	}
	for _, tc := range []struct {
		name     string
		proc     *fakeProc
		uid, gid uint32
		pid      int32
		want     []string
		wantErr  string
	}{
		{
			name: "groups and path",
			proc: &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t4 24 27 1000 \n"), exe: "/usr/bin/my workload"},
			want: base("unix:supplementary_gid:4", "unix:supplementary_gid:24", "unix:supplementary_gid:27", "unix:supplementary_gid:1000", "unix:path:/usr/bin/my workload"),
		},
		{
			name: "no supplementary groups",
			proc: &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t\n"), exe: "/bin/x (deleted)"},
			want: base("unix:path:/bin/x (deleted)"),
		},
		{
			name:    "missing Groups line",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile(""), exe: "/bin/x"},
			wantErr: "attest: process 42: status: no Groups: line",
		},
		{
			name:    "two Groups lines",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t1\nGroups:\t2\n"), exe: "/bin/x"},
			wantErr: "attest: process 42: status: two Groups: lines",
		},
		{
			name:    "malformed group",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t4 x24\n"), exe: "/bin/x"},
			wantErr: `attest: process 42: status: Groups: "x24" is not a gid`,
		},
		{
			name:    "group out of range",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t4294967296\n"), exe: "/bin/x"},
			wantErr: `attest: process 42: status: Groups: "4294967296" is not a gid`,
		},
		{
			name:    "negative group",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t-1\n"), exe: "/bin/x"},
			wantErr: `attest: process 42: status: Groups: "-1" is not a gid`,
		},
		{
			name:    "stat without parentheses",
			proc:    &fakeProc{stat: "42 cmd S 1 2 3\n", status: statusFile("Groups:\t\n"), exe: "/bin/x"},
			wantErr: "attest: process 42: stat: the command name is not in parentheses",
		},
		{
			name:    "stat too short",
			proc:    &fakeProc{stat: "42 (cmd) S 1 2 3\n", status: statusFile("Groups:\t\n"), exe: "/bin/x"},
			wantErr: "attest: process 42: stat: 4 fields after the command name; starttime is field 22",
		},
		{
			name:    "starttime not a number",
			proc:    &fakeProc{stat: strings.Replace(statLine(pid, 5), " 5 1000 ", " 5x 1000 ", 1), status: statusFile("Groups:\t\n"), exe: "/bin/x"},
			wantErr: `attest: process 42: stat: starttime "5x" is not a number`,
		},
		{
			name:    "no exe link",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t\n")},
			wantErr: "attest: process 42: readlink exe: the process has exited: no such file or directory",
		},
		{
			name:    "oversized status",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t" + strings.Repeat("1 ", attest.MaxProcFileBytes/2) + "\n"), exe: "/bin/x"},
			wantErr: "attest: process 42: status is larger than 65536 bytes",
		},
		{
			name:    "exited",
			wantErr: "attest: process 42: the process has exited: no such file or directory",
		},
		{
			name:    "owner is not the connecting uid",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t\n"), exe: "/bin/x"},
			uid:     uid + 1,
			wantErr: fmt.Sprintf("attest: process 42 runs as uid %d gid %d, but connected as uid %d gid %d (it changed identity, is not dumpable, or its pid was reused)", uid, gid, uid+1, gid),
		},
		{
			name:    "owner is not the connecting gid",
			proc:    &fakeProc{stat: statLine(pid, 5), status: statusFile("Groups:\t\n"), exe: "/bin/x"},
			gid:     gid + 1,
			wantErr: fmt.Sprintf("attest: process 42 runs as uid %d gid %d, but connected as uid %d gid %d (it changed identity, is not dumpable, or its pid was reused)", uid, gid, uid, gid+1),
		},
		{
			name:    "pid 0 (another pid namespace)",
			pid:     -1,
			wantErr: "attest: the kernel reported pid 0: the caller is not visible in the agent's pid namespace (run the agent in the host's)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.proc != nil {
				tc.proc.write(t, root, pid)
			}
			a, err := attest.New(attest.Config{ProcRoot: root})
			if err != nil {
				t.Fatal(err)
			}
			p, u, g := int32(pid), uid, gid
			if tc.pid != 0 {
				p = 0
			}
			if tc.uid != 0 {
				u = tc.uid
			}
			if tc.gid != 0 {
				g = tc.gid
			}
			sel, err := a.Attest(t.Context(), p, u, g)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error = %v\n           want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strs(sel); !slices.Equal(got, tc.want) {
				t.Errorf("selectors:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestAttestCanceled(t *testing.T) {
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := a.Attest(ctx, int32(os.Getpid()), uint32(os.Geteuid()), uint32(os.Getegid())); err != context.Canceled {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

// User and group names are looked up once a minute per id, not on every
// attestation; a renamed user shows within that minute.
func TestNamesAreRememberedForAMinute(t *testing.T) {
	root := t.TempDir()
	pid, uid, gid := os.Getpid(), uint32(os.Getuid()), uint32(os.Getgid())
	p := fakeProc{stat: statLine(pid, 1000), status: statusFile("Groups:\t\n"), exe: "/usr/bin/workload"}
	p.write(t, root, pid)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var userLookups, groupLookups int
	userName := "alice"
	a, err := attest.New(attest.Config{ProcRoot: root, Clock: func() time.Time { return now },
		LookupUser:  func(string) string { userLookups++; return userName },
		LookupGroup: func(string) string { groupLookups++; return "" }})
	if err != nil {
		t.Fatal(err)
	}
	attestAs := func() string {
		t.Helper()
		sel, err := a.Attest(context.Background(), int32(pid), uid, gid)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(strs(sel), " ")
	}
	want := fmt.Sprintf("unix:uid:%d unix:user:alice unix:gid:%d unix:path:/usr/bin/workload", uid, gid)
	for range 3 {
		if got := attestAs(); got != want {
			t.Fatalf("selectors %q, want %q", got, want)
		}
	}
	if userLookups != 1 || groupLookups != 1 {
		t.Errorf("%d user and %d group lookups for three attestations, want 1 and 1", userLookups, groupLookups)
	}
	userName = "bob"
	now = now.Add(59 * time.Second)
	if got := attestAs(); got != want {
		t.Errorf("within the minute: %q", got)
	}
	now = now.Add(time.Second)
	if got := attestAs(); !strings.Contains(got, "unix:user:bob") || userLookups != 2 {
		t.Errorf("after the minute: %q (%d lookups)", got, userLookups)
	}
}
