package attest

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// peerState is what a connection accepted through TransportCredentials
// knows of its caller, shared by every request on it.
type peerState struct {
	caller Caller
	// groups are the caller's supplementary groups when it connected.
	groups []uint32
	// err, if set, is why the caller could not be bound at accept; every
	// request on the connection fails with it.
	err error

	// bound is whether dir is the caller's /proc/<pid>, proven at accept
	// through the caller's pidfd. It does not change after accept.
	bound bool
	// mu guards dir against close: a request holds it for reading while it
	// uses dir, so the descriptor number cannot be closed and handed to
	// another file in between.
	mu     sync.RWMutex
	dir    int
	closed bool

	// startTime is the caller's start time read right after SO_PEERCRED,
	// when the connection could not be bound.
	startTime uint64

	cache atomic.Pointer[selectorCache]

	// release, if set, gives the connection's admission back (Config.Admit);
	// close calls it once.
	release func()
}

// selectorCache is the last selectors built for a connection.
type selectorCache struct {
	exe         string
	sel         []Selector
	from, until time.Time // when the user and group names in sel are fresh
}

// bind learns what AttestPeer needs of the caller k describes, and closes
// k's pidfd.
func (a *Attestor) bind(k kernelPeer) *peerState {
	p := &peerState{caller: k.caller, dir: -1}
	if k.pidfd >= 0 {
		defer unix.Close(k.pidfd)
	}
	if err := a.bindProc(p, k); err != nil {
		p.err = err
		if p.bound {
			unix.Close(p.dir)
			p.bound, p.dir = false, -1
		}
	}
	return p
}

func (a *Attestor) bindProc(p *peerState, k kernelPeer) error {
	pid := k.caller.PID
	if pid <= 0 {
		return fmt.Errorf("attest: the kernel reported pid %d: the caller is not visible in the agent's pid namespace (run the agent in the host's)", pid)
	}
	dir, openErr := a.openProc(pid)
	if a.pidfds {
		// The pidfd names the process that connected, whatever its pid has
		// become since. If it still runs after /proc/<pid> was opened, its
		// pid was never free between connect and the open, so the handle
		// is that process's.
		alive, err := pidfdAlive(k.pidfd, k.pidfdErr)
		if err == nil && !alive {
			err = fmt.Errorf("attest: process %d: the caller has exited; it left before the agent accepted its connection", pid)
		}
		if err != nil {
			if openErr == nil {
				unix.Close(dir)
			}
			return err
		}
		if openErr != nil {
			return fmt.Errorf("attest: process %d could not be read when it connected: %w", pid, openErr)
		}
		p.bound, p.dir = true, dir
	} else {
		// Without a pidfd, the start time read as soon as possible after
		// SO_PEERCRED stands for the process: a pid given to another
		// process after connect(2) and before this read goes unnoticed.
		if openErr != nil {
			return fmt.Errorf("attest: process %d could not be read when it connected: %w", pid, openErr)
		}
		defer unix.Close(dir)
		t, err := readStartTime(dir, pid)
		if err != nil {
			return fmt.Errorf("attest: process %d could not be read when it connected: %w", pid, err)
		}
		p.startTime = t
	}

	switch {
	case k.groupsErr == nil:
		p.groups = k.groups
	case errors.Is(k.groupsErr, unix.ENOPROTOOPT):
		// Before Linux 4.13: the groups the process has now, read once.
		status, err := readProcFile(dir, pid, "status")
		if err != nil {
			return fmt.Errorf("attest: process %d could not be read when it connected: %w", pid, err)
		}
		if p.groups, err = parseStatusGroups(status); err != nil {
			return fmt.Errorf("attest: process %d: status: %w", pid, err)
		}
	default:
		return fmt.Errorf("attest: process %d: SO_PEERGROUPS: %w", pid, k.groupsErr)
	}
	return nil
}

