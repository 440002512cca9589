// Package logpace keeps a repeated warning from flooding a log: for each
// key (a uid and a limit, a kind of refusal), at most one line per
// interval, the next one saying how many were left out meanwhile. It never
// drops the first occurrence of a key, and it forgets keys whose interval
// has passed, so its memory is bounded by the keys seen within one
// interval.
package logpace

import (
	"sync"
	"time"
)

// Pacer decides which occurrences of a warning are logged.
type Pacer[K comparable] struct {
	every time.Duration
	mu    sync.Mutex
	keys  map[K]*state
}

type state struct {
	at     time.Time // when a line was last let through
	missed int       // occurrences left out since
}

// New returns a Pacer letting one line per key through every interval.
func New[K comparable](every time.Duration) *Pacer[K] {
	return &Pacer[K]{every: every, keys: make(map[K]*state)}
}

// Allow reports whether an occurrence of key at now is to be logged, and
// if so how many occurrences of it were left out since the last line.
func (p *Pacer[K]) Allow(key K, now time.Time) (missed int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.keys[key]; st != nil && now.Sub(st.at) < p.every {
		st.missed++
		return 0, false
	} else if st != nil {
		missed = st.missed
	}
	p.keys[key] = &state{at: now}
	for k, st := range p.keys {
		if k != key && now.Sub(st.at) >= p.every {
			delete(p.keys, k)
		}
	}
	return missed, true
}
