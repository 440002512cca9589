package attest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Caller is the kernel's record of the process at the other end of a unix
// connection, taken by SO_PEERCRED when it connected. The caller cannot
// forge it.
type Caller struct {
	PID      int32
	UID, GID uint32
}

// authInfo is the gRPC AuthInfo of a connection accepted through
// TransportCredentials. gRPC copies it into every request's peer; what the
// connection learnt at accept, and its selector cache, are shared through
// the pointer.
type authInfo struct {
	credentials.CommonAuthInfo
	peer *peerState
}

func (authInfo) AuthType() string { return "unix-peercred" }

// CallerFromContext returns the caller of a gRPC request that arrived on a
// connection accepted through an Attestor's TransportCredentials.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	info, ok := authInfoFromContext(ctx)
	if !ok {
		return Caller{}, false
	}
	return info.peer.caller, true
}

func authInfoFromContext(ctx context.Context) (authInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return authInfo{}, false
	}
	info, ok := p.AuthInfo.(authInfo)
	return info, ok && info.peer != nil
}

// peerCreds are server-side transport credentials for a unix listener: the
// handshake exchanges no bytes, it asks the kernel who connected.
type peerCreds struct{ a *Attestor }

// TransportCredentials returns gRPC server transport credentials for a unix
// listener. Each accepted connection is bound to the process that opened it
// (see the package doc) and carries its SO_PEERCRED and connect-time
// supplementary groups, which AttestPeer uses. They refuse any connection
// that is not a unix socket and cannot be used by a client.
func (a *Attestor) TransportCredentials() credentials.TransportCredentials { return peerCreds{a} }

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("attest: these transport credentials are for the server side of a unix socket only")
}

// ServerHandshake asks the kernel who connected c and binds the connection
// to that process. Only a connection that is not a unix socket, whose
// SO_PEERCRED cannot be read, or that Config.Admit refuses, fails the
// handshake (gRPC then closes it); any other failure is kept
// with the connection, so the workload gets a gRPC error it can report
// instead of a connection that keeps failing its handshake. The returned
// connection's Close also releases what the binding holds.
func (p peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("attest: connection from %s is not on a unix socket", c.RemoteAddr())
	}
	k, err := readKernelPeer(uc, p.a.pidfds)
	if err != nil {
		return nil, nil, err
	}
	var release func()
	if p.a.admit != nil {
		if release, err = p.a.admit(k.caller); err != nil {
			if k.pidfd >= 0 {
				unix.Close(k.pidfd)
			}
			p.a.refusals.tell(uc, err)
			return nil, nil, err
		}
	}
	st := p.a.bind(k)
	st.release = release
	info := authInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		peer:           st,
	}
	return newPeerConn(uc, st), info, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }

// OverrideServerName is part of the interface gRPC still requires.
func (peerCreds) OverrideServerName(string) error { return nil }

// kernelPeer is what the kernel recorded about the process at the other end
// of a unix connection when it connected.
type kernelPeer struct {
	caller Caller
	// groups are the caller's supplementary groups (SO_PEERGROUPS);
	// groupsErr says why they could not be read.
	groups    []uint32
	groupsErr error
	// pidfd is a pidfd of the caller (SO_PEERPIDFD), -1 if it was not asked
	// for or could not be had (pidfdErr says why). Whoever holds a
	// kernelPeer closes it.
	pidfd    int
	pidfdErr error
}

// readKernelPeer asks the kernel for the credentials of the process that
// connected c, its supplementary groups and, if withPidfd, a pidfd of it.
// Only a failure of SO_PEERCRED is returned.
func readKernelPeer(c *net.UnixConn, withPidfd bool) (kernelPeer, error) {
	k := kernelPeer{pidfd: -1}
	raw, err := c.SyscallConn()
	if err != nil {
		return k, fmt.Errorf("attest: SO_PEERCRED: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		s := int(fd)
		cred, credErr = unix.GetsockoptUcred(s, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		k.groups, k.groupsErr = readGroups(func(buf []uint32) (int, error) { return getsockoptGroups(s, buf) })
		if withPidfd {
			pidfd, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
			if err != nil {
				k.pidfdErr = err
			} else {
				k.pidfd = pidfd
			}
		}
	}); err != nil {
		return k, fmt.Errorf("attest: SO_PEERCRED: %w", err)
	}
	if credErr != nil {
		return k, fmt.Errorf("attest: SO_PEERCRED: %w", credErr)
	}
	k.caller = Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	return k, nil
}

// maxGroups is the kernel's NGROUPS_MAX: no process has more supplementary
// groups, so a longer answer is refused rather than allocated.
const maxGroups = 65536

// getsockoptGroups is getsockopt(SO_PEERGROUPS) into buf: the number of
// bytes written or, with ERANGE, the number buf would need.
// golang.org/x/sys has no wrapper that returns binary data.
func getsockoptGroups(fd int, buf []uint32) (int, error) {
	n := uint32(len(buf) * 4) // socklen_t
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
		uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}

// readGroups reads a group list the kernel writes as an array of gids:
// get fills buf and returns the number of bytes it wrote, or ERANGE and the
// number it needs, as getsockopt(SO_PEERGROUPS) does. The list is bounded by
// maxGroups and kept in the kernel's order (ascending, as in
// /proc/<pid>/status).
func readGroups(get func(buf []uint32) (int, error)) ([]uint32, error) {
	buf := make([]uint32, 32)
	// A peer's groups are fixed when it connects, so one retry with the
	// size the kernel asked for is enough; a second ERANGE is refused.
	for try := 0; ; try++ {
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) && try == 0 {
			if n <= len(buf)*4 || n%4 != 0 || n > maxGroups*4 {
				return nil, fmt.Errorf("the kernel asked for %d bytes of groups; at most %d groups of 4 bytes are allowed", n, maxGroups)
			}
			buf = make([]uint32, n/4)
			continue
		}
		if errors.Is(err, unix.ERANGE) {
			return nil, fmt.Errorf("the number of groups changed while they were read: %w", err)
		}
		if err != nil {
			return nil, err
		}
		if n < 0 || n%4 != 0 || n > len(buf)*4 {
			return nil, fmt.Errorf("the kernel returned %d bytes of groups into a buffer of %d", n, len(buf)*4)
		}
		groups := buf[: n/4 : n/4]
		if len(groups) == 0 {
			return nil, nil
		}
		return groups, nil
	}
}