// pidfdAlive says whether the process of pidfd, got with error getErr from
// SO_PEERPIDFD, still runs (or is a zombie, whose pid is not free yet).
func pidfdAlive(pidfd int, getErr error) (bool, error) {
	switch {
	case errors.Is(getErr, unix.EINVAL), errors.Is(getErr, unix.ESRCH):
		// Before Linux 6.16 the kernel has no pidfd for a process that
		// has exited.
		return false, nil
	case getErr != nil:
		return false, fmt.Errorf("attest: SO_PEERPIDFD: %w", getErr)
	}
	// Signal 0 checks, sends nothing. EPERM and EACCES (the agent may not
	// signal it) are answered only for a process that exists.
	switch err := unix.PidfdSendSignal(pidfd, 0, nil, 0); {
	case err == nil, errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return true, nil
	case errors.Is(err, unix.ESRCH):
		return false, nil
	default:
		return false, fmt.Errorf("attest: pidfd_send_signal: %w", err)
	}
}

// readBound checks the bound caller and reads its exe link into buf.
func (p *peerState) readBound(buf []byte) ([]byte, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, p.closedErr()
	}
	exe, err := readOwnedExe(p.dir, p.caller, buf)
	if err != nil && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)) {
		// The handle is the caller's; it answers so only once the caller
		// is gone, whatever now has its pid.
		return nil, fmt.Errorf("attest: process %d: the caller has exited; a connection is attested as the process that opened it, so open a new one", p.caller.PID)
	}
	return exe, err
}

// readByPID checks a caller that could not be bound at accept, through
// /proc/<pid> opened now, and reads its exe link into buf.
func (a *Attestor) readByPID(p *peerState, buf []byte) ([]byte, error) {
	p.mu.RLock()
	closed := p.closed
	p.mu.RUnlock()
	if closed {
		return nil, p.closedErr()
	}
	var exe []byte
	err := a.readOneProcess(p.caller.PID, &p.startTime, func(dir int) error {
		var err error
		exe, err = readOwnedExe(dir, p.caller, buf)
		return err
	})
	if err != nil {
		return nil, err
	}
	return exe, nil
}

func (p *peerState) closedErr() error {
	return fmt.Errorf("attest: process %d: the connection has been closed", p.caller.PID)
}

// peerSelectors returns the selectors of p's caller running exe: those of
// the previous request if exe is the same and their names are still fresh.
func (a *Attestor) peerSelectors(p *peerState, exe []byte) []Selector {
	now := a.clock()
	if c := p.cache.Load(); c != nil && c.exe == string(exe) && !now.Before(c.from) && now.Before(c.until) {
		return c.sel
	}
	e := string(exe)
	sel, from, until := a.selectors(p.caller, p.groups, e, now)
	p.cache.Store(&selectorCache{exe: e, sel: sel, from: from, until: until})
	return sel
}

// close releases the /proc/<pid> handle, after any request using it. It may
// be called more than once.
func (p *peerState) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	if p.bound {
		unix.Close(p.dir)
		p.dir = -1
	}
	if p.release != nil {
		p.release()
	}
}

// peerConn is a connection accepted through TransportCredentials.
type peerConn struct {
	*net.UnixConn
	peer *peerState
	rd   readReady // ReadOnReady's state
}

func newPeerConn(c *net.UnixConn, p *peerState) *peerConn {
	pc := &peerConn{UnixConn: c, peer: p}
	pc.rd.init(c)
	// Should the connection be dropped without Close (gRPC closes the one
	// it handshook on some error paths), the handle is still released.
	runtime.AddCleanup(pc, func(p *peerState) { p.close() }, p)
	return pc
}

// Close closes the connection and the caller's /proc/<pid> handle.
func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.peer.close()
	return err
}

// isProcfs says whether root is a procfs mount.
func isProcfs(root string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(root, &fs) == nil && fs.Type == unix.PROC_SUPER_MAGIC
}

// peerPidfdsWork says whether the kernel gives the pidfd of a unix socket's
// peer (SO_PEERPIDFD, Linux 6.5) and lets it be checked with
// pidfd_send_signal(2), trying both on a socket pair of this process. An
// older kernel answers ENOPROTOOPT; a seccomp filter may refuse either call.
func peerPidfdsWork() bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		return false
	}
	defer unix.Close(pidfd)
	return unix.PidfdSendSignal(pidfd, 0, nil, 0) == nil
}
