package fetcher

import (
	"context"
	"time"
)

// startLongPollLocked starts the long poll of ps after a successful
// scheduled fetch (or Refresh) at now, if Run runs, the answer had an ETag,
// no long poll of ps runs, and the endpoint was not found, within
// MaxRefresh, to answer long polls at once. The goroutine belongs to Run: it
// ends with Run's context, and Run waits for it. r.mu is held.
func (r *Refresher) startLongPollLocked(ps *peerState, now time.Time) {
	if r.runCtx == nil || ps.poller != 0 || ps.etag == "" {
		return
	}
	if ps.push == pushOff {
		if now.Before(ps.pushOffAt.Add(r.sched.max)) {
			return
		}
		ps.push = pushUnknown
	}
	r.pollers++
	id := r.pollers
	ps.poller = id
	ctx, stop := context.WithCancel(r.runCtx)
	ps.stopPoll = stop
	r.pollsStarted.Add(1)
	r.pollsRunning.Add(1)
	r.polls.Go(func() {
		defer r.pollsRunning.Add(-1)
		defer stop()
		r.longPolls(ctx, ps, id)
	})
}

// longPolls long-polls ps, one request after the other, until an outcome
// says stop (pushAfter) or ctx is done. id is its ps.poller.
func (r *Refresher) longPolls(ctx context.Context, ps *peerState, id uint64) {
	defer func() {
		r.mu.Lock()
		if ps.poller == id {
			ps.poller = 0
		}
		r.mu.Unlock()
	}()
	var began time.Time
	for {
		if !began.IsZero() {
			if d := r.spacing - time.Since(began); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		began = time.Now()
		goOn := r.longPoll(ctx, ps, id)
		// The outcome moved the peer's schedule, earlier after a failure.
		r.poke()
		if !goOn {
			return
		}
	}
}

// longPoll sends one long poll of ps and records its answer, unless a newer
// answer overtook it while it waited. It reports whether the next long poll
// follows.
func (r *Refresher) longPoll(ctx context.Context, ps *peerState, id uint64) bool {
	r.mu.Lock()
	tag, tagged, answers := ps.etag, ps.etagBundle, ps.answers
	if tag == "" {
		// The last 200 came without an ETag: there is nothing to wait on.
		ps.push = pushUnknown
		if ps.poller == id {
			ps.poller = 0
		}
		r.mu.Unlock()
		return false
	}
	r.mu.Unlock()

	// The request goes out without ps.busy: it may be held for the whole
	// wait, and a scheduled fetch or Refresh must not wait that long.
	req, err := r.prepare(ctx, ps.peer, tag, tagged, r.wait)
	var a Answer
	if err == nil {
		a, err = FetchConditional(ctx, ps.peer, req.opts, req.cond)
	}
	if err != nil && ctx.Err() != nil {
		return false // Run is stopping: not the peer's fault
	}

	ps.busy.Lock()
	defer ps.busy.Unlock()
	now := r.clock()
	r.mu.Lock()
	overtaken, removed := ps.answers != answers, ps.removed
	r.mu.Unlock()
	if removed {
		return false // SetPeers dropped the peer: store nothing of it
	}
	if overtaken {
		// A scheduled fetch or Refresh recorded a 200 while this request
		// waited, and its answer may be the newer one: storing this one
		// could put an older bundle back. Ask again, with its tag.
		return true
	}
	res := result{stored: req.stored, storeRead: req.storeRead, err: err}
	if err == nil {
		// Read again: the store may have changed during the wait.
		stored, readErr := r.stored(ctx, ps.peer.TrustDomain)
		if readErr != nil {
			r.warnUnreadable(ps.peer.TrustDomain, readErr)
		}
		res = r.apply(ctx, ps.peer.TrustDomain, stored, readErr == nil, a)
		if res.err != nil && ctx.Err() != nil {
			return false
		}
	}
	goOn, _ := r.record(ps, now, res, id)
	return goOn
}
