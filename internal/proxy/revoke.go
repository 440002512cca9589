package proxy

import (
	"context"
	"time"

	"github.com/meshfed/meshfed/internal/supervise"
)

// recheckInterval is how often the sidecar checks the peers of its open
// mTLS connections against the present bundles and CA files.
const recheckInterval = time.Second

// Withdrawing trust closes connections. Envoy keeps an open connection to
// its end, so a trust domain taken out of the federation (or a root
// replaced after a compromise) keeps every connection it already had: the
// incident is over only when the last one closes. Here, once a second, each
// open mTLS connection's peer is checked again (a connAuth check, which
// verifies the chain again only when the bundle or CA file changed), and a
// connection whose peer no longer verifies is closed, whatever its
// protocol: inbound and outbound TCP, HTTP inbound connections with their
// requests in flight, ingress gateway connections. Expiry alone closes no
// TCP connection (it was authorized when it opened, as in Envoy; an HTTP
// connection stops carrying requests then, see peerauth.go), so a rotation
// cuts nothing.

// liveConn is an open connection whose peer a handshake authenticated.
type liveConn struct {
	listener string
	auth     connAuth
	now      func() time.Time // the clock auth is checked by
	close    func()
}

// trackAuth adds a connection to the ones recheck looks at; call the
// result when it ends.
func (s *Sidecar) trackAuth(listener string, auth connAuth, now func() time.Time, closeConn func()) (untrack func()) {
	lc := &liveConn{listener: listener, auth: auth, now: now, close: closeConn}
	s.liveMu.Lock()
	if s.live == nil {
		s.live = map[*liveConn]struct{}{}
	}
	s.live[lc] = struct{}{}
	s.liveMu.Unlock()
	return func() {
		s.liveMu.Lock()
		delete(s.live, lc)
		s.liveMu.Unlock()
	}
}

// recheck closes the tracked connections whose peer is no longer trusted
// and returns how many it closed.
func (s *Sidecar) recheck() int {
	s.liveMu.Lock()
	conns := make([]*liveConn, 0, len(s.live))
	for lc := range s.live {
		conns = append(conns, lc)
	}
	s.liveMu.Unlock()
	closed := 0
	for _, lc := range conns {
		err := lc.auth.check(lc.now())
		if err == nil || err.(*staleError).reason != "untrusted" {
			continue
		}
		lc.close()
		closed++
		s.metrics.stale.WithLabelValues(lc.listener, "untrusted").Inc()
		s.log.Warn("proxy: closed a connection: its peer is no longer trusted", "listener", lc.listener, "peer", lc.auth.peer(), "error", err)
	}
	return closed
}

// rechecking runs recheck every recheckInterval until ctx is done.
func (s *Sidecar) rechecking(ctx context.Context) {
	supervise.Every(ctx, recheckInterval, func() { s.recheck() })
}
