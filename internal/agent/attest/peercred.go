package attest

import (
	"context"
	"errors"
	"fmt"
	"net"

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
// TransportCredentials.
type authInfo struct {
	credentials.CommonAuthInfo
	caller Caller
	// startTime is the caller's start time read right after SO_PEERCRED;
	// startErr says why it could not be read.
	startTime uint64
	startErr  error
}

func (authInfo) AuthType() string { return "unix-peercred" }

// CallerFromContext returns the caller of a gRPC request that arrived on a
// connection accepted through an Attestor's TransportCredentials.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	info, ok := authInfoFromContext(ctx)
	return info.caller, ok
}

func authInfoFromContext(ctx context.Context) (authInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return authInfo{}, false
	}
	info, ok := p.AuthInfo.(authInfo)
	return info, ok
}

// peerCreds are server-side transport credentials for a unix listener: the
// handshake exchanges no bytes, it asks the kernel who connected.
type peerCreds struct{ a *Attestor }

// TransportCredentials returns gRPC server transport credentials for a unix
// listener. Each accepted connection carries its caller's SO_PEERCRED and
// start time, which AttestPeer uses. They refuse any connection that is not
// a unix socket and cannot be used by a client.
func (a *Attestor) TransportCredentials() credentials.TransportCredentials { return peerCreds{a} }

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("attest: these transport credentials are for the server side of a unix socket only")
}

func (p peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	caller, err := peerCred(c)
	if err != nil {
		return nil, nil, err
	}
	info := authInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		caller:         caller,
	}
	// Read as soon as possible after the kernel's record, before the pid has
	// much time to change hands. A failure is kept, not returned: the
	// workload then gets a gRPC error it can report instead of a connection
	// that keeps failing its handshake.
	info.startTime, info.startErr = p.a.startTime(caller.PID)
	return c, info, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }

// OverrideServerName is part of the interface gRPC still requires.
func (peerCreds) OverrideServerName(string) error { return nil }

// peerCred asks the kernel for the credentials of the process that
// connected c.
func peerCred(c net.Conn) (Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}, fmt.Errorf("attest: connection from %s is not on a unix socket", c.RemoteAddr())
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("attest: SO_PEERCRED: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, fmt.Errorf("attest: SO_PEERCRED: %w", err)
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("attest: SO_PEERCRED: %w", credErr)
	}
	return Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
