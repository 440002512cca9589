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

	mu    sync.Mutex
	queue []*pendingRow[T]

	// queued, if set, is called after a row is queued (for tests, which
	// line callers up behind a write without sleeping).
	queued func()
}

type pendingRow[T any] struct {
	row  T
	done chan error // buffered: the outcome of the row's batch
}

func newGroupCommit[T any](max int, write func(context.Context, []T) error) *groupCommit[T] {
	return &groupCommit[T]{write: write, max: max, token: make(chan struct{}, 1)}
}

// do queues row and returns once the batch it went into is committed (nil)
// or failed (that batch's error, the same for every row in it). If ctx ends
// first, do returns ctx's error; the row may still be written afterwards.
func (g *groupCommit[T]) do(ctx context.Context, row T) error {
	p := &pendingRow[T]{row: row, done: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, p)
	g.mu.Unlock()
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
	for _, p := range batch {
		p.done <- err
	}
}
