package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// handoff passes connections an accept loop has already terminated (past
// TLS, or plaintext) to one http.Server, and tells the accept loop when the
// server is done with each, so that the connection cap, the drain and the
// access log keep working per connection.
type handoff struct {
	queue *connQueue
	conns sync.Map // net.Conn -> *handed

	// lapse, if set, is asked each time a connection goes idle how long
	// it may stay open idle (false: no limit of its own, the server's idle
	// timeout applies); past that it is closed and lapsed called with its
	// info. afterFunc, set with lapse, runs f after d and returns what
	// stops it (the Sidecar's afterFunc).
	lapse     func(info any) (time.Duration, bool)
	lapsed    func(info any)
	afterFunc func(d time.Duration, f func()) (stop func() bool)
}

// handed is one connection given to the HTTP server, with what the accept
// loop knew of it (info, for the handler). done is closed when the server
// is done with it: when it closes it, or, for a connection hijacked by an
// upgrade (WebSocket), when the handler that proxied the upgraded stream
// returns (handlerDone).
type handed struct {
	info     any
	done     chan struct{}
	once     sync.Once
	hijacked atomic.Bool

	idle atomic.Bool
	// stopLapse stops the pending close of the idle connection. The
	// server calls ConnState for one connection from one goroutine at a
	// time, and only ConnState touches it.
	stopLapse func() bool
}

func (c *handed) close() { c.once.Do(func() { close(c.done) }) }

type handedKey struct{}

func newHandoff(addr net.Addr) *handoff { return &handoff{queue: newConnQueue(addr)} }

// wire sets srv's ConnContext and ConnState so that handlers find their
// connection's info and the handoff learns when a connection ends.
func (h *handoff) wire(srv *http.Server) {
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if v, ok := h.conns.Load(c); ok {
			return context.WithValue(ctx, handedKey{}, v)
		}
		return ctx
	}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		v, ok := h.conns.Load(c)
		if !ok {
			return
		}
		hc := v.(*handed)
		h.idleChanged(hc, c, st == http.StateIdle)
		switch st {
		case http.StateClosed:
			h.conns.Delete(c)
			hc.close()
		case http.StateHijacked:
			h.conns.Delete(c)
			hc.hijacked.Store(true)
		}
	}
}

// idleChanged is told each change of c's state: it stops the pending close
// of c, and if c is now idle and lapse gives it a limit, closes c at that
// limit unless c is busy again by then.
func (h *handoff) idleChanged(hc *handed, c net.Conn, idle bool) {
	if hc.stopLapse != nil {
		hc.stopLapse()
		hc.stopLapse = nil
	}
	hc.idle.Store(idle)
	if !idle || h.lapse == nil {
		return
	}
	d, ok := h.lapse(hc.info)
	if !ok {
		return
	}
	hc.stopLapse = h.afterFunc(max(d, 0), func() {
		if hc.idle.Load() {
			c.Close()
			if h.lapsed != nil {
				h.lapsed(hc.info)
			}
		}
	})
}

// serve hands c to the server and returns once the server is done with it;
// false if the server is shutting down and c was not taken.
func (h *handoff) serve(c net.Conn, info any) bool {
	hc := &handed{info: info, done: make(chan struct{})}
	h.conns.Store(c, hc)
	select {
	case h.queue.ch <- c:
	case <-h.queue.done:
		h.conns.Delete(c)
		return false
	}
	<-hc.done
	return true
}

// serveAll runs srv on the handed-over connections until it is shut down
// or the queue is closed, which is no error.
func (h *handoff) serveAll(srv *http.Server) error {
	err := srv.Serve(h.queue)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// handedIn returns the connection of a request's context, or nil.
func handedIn(ctx context.Context) *handed {
	hc, _ := ctx.Value(handedKey{}).(*handed)
	return hc
}

// handlerDone is called when a handler returns: if it proxied an upgraded
// stream (ReverseProxy hijacks only to switch protocols, and writes the 101
// itself), the stream has ended and the connection may go. It reports
// whether the connection was upgraded.
func handlerDone(ctx context.Context) bool {
	hc := handedIn(ctx)
	if hc == nil || !hc.hijacked.Load() {
		return false
	}
	hc.close()
	return true
}

// connQueue is the net.Listener of a handoff: connections arrive on ch from
// the accept loop, already past TLS.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	if addr == nil {
		addr = &net.TCPAddr{}
	}
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
