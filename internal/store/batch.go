package store

import (
	"context"
	"sync"
	"time"
)

// Group commit of the audit log.
//
// Every issued certificate is one audit row, and the server returns a
// certificate only once its row is committed. With SQLite at
// synchronous=FULL a commit is an fsync, and the one writer connection runs
// commits one after another, so a row per commit would cap issuance at the
// disk's fsyncs per second, far below what the CA can sign. Instead, rows
// that concurrent callers record while a commit is in flight queue up and
// go into the next commit together: one statement, one fsync, for all of
// them. Nothing is weakened: each caller still returns only after its own
// row is committed, and a batch is one statement, so it is committed whole
// or not at all.

const (
	// maxAuditBatch bounds the rows in one commit: 128 rows of 7 values
	// stay far below SQLite's and Postgres's bound on the parameters of
	// one statement, and a commit stays under a MiB.
	maxAuditBatch = 128
	// auditBatchTimeout bounds one batch's write. The caller that writes
	// a batch writes it for every caller in it, so its own cancellation
	// must not fail the others; this bound replaces it.
	auditBatchTimeout = 30 * time.Second
)

// groupCommit writes rows in batches of those queued together. It runs no
// goroutine of its own: a caller that finds no write in flight becomes the
// writer of the queue's first rows (up to max), and callers arriving while
// it writes queue behind it; when it is done, one of them writes the next
// batch. The order of rows within and across batches is the order they were
// queued in, but callers may return in any order.
type groupCommit[T any] struct {
	// write commits batch (never empty, at most max rows) in one
	// transaction, or nothing of it.
	write func(ctx context.Context, batch []T) error
	max   int
	// token is held, by sending into it, by the one caller writing.
	token chan struct{}

	// delay is how long a writer may wait for expected rows (see
	// expect) before it commits without them; 0 never waits.
	delay time.Duration
	// timer starts the wait: it returns a channel that fires after d and
	// a function that stops it (time.NewTimer's by default; tests replace
	// it so that nothing sleeps).
	timer func(d time.Duration) (<-chan time.Time, func() bool)
	// arrived is signalled (without blocking) when a row is queued or an
	// expectation withdrawn, waking a writer that waits.
	arrived chan struct{}

	// observe, if set, is told of each commit: its rows and how long the
	// writer waited for announced rows before it.
	observe func(rows int, waited time.Duration)

	mu       sync.Mutex
	queue    []*pendingRow[T]
	expected int // rows announced by expect and not yet withdrawn

	// queued, if set, is called after a row is queued (for tests, which
	// line callers up behind a write without sleeping).
	queued func()
}

type pendingRow[T any] struct {
	row  T
	done chan error // buffered: the outcome of the row's batch
}

func newGroupCommit[T any](max int, write func(context.Context, []T) error) *groupCommit[T] {
	return &groupCommit[T]{write: write, max: max, token: make(chan struct{}, 1), arrived: make(chan struct{}, 1), timer: realTimer}
}

func realTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// expect announces a row its caller will queue soon: it is signing the
// certificate the row records. Until the row is queued (do with this
// expectation) or the expectation withdrawn, a writer about to commit waits
// up to delay for the row, so that it shares the commit instead of paying
// for one of its own (PostgreSQL's commit_delay, with the announced rows as
// its commit_siblings).
//
// With no row announced a writer commits at once, so a server under light
// load adds no latency; under load a commit carries the rows of every
// caller that finishes signing within delay, and each row costs a fraction
// of a commit (an fsync, and the pages the indexes share).
func (g *groupCommit[T]) expect() *expectation[T] {
	g.mu.Lock()
	g.expected++
	g.mu.Unlock()
	return &expectation[T]{g: g}
}

// expectation is a row announced by expect.
type expectation[T any] struct {
	g         *groupCommit[T]
	withdrawn bool // guarded by g.mu
}

// withdraw takes the announcement back; calling it again does nothing.
func (e *expectation[T]) withdraw() {
	e.g.mu.Lock()
	e.settleLocked()
	e.g.mu.Unlock()
	e.g.signal()
}

func (e *expectation[T]) settleLocked() {
	if !e.withdrawn {
		e.withdrawn = true
		e.g.expected--
	}
}

func (g *groupCommit[T]) signal() {
	select {
	case g.arrived <- struct{}{}:
	default:
	}
}

// do queues row, settling e (if not nil) in the same step, and returns once
// the batch it went into is committed (nil) or failed (that batch's error,
// the same for every row in it). If ctx ends first, do returns ctx's error;
// the row may still be written afterwards.
func (g *groupCommit[T]) do(ctx context.Context, row T, e *expectation[T]) error {
	p := &pendingRow[T]{row: row, done: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, p)
	if e != nil {
		e.settleLocked()
	}
	g.mu.Unlock()
	g.signal()
	if g.queued != nil {
		g.queued()
	}
	for {
		select {
		case err := <-p.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case g.token <- struct{}{}:
			// The previous writer may have taken this row (it answers
			// before it lets the token go); else write a batch, which
			// has this row unless more than max were queued before it.
			select {
			case err := <-p.done:
				<-g.token
				return err
			default:
			}
			g.writeBatch(ctx)
			<-g.token
		}
	}
}

// writeBatch takes up to max rows from the head of the queue, writes them
// and answers each. The caller holds the token.
func (g *groupCommit[T]) writeBatch(ctx context.Context) {
	waited := g.awaitExpected()
	g.mu.Lock()
	n := min(len(g.queue), g.max)
	batch := g.queue[:n:n]
	g.queue = g.queue[n:]
	if len(g.queue) == 0 {
		g.queue = nil // let the backing array go
	}
	g.mu.Unlock()
	if n == 0 {
		return
	}
	rows := make([]T, n)
	for i, p := range batch {
		rows[i] = p.row
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditBatchTimeout)
	err := g.write(ctx, rows)
	cancel()
	if g.observe != nil {
		g.observe(n, waited)
	}
	for _, p := range batch {
		p.done <- err
	}
}

// awaitExpected waits, up to delay, until no announced row is still to be
// queued or a full batch is queued, and returns how long it waited. The
// caller holds the token, so rows queue behind the wait and no other commit
// starts during it.
func (g *groupCommit[T]) awaitExpected() time.Duration {
	if g.delay <= 0 || !g.waiting() {
		return 0
	}
	start := time.Now()
	fired, stop := g.timer(g.delay)
	defer stop()
	for g.waiting() {
		select {
		case <-g.arrived:
		case <-fired:
			return time.Since(start)
		}
	}
	return time.Since(start)
}

// waiting reports whether a writer should wait for announced rows.
func (g *groupCommit[T]) waiting() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.expected > 0 && len(g.queue) < g.max
}
