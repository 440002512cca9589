// Package shed bounds the work a server does at once and sheds the rest
// early. A Limiter admits up to a number of requests at once; the next ones
// wait their turn in arrival order, up to a number waiting and a time each
// may wait, and past either bound a request is refused at once, before it
// costs more than its arrival. So a herd of clients arriving together (a
// fleet of agents reconnecting after a network partition: SPIRE's issue
// 4490) gets the server's full throughput at a bounded latency and memory,
// and the clients it refuses learn at once that they should back off,
// instead of every request slowing down together until all of them time
// out.
//
// A Limiter never holds a request's own work: it decides only when that
// work may start, and the caller releases the slot when it ends.
package shed

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// ErrQueueFull and ErrWaitedTooLong are why a request was shed.
var (
	ErrQueueFull     = errors.New("shed: too many requests waiting")
	ErrWaitedTooLong = errors.New("shed: waited too long for a turn")
)

// Limiter admits requests up to its bounds. Its zero value is not usable;
// make one with New.
type Limiter struct {
	slots     chan struct{} // one token per request running; nil: no bound
	maxQueued int64         // < 0: no bound
	maxWait   time.Duration // 0: no bound (the request's context still ends the wait)
	after     func(time.Duration) (<-chan time.Time, func() bool)

	queued atomic.Int64
}

// Config configures a Limiter.
type Config struct {
	// InFlight is how many requests may run at once; negative: any number
	// (then nothing ever waits). Zero is not allowed.
	InFlight int
	// Queued is how many may wait for a turn at once; negative: any number.
	Queued int
	// MaxWait bounds how long one request waits; zero: only its context
	// bounds it.
	MaxWait time.Duration
	// After returns a channel that receives once d has passed, and a
	// function that stops it (time.NewTimer's C and Stop by default):
	// tests pass a clock of their own.
	After func(d time.Duration) (<-chan time.Time, func() bool)
}

// New returns a Limiter with cfg's bounds.
func New(cfg Config) (*Limiter, error) {
	if cfg.InFlight == 0 {
		return nil, errors.New("shed: InFlight must be positive, or negative for no bound")
	}
	if cfg.MaxWait < 0 {
		return nil, fmt.Errorf("shed: MaxWait %s is negative", cfg.MaxWait)
	}
	l := &Limiter{maxQueued: int64(cfg.Queued), maxWait: cfg.MaxWait, after: cfg.After}
	if cfg.InFlight > 0 {
		l.slots = make(chan struct{}, cfg.InFlight)
	}
	if l.after == nil {
		l.after = func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		}
	}
	return l, nil
}

// Acquire waits for a turn, in arrival order, and returns the function that
// gives it back (call it exactly once, when the request's work is done).
// It returns ErrQueueFull at once if the waiting line is full,
// ErrWaitedTooLong after MaxWait, or ctx's error if ctx ends first.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	if l.slots == nil {
		return func() {}, nil
	}
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	default:
	}
	if n := l.queued.Add(1); l.maxQueued >= 0 && n > l.maxQueued {
		l.queued.Add(-1)
		return nil, ErrQueueFull
	}
	defer l.queued.Add(-1)
	var expired <-chan time.Time
	if l.maxWait > 0 {
		c, stop := l.after(l.maxWait)
		defer stop()
		expired = c
	}
	// Senders blocked on a channel are woken in the order they blocked.
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	case <-expired:
		return nil, ErrWaitedTooLong
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Limiter) release() { <-l.slots }

// InFlight is how many requests hold a turn now.
func (l *Limiter) InFlight() int { return len(l.slots) }

// Queued is how many wait for one.
func (l *Limiter) Queued() int { return int(l.queued.Load()) }
