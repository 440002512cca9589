package attest

import (
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/mem"
)

// readReady lets gRPC read a peerConn without a buffer of its own.
//
// gRPC's HTTP/2 transport reads a bare *net.UnixConn by waiting until the
// socket is readable and only then taking a buffer from a shared pool,
// which goes back to the pool once its bytes are consumed: an idle
// connection holds no read buffer. Any other net.Conn it reads through a
// bufio.Reader of its own, 32 KiB for the connection's whole life, unless
// the conn offers ReadOnReady (gRPC's readyreader.Reader, "an optional
// interface that can be implemented by net.Conn implementations"). A
// peerConn wraps the *net.UnixConn to release the caller's /proc handle
// and its admission on close, so without ReadOnReady every connected
// workload would cost the agent that 32 KiB more, twice what it costs
// otherwise (docs/performance.md, "Memory per connected workload").
//
// gRPC's reader goroutine is the only caller, one read at a time, so the
// read's state lives here and a read allocates nothing.
type readReady struct {
	raw    syscall.RawConn
	rawErr error // why the conn gave no RawConn: every read fails with it
	fn     func(fd uintptr) bool

	size int // the last read's size, left set (a test reads it)
	pool mem.BufferPool
	buf  *[]byte
	n    int
	err  error
}

func (r *readReady) init(c syscall.Conn) {
	raw, err := c.SyscallConn()
	if err != nil {
		r.rawErr = err
		return
	}
	r.raw = raw
	r.fn = func(fd uintptr) bool {
		r.buf = r.pool.Get(r.size)
		for {
			r.n, r.err = unix.Read(int(fd), *r.buf)
			if r.err != unix.EINTR {
				break
			}
		}
		if r.err != nil {
			r.pool.Put(r.buf)
			r.buf, r.n = nil, 0
			if r.err == unix.EAGAIN {
				return false // not readable after all: wait again
			}
			r.err = os.NewSyscallError("read", r.err)
		}
		return true
	}
}

// ReadOnReady waits until the connection is readable, then reads up to
// size bytes into a buffer from pool and returns it, for the caller to put
// back. At the end of the stream it returns io.EOF and no buffer.
func (c *peerConn) ReadOnReady(size int, pool mem.BufferPool) (*[]byte, int, error) {
	r := &c.rd
	if r.raw == nil {
		return nil, 0, r.rawErr
	}
	r.size, r.pool = size, pool
	err := r.raw.Read(r.fn)
	buf, n, readErr := r.buf, r.n, r.err
	r.buf, r.pool, r.n, r.err = nil, nil, 0, nil
	switch {
	case err != nil: // closed, or a deadline passed, before a read
		if buf != nil {
			pool.Put(buf)
		}
		return nil, 0, err
	case readErr != nil:
		return nil, 0, readErr
	case n == 0: // the peer closed its end
		pool.Put(buf)
		return nil, 0, io.EOF
	}
	return buf, n, nil
}
