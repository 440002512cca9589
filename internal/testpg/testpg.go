// Package testpg gives tests a real Postgres: one server per test binary,
// and a fresh, empty database for every test that asks.
//
// The server is the one MESHFED_TEST_POSTGRES_DSN points at (a URL of a user
// that may CREATE DATABASE) or, when that is unset, a throwaway cluster that
// testpg initdb's in a temporary directory and runs on 127.0.0.1 with the
// Postgres binaries under /usr/lib/postgresql/*/bin (Debian's layout; Postgres
// 15 is what CI installs). The cluster listens on a free loopback port, keeps
// its socket in its own directory, uses a random password over TCP, runs
// without fsync, and is stopped and removed when the test binary ends; if the
// binary dies first, the kernel stops the server (parent-death signal).
// Postgres refuses to run as root, so as root the cluster runs as the system
// user "postgres".
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { testpg.Run(m) }
//
//	func TestSomething(t *testing.T) {
//		dsn := testpg.Start(t) // postgres://postgres:…@127.0.0.1:port/test_…
//		…
//	}
//
// Missing Postgres binaries fail the test (never skip it): the store's
// Postgres back end must be tested. This package is for tests only.
package testpg

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// EnvDSN names the environment variable that points tests at an existing
// Postgres server instead of a throwaway cluster.
const EnvDSN = "MESHFED_TEST_POSTGRES_DSN"

// binGlob is where Debian installs each Postgres major version's binaries.
var binGlob = "/usr/lib/postgresql/*/bin"

// errNotInstalled is the failure when no Postgres binaries are found.
var errNotInstalled = errors.New("postgres not installed: run ./scripts/test, which installs it")

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

var (
	mu      sync.Mutex
	running bool    // Run is running the tests
	srv     *server // started by the first Start
	srvErr  error   // why it could not be
)

// Run runs the tests of m and then stops the Postgres server Start started,
// if any, and removes its directory. It returns m.Run's exit code, which a
// TestMain that returns hands to os.Exit.
func Run(m *testing.M) int {
	mu.Lock()
	running = true
	mu.Unlock()

	code := m.Run()

	mu.Lock()
	defer mu.Unlock()
	running = false
	if srv != nil {
		if err := srv.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "testpg:", err)
			if code == 0 {
				code = 1
			}
		}
		srv = nil
	}
	return code
}

// Start returns the URL of a new, empty database that t owns: it is dropped
// when t ends. The first call in a test binary starts the server.
func Start(t testing.TB) string {
	t.Helper()
	s, err := get(t)
	if err != nil {
		t.Fatalf("testpg: %v", err)
	}
	name := "test_" + rand.Text()
	name = strings.ToLower(name)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s.createMu.Lock()
	_, err = s.admin.ExecContext(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	s.createMu.Unlock()
	if err != nil {
		t.Fatalf("testpg: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		// FORCE: a connection the test leaked must not keep the database.
		if _, err := s.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testpg: dropping database %s: %v", name, err)
		}
	})
	u := *s.base
	u.Path = "/" + name
	return u.String()
}

// get returns the server, starting it on first use.
func get(t testing.TB) (*server, error) {
	mu.Lock()
	defer mu.Unlock()
	if !running {
		return nil, errors.New("testpg.Start needs the test binary's TestMain to call testpg.Run(m)")
	}
	if srv == nil && srvErr == nil {
		began := time.Now()
		if dsn := os.Getenv(EnvDSN); dsn != "" {
			srv, srvErr = connect(dsn)
		} else {
			srv, srvErr = startCluster()
		}
		if srvErr == nil {
			t.Logf("testpg: %s ready in %s", srv.what, time.Since(began).Round(time.Millisecond))
		}
	}
	return srv, srvErr
}

