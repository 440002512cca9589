// Package harness runs real meshfed processes for the multi-process
// benchmarks under bench/: it starts them, waits for their start-up line,
// runs CLI commands, stops them all, and has the small statistics the
// harnesses print. It is for benchmarks only; nothing in internal/ imports
// it.
package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Procs are the meshfed processes of one run, started from Bin in Dir.
type Procs struct {
	Bin, Dir string
	list     []*exec.Cmd
}

// StartTimeout is how long Start waits for a process's start-up line.
const StartTimeout = 30 * time.Second

// Start runs meshfed with args and returns the first stderr line that
// begins with prefix. The rest of its output goes to stderr, or is
// discarded once it has started if quiet (an access log under load).
func (p *Procs) Start(prefix string, quiet bool, args ...string) (string, error) {
	cmd := exec.Command(p.Bin, args...)
	cmd.Dir = p.Dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	p.list = append(p.list, cmd)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		started := false
		for sc.Scan() {
			switch {
			case !started && strings.HasPrefix(sc.Text(), prefix):
				started = true
				lines <- sc.Text()
			case !started || !quiet:
				fmt.Fprintln(os.Stderr, "  ", sc.Text())
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case l := <-lines:
		return l, nil
	case <-time.After(StartTimeout):
		return "", fmt.Errorf("meshfed %s did not start", args[0])
	}
}

// LastPID is the pid of the process started last.
func (p *Procs) LastPID() int { return p.list[len(p.list)-1].Process.Pid }

// Stop sends SIGTERM to every process, last started first, and kills one
// that has not exited 15 s later.
func (p *Procs) Stop() {
	for _, c := range slices.Backward(p.list) {
		c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.Process.Kill()
		}
	}
}

// Meshfed runs one meshfed command and returns its stdout; the error
// carries its stderr.
func (p *Procs) Meshfed(args ...string) (string, error) {
	cmd := exec.Command(p.Bin, args...)
	cmd.Dir = p.Dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("meshfed %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", err
	}
	return string(out), nil
}

// WaitFor polls cond every interval until it holds or within has passed.
func WaitFor(within, interval time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
	return nil
}

// FreePorts returns n loopback ports free at the moment of the call.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Median is the middle value of v (the upper one of an even count).
func Median[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// Percentile is the p-th percentile of d, nearest rank below.
func Percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// Track adds a process started elsewhere to those Stop stops.
func (p *Procs) Track(cmd *exec.Cmd) { p.list = append(p.list, cmd) }

var serverStarted = regexp.MustCompile(`meshfed server for (\S+): signing API (\S+), bundle endpoint (\S+), admin socket (\S+)`)

// Server is a running meshfed server.
type Server struct {
	TD        string
	Name      string // its data directory under Dir
	Listen    string // the signing API
	AdminSock string
}

// StartServer runs a meshfed server for td with its data in Dir/name, on
// free loopback ports, logging warnings only; extra are more flags (e.g.
// --config, --bundle-listen).
func (p *Procs) StartServer(td, name string, extra ...string) (*Server, error) {
	s := &Server{TD: td, Name: name, AdminSock: filepath.Join(p.Dir, name, "admin.sock")}
	args := append([]string{"server", "--trust-domain", td, "--data-dir", filepath.Join(p.Dir, name), "--admin-socket", s.AdminSock,
		"--listen", "127.0.0.1:0", "--metrics-listen", "off", "--log-level", "warn"}, extra...)
	if !slices.Contains(extra, "--bundle-listen") {
		args = append(args, "--bundle-listen", "127.0.0.1:0")
	}
	line, err := p.Start("meshfed server for", false, args...)
	if err != nil {
		return nil, err
	}
	m := serverStarted.FindStringSubmatch(line)
	if m == nil {
		return nil, fmt.Errorf("unexpected start line %q", line)
	}
	s.Listen = m[2]
	return s, nil
}

// StartAgent registers a node named name with an entry giving id to this
// process's uid (with extra entry flags, e.g. --federates-with), runs its
// agent with data in Dir/<name>-agent and returns its Workload API socket.
func (p *Procs) StartAgent(s *Server, name string, id spiffeid.ID, extra ...string) (string, error) {
	node := "spiffe://" + s.TD + "/node/" + name
	token, err := p.Meshfed("token", "create", "--admin-socket", s.AdminSock, "--spiffe-id", node)
	if err != nil {
		return "", err
	}
	entry := append([]string{"entry", "create", "--admin-socket", s.AdminSock, "--parent-id", node, "--spiffe-id", id.String(),
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid())}, extra...)
	if _, err := p.Meshfed(entry...); err != nil {
		return "", err
	}
	socket := filepath.Join(p.Dir, name+"-agent", "workload.sock")
	_, err = p.Start("meshfed agent", false, "agent", "--server", s.Listen, "--trust-bundle", filepath.Join(p.Dir, s.Name, "ca", "ca.pem"),
		"--join-token", strings.TrimSpace(token), "--data-dir", filepath.Join(p.Dir, name+"-agent"), "--socket", socket, "--log-level", "warn")
	return socket, err
}
