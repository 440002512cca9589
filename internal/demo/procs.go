package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopTimeout is how long a process has to exit after SIGTERM before it is
// killed.
const stopTimeout = 15 * time.Second

// procs starts meshfed processes in the demo's directory and owns them: it
// stops every one it started.
type procs struct {
	bin, dir string
	logs     io.Writer // nil: the processes' logs go only to their files
	logsMu   sync.Mutex

	mu   sync.Mutex
	list []*proc
}

// proc is one running meshfed process.
type proc struct {
	name string
	cmd  *exec.Cmd
	logs *logBuffer
	done chan struct{} // closed when it has exited
	err  error         // how it exited, once done is closed
}

// start runs the meshfed binary with args; its output goes to
// logs/<name>.log in the directory (and to procs.logs, if set).
func (p *procs) start(name string, args ...string) (*proc, error) {
	if err := os.MkdirAll(filepath.Join(p.dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(p.dir, "logs", strings.ReplaceAll(name, " ", "-")+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	pr := &proc{name: name, logs: &logBuffer{}, done: make(chan struct{})}
	w := io.MultiWriter(pr.logs, f)
	if p.logs != nil {
		w = io.MultiWriter(w, &prefixWriter{prefix: "[" + name + "] ", w: p.logs, mu: &p.logsMu})
	}
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = w, w
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("demo: starting %s: %w", name, err)
	}
	pr.cmd = cmd
	p.mu.Lock()
	p.list = append(p.list, pr)
	p.mu.Unlock()
	go func() {
		pr.err = cmd.Wait()
		f.Close()
		close(pr.done)
	}()
	return pr, nil
}

// pid is the process's id.
func (pr *proc) pid() int { return pr.cmd.Process.Pid }

// exited reports whether the process has exited, and how.
func (pr *proc) exited() (bool, error) {
	select {
	case <-pr.done:
		return true, pr.err
	default:
		return false, nil
	}
}

// waitLine waits for a line of the process's log matching re and returns
// its submatches; it fails if the process exits first.
func (pr *proc) waitLine(ctx context.Context, re *regexp.Regexp, within time.Duration) ([]string, error) {
	var m []string
	err := poll(ctx, within, 20*time.Millisecond, fmt.Sprintf("%s to log %q", pr.name, re), func() (bool, error) {
		if m = re.FindStringSubmatch(pr.logs.String()); m != nil {
			return true, nil
		}
		if done, err := pr.exited(); done {
			return false, fmt.Errorf("%s exited (%v); its log ends:\n%s", pr.name, err, tail(pr.logs.String(), 10))
		}
		return false, nil
	})
	return m, err
}

// stopAll sends SIGTERM to every process still running, waits for each
// (killing one that does not exit within stopTimeout) and returns their
// pids, in the order they were started.
func (p *procs) stopAll() []int {
	p.mu.Lock()
	list := append([]*proc(nil), p.list...)
	p.mu.Unlock()
	for _, pr := range list {
		if done, _ := pr.exited(); !done {
			pr.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	var pids []int
	for _, pr := range list {
		select {
		case <-pr.done:
		case <-time.After(stopTimeout):
			pr.cmd.Process.Kill()
			<-pr.done
		}
		pids = append(pids, pr.pid())
	}
	return pids
}

// cli runs a meshfed command to its end and returns its stdout; the error
// names the command and carries its stderr.
func (p *procs) cli(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Dir = p.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("meshfed %s: %v: %s", strings.Join(args[:min(2, len(args))], " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// poll calls cond every interval until it holds, returns an error, ctx ends
// or within passes.
func poll(ctx context.Context, within, interval time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", within, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// logBuffer collects a process's output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// prefixWriter writes whole lines to w, each after prefix; mu is shared by
// every process's writer so that lines do not interleave.
type prefixWriter struct {
	prefix  string
	w       io.Writer
	mu      *sync.Mutex
	partial []byte
}

func (pw *prefixWriter) Write(b []byte) (int, error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.partial = append(pw.partial, b...)
	for {
		i := bytes.IndexByte(pw.partial, '\n')
		if i < 0 {
			break
		}
		if _, err := fmt.Fprintf(pw.w, "%s%s\n", pw.prefix, pw.partial[:i]); err != nil {
			return len(b), nil // the story goes on without the logs
		}
		pw.partial = pw.partial[i+1:]
	}
	return len(b), nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// errInterrupted says the demo was stopped (Ctrl-C) rather than failing.
var errInterrupted = errors.New("demo: interrupted")