// server is a Postgres server and a superuser connection to it.
type server struct {
	base     *url.URL // URL of the admin database; Start swaps the path
	admin    *sql.DB
	what     string     // for the log: version and address
	createMu sync.Mutex // CREATE DATABASE one at a time

	// Only for a cluster testpg started:
	dir    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// connect uses the existing server dsn points at.
func connect(dsn string) (*server, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("%s must be a postgres:// URL", EnvDSN)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDSN, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("cannot reach the server %s points at (%s): %w", EnvDSN, u.Redacted(), err)
	}
	return &server{base: u, admin: db, what: "postgres at " + u.Host + " (" + EnvDSN + ")"}, nil
}

// startCluster initdb's a cluster in a new temporary directory and starts it.
func startCluster() (_ *server, err error) {
	bin, version, err := findBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "meshfed-testpg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	cred, err := credential(dir)
	if err != nil {
		return nil, err
	}

	password := rand.Text()
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := chown(pwfile, cred); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := command(cred, filepath.Join(bin, "initdb"),
		"--pgdata", data, "--username", "postgres", "--pwfile", pwfile,
		"--auth-local", "trust", "--auth-host", "scram-sha-256",
		"--encoding", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb (%s) failed: %v\n%s", bin, err, out)
	}
	_ = os.Remove(pwfile)

	// A free port can be taken between probing and binding; try again.
	var lastErr error
	for range 3 {
		s, err := startPostgres(bin, dir, data, cred, password)
		if err == nil {
			s.what = fmt.Sprintf("PostgreSQL %s at %s (%s)", version, s.base.Host, dir)
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	return nil, lastErr
}

var errPortTaken = errors.New("port taken")

// startPostgres runs the postmaster as a child process and waits until it
// accepts connections.
func startPostgres(bin, dir, data string, cred *syscall.Credential, password string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	cmd := command(cred, filepath.Join(bin, "postgres"),
		"-D", data, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-k", dir,
		// A throwaway cluster: durability buys nothing.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=32MB")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If the test binary dies without stopping the server, the kernel
	// sends it SIGQUIT (immediate shutdown). Its own process group keeps a
	// terminal's ^C from shutting it down under the tests' cleanup.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	base := &url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword("postgres", password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	db, err := sql.Open("pgx", base.String())
	if err != nil {
		stopProcess(cmd, exited)
		return nil, err
	}
	s := &server{base: base, admin: db, dir: dir, cmd: cmd, exited: exited}
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-exited:
			_ = db.Close()
			log, _ := os.ReadFile(logPath)
			if strings.Contains(string(log), "could not bind") || strings.Contains(string(log), "Address already in use") {
				return nil, errPortTaken
			}
			return nil, fmt.Errorf("postgres exited while starting:\n%s", log)
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = db.Close()
			stopProcess(cmd, exited)
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("postgres did not accept connections within %s: %v\n%s", startTimeout, err, log)
		}
	}
}

// stop shuts the server down (a cluster: fast shutdown, then kill) and
// removes its directory.
func (s *server) stop() error {
	err := s.admin.Close()
	if s.cmd == nil {
		return err
	}
	stopProcess(s.cmd, s.exited)
	return errors.Join(err, os.RemoveAll(s.dir))
}

func stopProcess(cmd *exec.Cmd, exited <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// findBinaries returns the bin directory of the newest Postgres installed
// in Debian's layout, and its major version.
func findBinaries() (bin, version string, err error) {
	dirs, _ := filepath.Glob(binGlob)
	var found []string
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", "", errNotInstalled
	}
	major := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	sort.Slice(found, func(i, j int) bool { return major(found[i]) > major(found[j]) })
	return found[0], filepath.Base(filepath.Dir(found[0])), nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// credential returns who the cluster runs as: nil (this process's user), or
// as root the "postgres" system user, to whom it gives dir.
func credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and Postgres refuses to run as root, but there is no postgres user to run it as (%v): run ./scripts/install-deps, which installs Debian's postgresql", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user postgres: %w", err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	if err := chown(dir, cred); err != nil {
		return nil, err
	}
	return cred, nil
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	return os.Chown(path, int(cred.Uid), int(cred.Gid))
}

// command is exec.Command running as cred, with a minimal environment.
func command(cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
