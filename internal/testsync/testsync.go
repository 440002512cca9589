// Package testsync is for tests that watch what runs in other goroutines or
// processes: a log destination they may write to while the test reads it,
// and a bounded wait for a condition that nothing the test drives makes
// true (a process's log line, a connection the server notices closed).
// Tests that can drive time do so with an injected clock instead; Eventually
// measures nothing, its bound only turns a hang into a failure.
package testsync

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Buffer is a bytes.Buffer safe for concurrent writers and readers: a log
// destination (slog handler, a process's stderr) the test reads.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what has been written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Bound is how long Eventually waits before failing the test.
const Bound = 30 * time.Second

// Eventually polls cond until it holds, failing the test with what after
// Bound.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, Bound, what, cond)
}

// EventuallyWithin is Eventually with a bound of its own: for a wait whose
// event a separate process reports (its start, a file it writes), where a
// shorter or longer bound says what the test expects of it.
func EventuallyWithin(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
