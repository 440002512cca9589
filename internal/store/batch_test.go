package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// batchRig is a groupCommit over ints whose writes the test controls: each
// write reports its batch on writes and then waits for the test to send
// that batch's outcome on results. Nothing sleeps; the test knows a caller
// has queued its row when queued says so.
type batchRig struct {
	g       *groupCommit[int]
	writes  chan []int
	results chan error
	queued  chan struct{}
}

func newBatchRig(max int) *batchRig {
	r := &batchRig{writes: make(chan []int), results: make(chan error), queued: make(chan struct{}, 1024)}
	r.g = newGroupCommit(max, func(_ context.Context, batch []int) error {
		r.writes <- slices.Clone(batch)
		return <-r.results
	})
	r.g.queued = func() { r.queued <- struct{}{} }
	return r
}

// record calls do for row in a goroutine, waits until the row is queued,
// and returns the channel do's result will arrive on.
func (r *batchRig) record(ctx context.Context, row int) <-chan error {
	done := make(chan error, 1)
	go func() { done <- r.g.do(ctx, row, nil) }()
	<-r.queued
	return done
}

// blockWriter has row 0 written alone and held: until the test sends the
// outcome on results, every row recorded queues behind it.
func (r *batchRig) blockWriter(t *testing.T) <-chan error {
	t.Helper()
	first := r.record(context.Background(), 0)
	if got := <-r.writes; !slices.Equal(got, []int{0}) {
		t.Fatalf("first batch %v, want [0]", got)
	}
	return first
}

// TestGroupCommitBatches: rows recorded while a write is in flight go into
// the next write together, and each caller gets its own batch's outcome: a
// failed batch fails every caller in it and no other.
func TestGroupCommitBatches(t *testing.T) {
	errDisk := errors.New("disk I/O error")
	for _, tt := range []struct {
		name        string
		first, next error
	}{
		{"both committed", nil, nil},
		{"second batch fails", nil, errDisk},
		{"first batch fails", errDisk, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newBatchRig(maxAuditBatch)
			first := r.blockWriter(t)
			var waiting []<-chan error
			for row := 1; row <= 5; row++ {
				waiting = append(waiting, r.record(context.Background(), row))
			}
			r.results <- tt.first
			if err := <-first; err != tt.first {
				t.Errorf("row 0: %v, want %v", err, tt.first)
			}
			// One caller writes all five queued rows, in the order queued.
			if got := <-r.writes; !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
				t.Fatalf("second batch %v, want [1 2 3 4 5]", got)
			}
			r.results <- tt.next
			for i, w := range waiting {
				if err := <-w; err != tt.next {
					t.Errorf("row %d: %v, want %v", i+1, err, tt.next)
				}
			}
		})
	}
}

// TestGroupCommitMax: a batch holds at most max rows; what is left over is
// written next, in order, and no row is written twice or lost.
func TestGroupCommitMax(t *testing.T) {
	r := newBatchRig(3)
	first := r.blockWriter(t)
	var waiting []<-chan error
	for row := 1; row <= 7; row++ {
		waiting = append(waiting, r.record(context.Background(), row))
	}
	r.results <- nil
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]int{{1, 2, 3}, {4, 5, 6}, {7}} {
		if got := <-r.writes; !slices.Equal(got, want) {
			t.Fatalf("batch %v, want %v", got, want)
		}
		r.results <- nil
	}
	for i, w := range waiting {
		if err := <-w; err != nil {
			t.Errorf("row %d: %v", i+1, err)
		}
	}
}

// TestGroupCommitCallerGivesUp: a caller whose context ends while its row
// waits returns the context's error at once; its row is still written with
// the next batch (an audit row for a certificate never handed out is
// harmless), and the other rows of that batch are not affected.
func TestGroupCommitCallerGivesUp(t *testing.T) {
	r := newBatchRig(maxAuditBatch)
	first := r.blockWriter(t)
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := r.record(ctx, 1)
	stays := r.record(context.Background(), 2)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("row 1: %v, want context.Canceled", err)
	}
	r.results <- nil
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := <-r.writes; !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("second batch %v, want [1 2]", got)
	}
	r.results <- nil
	if err := <-stays; err != nil {
		t.Errorf("row 2: %v", err)
	}
}

// TestGroupCommitConcurrent: many callers at once, some of whose batches
// fail: every caller returns, and a caller is told nil exactly when its row
// was in a batch that was committed. Run with -race.
func TestGroupCommitConcurrent(t *testing.T) {
	const callers = 200
	var (
		mu        sync.Mutex
		committed = map[int]int{} // row -> times written in a committed batch
		writes    int
	)
	g := newGroupCommit(7, func(_ context.Context, batch []int) error {
		mu.Lock()
		defer mu.Unlock()
		writes++
		if writes%3 == 0 {
			return fmt.Errorf("write %d failed", writes)
		}
		for _, row := range batch {
			committed[row]++
		}
		return nil
	})
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { errs[i] = g.do(context.Background(), i, nil) })
	}
	wg.Wait()
	for i, err := range errs {
		switch n := committed[i]; {
		case n > 1:
			t.Errorf("row %d committed %d times", i, n)
		case n == 1 && err != nil:
			t.Errorf("row %d was committed but its caller got %v", i, err)
		case n == 0 && err == nil:
			t.Errorf("row %d was not committed but its caller got nil", i)
		}
	}
	if len(g.queue) != 0 {
		t.Errorf("%d rows left in the queue", len(g.queue))
	}
}

