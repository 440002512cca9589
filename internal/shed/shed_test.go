package shed

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
)

// manualTimers hands out timers the test fires itself.
type manualTimers struct{ fire chan chan time.Time }

func (m *manualTimers) after(time.Duration) (<-chan time.Time, func() bool) {
	c := make(chan time.Time, 1)
	m.fire <- c
	return c, func() bool { return true }
}

func mustNew(t *testing.T, cfg Config) *Limiter {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBoundsAndOrder(t *testing.T) {
	l := mustNew(t, Config{InFlight: 2, Queued: 3})
	r1, err := l.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if l.InFlight() != 2 {
		t.Fatalf("in flight %d, want 2", l.InFlight())
	}
	// Three wait; a fourth is refused at once. (Which of the three goes
	// first is the runtime's channel wake order, not observable here.)
	order := make(chan int, 3)
	releases := make(chan func(), 3)
	for i := range 3 {
		go func() {
			r, err := l.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			releases <- r
		}()
		testsync.Eventually(t, "the waiter to queue", func() bool { return l.Queued() == i+1 })
	}
	if _, err := l.Acquire(t.Context()); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a fourth waiter: %v, want ErrQueueFull", err)
	}
	// Each release lets one waiter run, and only one.
	r1()
	seen := map[int]bool{}
	for range 3 {
		seen[<-order] = true
		if l.InFlight() != 2 {
			t.Fatalf("in flight %d after a turn passed, want 2", l.InFlight())
		}
		(<-releases)()
	}
	if len(seen) != 3 {
		t.Fatalf("turns went to %v, want all three waiters", seen)
	}
	if l.Queued() != 0 || l.InFlight() != 1 {
		t.Fatalf("after: %d waiting, %d in flight; want 0 and 1", l.Queued(), l.InFlight())
	}
}

func TestWaitBounds(t *testing.T) {
	timers := &manualTimers{fire: make(chan chan time.Time, 1)}
	l := mustNew(t, Config{InFlight: 1, Queued: -1, MaxWait: 5 * time.Second, After: timers.after})
	if _, err := l.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := l.Acquire(context.Background()); done <- err }()
	(<-timers.fire) <- time.Time{}
	if err := <-done; !errors.Is(err, ErrWaitedTooLong) {
		t.Fatalf("past MaxWait: %v, want ErrWaitedTooLong", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	go func() { _, err := l.Acquire(ctx); done <- err }()
	<-timers.fire
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("context ended: %v, want context.Canceled", err)
	}
	if l.Queued() != 0 {
		t.Fatalf("%d still waiting", l.Queued())
	}
}

func TestNoBound(t *testing.T) {
	l := mustNew(t, Config{InFlight: -1})
	for range 1000 {
		if _, err := l.Acquire(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("InFlight 0 accepted")
	}
}
