package proxy

import (
	"net/http/httptrace"
	"time"
)

// SetAfterFunc replaces the timer of the sidecar's delayed closes; call it
// before Run.
func SetAfterFunc(s *Sidecar, f func(d time.Duration, fn func()) (stop func() bool)) { s.afterFunc = f }

// SetUpstreamTrace has the pool of the HTTP outbound listener named name
// follow its requests' connections with tr; call it before Run.
func SetUpstreamTrace(s *Sidecar, name string, tr *httptrace.ClientTrace) {
	for _, l := range s.listeners {
		if l.name == name {
			l.http.(*httpOutbound).rp.Transport.(*upstreamPool).trace = tr
		}
	}
}

// Recheck runs one pass of the check of open connections' peers and
// returns how many connections it closed.
func Recheck(s *Sidecar) int { return s.recheck() }