// fakeTimer replaces groupCommit.timer: started receives each wait's
// duration, and the test fires the wait by sending on fire.
type fakeTimer struct {
	started chan time.Duration
	fire    chan time.Time
}

func (r *batchRig) withDelay(d time.Duration) *fakeTimer {
	ft := &fakeTimer{started: make(chan time.Duration, 1), fire: make(chan time.Time)}
	r.g.delay = d
	r.g.timer = func(d time.Duration) (<-chan time.Time, func() bool) {
		ft.started <- d
		return ft.fire, func() bool { return true }
	}
	return ft
}

// recordExpected is record for a row announced by e.
func (r *batchRig) recordExpected(row int, e *expectation[int]) <-chan error {
	done := make(chan error, 1)
	go func() { done <- r.g.do(context.Background(), row, e) }()
	<-r.queued
	return done
}

// commitOK takes the next write, which must be the batch want, lets it
// succeed, and checks that each of done then returns nil.
func (r *batchRig) commitOK(t *testing.T, want []int, done ...<-chan error) {
	t.Helper()
	if got := <-r.writes; !slices.Equal(got, want) {
		t.Fatalf("batch %v, want %v", got, want)
	}
	r.results <- nil
	for i, d := range done {
		if err := <-d; err != nil {
			t.Errorf("caller %d of batch %v: %v", i, want, err)
		}
	}
}

// wantNoWait fails if a writer started waiting for announced rows.
func wantNoWait(t *testing.T, ft *fakeTimer) {
	t.Helper()
	select {
	case d := <-ft.started:
		t.Errorf("the writer waited %v", d)
	default:
	}
}

// TestGroupCommitWaitsForExpectedRows: a writer with rows announced waits
// for them (up to the delay) and commits them together with its own.
func TestGroupCommitWaitsForExpectedRows(t *testing.T) {
	r := newBatchRig(maxAuditBatch)
	ft := r.withDelay(time.Millisecond)
	e1, e2 := r.g.expect(), r.g.expect()
	e0 := r.g.expect()
	first := r.recordExpected(0, e0)
	if d := <-ft.started; d != time.Millisecond {
		t.Fatalf("waited %v, want the delay 1ms", d)
	}
	second := r.recordExpected(1, e1)
	// Row 2's caller gives up (its signing failed): nothing more to wait for.
	e2.withdraw()
	r.commitOK(t, []int{0, 1}, first, second) // in one commit
	r.g.mu.Lock()
	left := r.g.expected
	r.g.mu.Unlock()
	if left != 0 {
		t.Errorf("expected = %d after every row settled, want 0", left)
	}
}

// TestGroupCommitDelayBounded: when the delay passes, the writer commits
// what is queued without the rows still announced, which go into a later
// commit.
func TestGroupCommitDelayBounded(t *testing.T) {
	r := newBatchRig(maxAuditBatch)
	ft := r.withDelay(time.Millisecond)
	late := r.g.expect()
	first := r.recordExpected(0, r.g.expect())
	<-ft.started
	ft.fire <- time.Time{}
	r.commitOK(t, []int{0}, first) // alone, once the delay passed
	// The late row, once queued, is its own writer and waits for nothing.
	second := r.recordExpected(1, late)
	r.commitOK(t, []int{1}, second)
	wantNoWait(t, ft)
}

// TestGroupCommitNoWait: a writer commits at once when nothing is announced,
// when the delay is 0, and when a full batch is queued.
func TestGroupCommitNoWait(t *testing.T) {
	for _, tt := range []struct {
		name     string
		delay    time.Duration
		max      int
		announce int
	}{
		{"nothing announced", time.Millisecond, maxAuditBatch, 0},
		{"delay 0", 0, maxAuditBatch, 3},
		{"full batch", time.Millisecond, 1, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newBatchRig(tt.max)
			ft := r.withDelay(tt.delay)
			for range tt.announce {
				r.g.expect()
			}
			r.commitOK(t, []int{7}, r.record(context.Background(), 7))
			wantNoWait(t, ft)
		})
	}
}

// TestIssuedExpectationSettles: on a real SQLite store with an hour's
// commit delay, Record settles its announcement as it queues the row and a
// row refused before queueing settles too, so the commit waits for nothing.
func TestIssuedExpectationSettles(t *testing.T) {
	s, err := Open(context.Background(), Config{DataDir: t.TempDir(), AuditCommitDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good, bad := s.ExpectIssued(), s.ExpectIssued()
	if err := bad.Record(context.Background(), Issued{Serial: "0b", SPIFFEID: "spiffe://east.example/x", CredentialKind: "svid"}); err == nil || !strings.Contains(err.Error(), "has no expiry") {
		t.Fatalf("Record of a row without expiry: %v, want it refused", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	row := Issued{Serial: "0a", SPIFFEID: "spiffe://east.example/x", CredentialKind: "svid", NotAfter: time.UnixMilli(1e12)}
	if err := good.Record(ctx, row); err != nil {
		t.Fatalf("Record: %v (a commit waiting for a settled announcement?)", err)
	}
	good.Withdraw() // after Record: nothing to take back
	got, err := s.ListIssued(context.Background(), AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Serial != "a" {
		t.Fatalf("audit log %+v, want the one row with serial a", got)
	}
	if left := s.AnnouncedIssued(); left != 0 {
		t.Errorf("%d announcements left, want 0", left)
	}
}
