// Package fetcher keeps the bundles of foreign trust domains current: it
// fetches each from its SPIFFE bundle endpoint (SPIFFE Federation §5, both
// profiles), on the schedule its refresh hint asks for, and stores what
// changed. A fetch that fails, or brings a bundle that cannot be trusted,
// changes nothing: the last good bundle stays in the store.
//
// An https_spiffe endpoint is authenticated with the stored bundle of its
// SPIFFE ID's trust domain, and with nothing else; the first such bundle
// comes from an operator (`meshfed bundle set`), later ones from fetches.
//
// # Push
//
// A fetch is conditional when it can be: it sends If-None-Match with the
// ETag of the peer's last good answer, as long as the store still holds the
// bundle that answer carried, and a 304 Not Modified counts as a success
// that stores nothing (the last good bundle stays; no OnChange).
//
// While Run runs, a successful fetch whose answer carried an ETag starts a
// long poll of that peer: If-None-Match plus Prefer: wait=30 (RFC 7240;
// Config.LongPollWait), with a timeout of that wait plus Config.Timeout.
// meshfed's bundle endpoint holds it until its bundle changes, then answers
// with the new bundle at once, which is checked and stored exactly as a
// scheduled fetch's is, and OnChange fires (the server pushes it to its
// agents); or it answers 304 when the wait is over. Either way the next long
// poll follows at once, but never sooner than a second after the previous
// one began. So a change reaches this side within a round trip, whatever the
// refresh hint. Long polling goes on while the endpoint's answers say
// Preference-Applied: wait; it stops on an error (the schedule, with its
// backoff, takes over, and the next successful fetch starts it again), and
// for MaxRefresh when the endpoint answers 304 at once without
// Preference-Applied, as an endpoint does that does not hold requests. An
// endpoint that sends no ETag (SPIRE's) is never long-polled: it is fetched
// on schedule only, as the specification describes.
//
// The schedule runs alongside: a long poll's answer counts as a fetch, so a
// peer that pushes is rarely due. A scheduled fetch and a long poll of one
// peer may be in flight together, but only one of them stores at a time,
// and a long poll's answer that a newer answer overtook (a fetch recorded a
// new bundle while the long poll waited) is dropped, not stored over it.
// Run owns the long polls and waits for them all before it returns.
//
// The package never follows a redirect, never reads more than
// bundle.MaxBytes of an answer, never reuses a connection across fetches,
// never holds more than one long poll per peer, never merges the bundles of
// two trust domains, and never logs a bundle's body: only counts, sequence
// numbers and certificate fingerprints.
package fetcher

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Store is where the Refresher reads the last good bundles and writes new
// ones. The server's store adapts to it; it must be safe for concurrent use.
// When a read fails, only the fetches that need the stored bundle as trust
// (https_spiffe) fail; any other fetch stores what it got without comparing,
// so that a stored bundle that can no longer be read is replaced instead of
// blocking every refresh.
type Store interface {
	// FederatedBundle returns the stored bundle of td, or (nil, nil) when
	// none is stored.
	FederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	// SetFederatedBundle stores b as the bundle of b.TrustDomain().
	SetFederatedBundle(ctx context.Context, b *spiffebundle.Bundle) error
}

// Config describes a Refresher. Zero durations take the defaults.
type Config struct {
	// Peers are the foreign trust domains to fetch, each at most once.
	Peers []Peer
	// Store holds the last good bundles; required.
	Store Store
	// RootCAs verify https_web endpoints; nil means the system's roots.
	RootCAs *x509.CertPool
	// Clock defaults to time.Now. It drives the schedule and decides
	// whether an endpoint's certificate is valid.
	Clock pki.Clock
	// Logger defaults to discarding everything.
	Logger *slog.Logger
	// MinRefresh and MaxRefresh bound the wait between two fetches of a
	// peer (DefaultMinRefresh, DefaultMaxRefresh). MinRefresh is also the
	// first wait after a failure.
	MinRefresh, MaxRefresh time.Duration
	// Timeout bounds one fetch (DefaultTimeout).
	Timeout time.Duration
	// DefaultRefreshHint applies to a bundle without spiffe_refresh_hint
	// (DefaultRefreshHint).
	DefaultRefreshHint time.Duration
	// LongPollWait is how long a long poll asks the endpoint to hold it
	// (Prefer: wait; DefaultLongPollWait), in whole seconds. Its timeout is
	// LongPollWait + Timeout. meshfed's endpoint holds one for at most a
	// minute.
	LongPollWait time.Duration
	// OnChange, if set, is called with a peer's trust domain after a bundle
	// that differs from the stored one was stored, so that the caller can
	// push it at once. It runs on the goroutine that fetched (a pass of
	// RefreshDue, Refresh's caller, or the peer's long poll), while nothing
	// else stores that peer's bundle, so it should return quickly.
	OnChange func(spiffeid.TrustDomain)
}

// DefaultLongPollWait is the wait a long poll asks for when
// Config.LongPollWait is zero.
const DefaultLongPollWait = 30 * time.Second

// longPollSpacing is the least time between the starts of two long polls of
// a peer. An endpoint that answers at once while claiming to have waited, or
// that changes its bundle every moment, so costs four requests a second, not
// a loop; and a second change within it still arrives within it (a rotation
// that publishes and retires in quick steps). It is on the real clock, as
// Run's timer is.
const longPollSpacing = 250 * time.Millisecond

// maxParallelFetches bounds the fetches one pass runs at once, so that a
// pass over many unreachable peers takes a bounded multiple of Timeout
// without opening a connection to every peer at the same moment.
const maxParallelFetches = 4

// Refresher fetches the bundles of its peers on schedule. Make one with New;
// call Run once, or drive it with RefreshDue; SetPeers changes the peers
// while it runs. Its methods are safe for concurrent use.
type Refresher struct {
	store    Store
	rootCAs  atomic.Pointer[x509.CertPool] // nil: the system's roots
	clock    pki.Clock
	log      *slog.Logger
	timeout  time.Duration
	sched    schedule
	onChange func(spiffeid.TrustDomain)
	wait     time.Duration // Config.LongPollWait
	spacing  time.Duration // longPollSpacing; tests shorten it

	// peers and byTD are guarded by mu; SetPeers replaces them, so a pass
	// works on a copy (peerList).
	peers []*peerState // in configuration order
	byTD  map[spiffeid.TrustDomain]*peerState
	wake  chan struct{} // a schedule changed outside a pass; Run looks again
	ran   atomic.Bool

	polls        sync.WaitGroup // the long polls; Run waits for them
	pollsRunning atomic.Int64   // long-poll goroutines alive (for tests)
	pollsStarted atomic.Int64   // long-poll goroutines ever started (for tests)

	setMu sync.Mutex // serializes SetPeers

	mu sync.Mutex // guards the fields of every peerState marked so, and:
	// runCtx is Run's context while Run runs, nil otherwise: long polls
	// start only then, and end with it.
	runCtx  context.Context
	pollers uint64 // the last long poll's id
}

type peerState struct {
	peer Peer
	// busy is held while an answer of the peer is checked and stored, so
	// that one store happens at a time. A scheduled fetch (or Refresh)
	// holds it from reading the store to recording the outcome; a long
	// poll, which may wait a minute, takes it only once its answer came.
	busy sync.Mutex

	// Guarded by Refresher.mu.
	st          state
	lastSuccess time.Time
	lastErr     error
	checked     *spiffebundle.Bundle // the bundle whose CA lifetimes were last checked
	etag        string               // ETag of the last good 200; empty if it had none
	etagBundle  *spiffebundle.Bundle // the bundle that 200 carried
	answers     uint64               // 200s recorded; a long poll that saw it change was overtaken
	push        pushState
	pushOffAt   time.Time          // when push became pushOff
	poller      uint64             // id of the running long poll; 0 when none runs
	stopPoll    context.CancelFunc // ends the running long poll's request
	// removed is set by SetPeers when the peer leaves the configuration:
	// nothing of it is stored from then on. Set with busy and mu held.
	removed bool
}

// New checks cfg and fills in the defaults. It fetches nothing.
func New(cfg Config) (*Refresher, error) {
	if cfg.Store == nil {
		return nil, errors.New("fetcher: a store is required")
	}
	r := &Refresher{
		store:    cfg.Store,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		timeout:  cfg.Timeout,
		onChange: cfg.OnChange,
		wait:     cfg.LongPollWait,
		spacing:  longPollSpacing,
		sched:    schedule{min: cfg.MinRefresh, max: cfg.MaxRefresh, defaultHint: cfg.DefaultRefreshHint},
		byTD:     make(map[spiffeid.TrustDomain]*peerState, len(cfg.Peers)),
		wake:     make(chan struct{}, 1),
	}
	if r.clock == nil {
		r.clock = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MinRefresh", &r.sched.min, DefaultMinRefresh},
		{"MaxRefresh", &r.sched.max, DefaultMaxRefresh},
		{"DefaultRefreshHint", &r.sched.defaultHint, DefaultRefreshHint},
		{"Timeout", &r.timeout, DefaultTimeout},
		{"LongPollWait", &r.wait, DefaultLongPollWait},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("fetcher: %s is negative (%s)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if r.wait%time.Second != 0 {
		return nil, fmt.Errorf("fetcher: LongPollWait %s is not a whole number of seconds, which is what Prefer: wait counts", r.wait)
	}
	if r.sched.min > r.sched.max {
		return nil, fmt.Errorf("fetcher: MinRefresh %s is longer than MaxRefresh %s", r.sched.min, r.sched.max)
	}
	if err := checkPeers(cfg.Peers); err != nil {
		return nil, err
	}
	r.rootCAs.Store(cfg.RootCAs)
	for _, p := range cfg.Peers {
		ps := &peerState{peer: p}
		r.peers = append(r.peers, ps)
		r.byTD[p.TrustDomain] = ps
	}
	return r, nil
}

func checkPeers(peers []Peer) error {
	seen := map[spiffeid.TrustDomain]bool{}
	for _, p := range peers {
		if err := p.Validate(); err != nil {
			return err
		}
		if seen[p.TrustDomain] {
			return fmt.Errorf("fetcher: %s: configured twice; give one bundle endpoint per trust domain", p.TrustDomain.Name())
		}
		seen[p.TrustDomain] = true
	}
	return nil
}

// SetPeers replaces the peers and the roots of https_web endpoints, as a
// restart with that configuration would, without one: a peer that is new,
// or whose endpoint changed (URL, profile or endpoint SPIFFE ID), is fetched
// at once; one that is unchanged keeps its schedule and long poll; one that
// left is no longer fetched, and its long poll ends. Bundles already stored
// stay (`meshfed bundle delete` removes one). When SetPeers returns, nothing
// more of a peer that left will be stored, so a delete that follows sticks.
// It reports the trust domains added, changed and removed.
func (r *Refresher) SetPeers(peers []Peer, rootCAs *x509.CertPool) (added, changed, removed []spiffeid.TrustDomain, err error) {
	if err := checkPeers(peers); err != nil {
		return nil, nil, nil, err
	}
	r.rootCAs.Store(rootCAs)
	r.setMu.Lock()
	defer r.setMu.Unlock()
	r.mu.Lock()
	old := r.byTD
	next := make([]*peerState, 0, len(peers))
	byTD := make(map[spiffeid.TrustDomain]*peerState, len(peers))
	var gone []*peerState
	for _, p := range peers {
		ps, ok := old[p.TrustDomain]
		switch {
		case !ok:
			ps = &peerState{peer: p}
			added = append(added, p.TrustDomain)
		case ps.peer != p:
			gone = append(gone, ps)
			ps = &peerState{peer: p}
			changed = append(changed, p.TrustDomain)
		}
		next = append(next, ps)
		byTD[p.TrustDomain] = ps
	}
	for _, ps := range r.peers {
		if _, ok := byTD[ps.peer.TrustDomain]; !ok {
			gone = append(gone, ps)
			removed = append(removed, ps.peer.TrustDomain)
		}
	}
	for _, ps := range gone {
		if ps.stopPoll != nil {
			ps.stopPoll()
		}
	}
	r.mu.Unlock()
	// Wait for a fetch of each peer that left (or whose endpoint changed)
	// to finish, then mark it, so that no later answer of it is stored;
	// only then can a fetch of the new configuration of its trust domain
	// begin, so that two never store that trust domain at once.
	for _, ps := range gone {
		ps.busy.Lock()
		r.mu.Lock()
		ps.removed = true
		r.mu.Unlock()
		ps.busy.Unlock()
	}
	r.mu.Lock()
	r.peers, r.byTD = next, byTD
	r.mu.Unlock()
	r.poke()
	return added, changed, removed, nil
}

// peerList is a copy of the peers, for a pass.
func (r *Refresher) peerList() []*peerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.peers)
}

// gone reports whether SetPeers dropped ps. The caller holds ps.busy.
func (r *Refresher) gone(ps *peerState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ps.removed
}

// Run fetches every peer at once, then each again when it is due, waiting
// on a real timer in between, and long-polls the peers whose endpoints
// allow it (see the package doc), until ctx is done; then it waits for the
// long polls to end and returns nil. It may be called only once.
func (r *Refresher) Run(ctx context.Context) error {
	if !r.ran.CompareAndSwap(false, true) {
		return errors.New("fetcher: Run called twice; make a new Refresher")
	}
	r.mu.Lock()
	r.runCtx = ctx
	r.mu.Unlock()
	defer func() {
		// No long poll starts after this, so Wait sees every one.
		r.mu.Lock()
		r.runCtx = nil
		r.mu.Unlock()
		r.polls.Wait()
	}()
	for {
		next := r.RefreshDue(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var (
			timer *time.Timer
			fire  <-chan time.Time // nil, never firing, when there are no peers
		)
		if !next.IsZero() {
			timer = time.NewTimer(max(next.Sub(r.clock()), 0))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case <-fire:
		case <-r.wake:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// RefreshDue fetches, at r's clock, every peer that is due, at most
// maxParallelFetches at a time, and returns when the next one is due (the
// zero time if there are no peers). Failures are recorded, logged and shown
// by Status; they are not returned.
func (r *Refresher) RefreshDue(ctx context.Context) time.Time {
	now := r.clock()
	sem := make(chan struct{}, maxParallelFetches)
	var wg sync.WaitGroup
	for _, ps := range r.peerList() {
		if !r.isDue(now, ps) {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ps.busy.Lock()
			defer ps.busy.Unlock()
			// Refresh may have fetched it while this pass waited.
			if r.isDue(now, ps) {
				_ = r.attempt(ctx, ps)
			}
		})
	}
	wg.Wait()
	return r.nextDue()
}

// Refresh fetches the bundle of td now, whatever the schedule, and returns
// what went wrong, if anything. It is for an operator's command; the
// schedule starts again from this attempt.
func (r *Refresher) Refresh(ctx context.Context, td spiffeid.TrustDomain) error {
	r.mu.Lock()
	ps, ok := r.byTD[td]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("fetcher: %q is not a configured federation peer", td.Name())
	}
	ps.busy.Lock()
	err := r.attempt(ctx, ps)
	ps.busy.Unlock()
	r.poke()
	return err
}

// poke tells Run that a schedule changed outside its passes.
func (r *Refresher) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// PeerStatus is what Status reports about one peer.
type PeerStatus struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	Profile     Profile
	EndpointID  spiffeid.ID // https_spiffe only
	LastAttempt time.Time   // zero: not yet tried
	LastSuccess time.Time   // zero: no success yet
	LastError   string      // empty when the last attempt succeeded
	Failures    int         // failed attempts since the last success
	NextRefresh time.Time   // zero: on the next pass
	// Push says that the peer's endpoint holds long polls (the last answer
	// to one said Preference-Applied) and that one is outstanding: a change
	// of its bundle arrives at once, whatever NextRefresh says.
	Push bool

	// The last good bundle, as stored; all zero when none is.
	Sequence        *uint64       // spiffe_sequence, if the bundle has one
	RefreshHint     time.Duration // spiffe_refresh_hint; zero if none
	RefreshInterval time.Duration // the wait the schedule uses after a success
	X509Authorities int
	JWTAuthorities  int
	EarliestExpiry  time.Time // first NotAfter of the X.509 authorities
}

// Status reports every peer, in configuration order.
func (r *Refresher) Status() []PeerStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PeerStatus, 0, len(r.peers))
	for _, ps := range r.peers {
		s := PeerStatus{
			TrustDomain: ps.peer.TrustDomain,
			URL:         ps.peer.URL,
			Profile:     ps.peer.Profile,
			EndpointID:  ps.peer.EndpointID,
			LastAttempt: ps.st.lastAttempt,
			LastSuccess: ps.lastSuccess,
			Failures:    ps.st.failures,
			NextRefresh: r.sched.dueAt(ps.st),
			Push:        ps.push == pushOn && ps.poller != 0,
		}
		if ps.lastErr != nil {
			s.LastError = ps.lastErr.Error()
		}
		if b := ps.st.bundle; b != nil {
			if seq, ok := b.SequenceNumber(); ok {
				s.Sequence = &seq
			}
			s.RefreshHint, _ = b.RefreshHint()
			s.RefreshInterval = r.sched.interval(b)
			s.X509Authorities = len(b.X509Authorities())
			s.JWTAuthorities = len(b.JWTAuthorities())
			s.EarliestExpiry = earliestExpiry(b)
		}
		out = append(out, s)
	}
	return out
}

func (r *Refresher) isDue(now time.Time, ps *peerState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sched.shouldRefresh(now, ps.st)
}

func (r *Refresher) nextDue() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for i, ps := range r.peers {
		if t := r.sched.dueAt(ps.st); i == 0 || t.Before(next) {
			next = t
		}
	}
	return next
}

// attempt fetches one peer, on schedule or for Refresh, and records the
// outcome. The caller holds ps.busy, from reading the store to recording.
func (r *Refresher) attempt(ctx context.Context, ps *peerState) error {
	if r.gone(ps) {
		return fmt.Errorf("fetcher: %q is no longer a configured federation peer", ps.peer.TrustDomain.Name())
	}
	now := r.clock()
	r.mu.Lock()
	tag, tagged := ps.etag, ps.etagBundle
	r.mu.Unlock()
	req, err := r.prepare(ctx, ps.peer, tag, tagged, 0)
	res := result{stored: req.stored, storeRead: req.storeRead, err: err}
	if err == nil {
		var a Answer
		if a, err = FetchConditional(ctx, ps.peer, req.opts, req.cond); err != nil {
			res.err = err
		} else {
			res = r.apply(ctx, ps.peer.TrustDomain, req.stored, req.storeRead, a)
		}
	}
	if res.err != nil && ctx.Err() != nil {
		// Shutting down (or the operator gave up): not the peer's fault.
		return res.err
	}
	_, err = r.record(ps, now, res, 0)
	return err
}

// record records the outcome of a fetch of ps at now, logs it, and calls
// OnChange if a new bundle was stored. poller is the id of the long poll
// that fetched, or 0 for a scheduled fetch or Refresh; after a long poll,
// goOn says whether the next one follows (pushAfter), and after any other
// successful fetch the long poll starts if it should (startLongPollLocked).
// The caller holds ps.busy.
func (r *Refresher) record(ps *peerState, now time.Time, res result, poller uint64) (goOn bool, err error) {
	td := ps.peer.TrustDomain
	r.mu.Lock()
	wasFailing := ps.st.failures
	ps.st.lastAttempt = now
	if res.storeRead {
		ps.st.bundle = res.stored
	}
	if res.err != nil {
		ps.st.failures++
		ps.lastErr = res.err
	} else {
		ps.st.failures = 0
		ps.lastErr = nil
		ps.lastSuccess = now
		if !res.answer.NotModified {
			// A 304 leaves the tag as it was: the answer it names still is
			// the endpoint's.
			ps.etag, ps.etagBundle = res.answer.ETag, res.answer.Bundle
			ps.answers++
		}
	}
	wasPush := ps.push
	if poller != 0 {
		ps.push, goOn = pushAfter(ps.push, res.answer, res.err)
		if ps.push == pushOff {
			ps.pushOffAt = now
		}
		if !goOn && ps.poller == poller {
			ps.poller = 0
		}
	} else if res.err == nil {
		// Before OnChange, so that whoever it tells sees the long poll
		// decided.
		r.startLongPollLocked(ps, now)
	}
	push := ps.push
	st := ps.st
	var shortLived []*x509.Certificate
	if st.bundle != nil && !st.bundle.Equal(ps.checked) {
		ps.checked = st.bundle
		shortLived = r.sched.shortLived(st.bundle)
	}
	r.mu.Unlock()

	next := r.sched.dueAt(st)
	interval := r.sched.interval(st.bundle)
	for _, c := range shortLived {
		r.log.Warn("fetcher: a CA of a federated trust domain lives less than three refresh intervals; two failed fetches could miss its successor",
			"federated_trust_domain", td.Name(), "authority", fingerprint(c),
			"lifetime", c.NotAfter.Sub(c.NotBefore).String(), "refresh_interval", interval.String())
	}
	if res.err != nil {
		r.log.Warn("fetcher: fetching a federated bundle failed; keeping the last good one",
			"federated_trust_domain", td.Name(), "error", res.err.Error(),
			"failures", st.failures, "next_attempt", next.UTC().Format(time.RFC3339))
		if wasPush == pushOn {
			r.log.Info("fetcher: stopped long polling a federated bundle endpoint; fetching it on schedule until a fetch succeeds",
				"federated_trust_domain", td.Name())
		}
		return goOn, res.err
	}
	if wasFailing > 0 {
		r.log.Info("fetcher: fetching a federated bundle works again",
			"federated_trust_domain", td.Name(), "failed_attempts", wasFailing)
	}
	switch {
	case push == pushOn && wasPush != pushOn:
		r.log.Info("fetcher: the federated bundle endpoint holds long polls; a change of its bundle arrives at once",
			"federated_trust_domain", td.Name(), "wait", res.answer.AppliedWait.String())
	case push == pushOff && wasPush != pushOff:
		r.log.Info("fetcher: the federated bundle endpoint answers long polls at once; fetching it on schedule",
			"federated_trust_domain", td.Name(), "long_poll_again", now.Add(r.sched.max).UTC().Format(time.RFC3339))
	}
	if res.changed {
		b := st.bundle
		attrs := []any{"federated_trust_domain", td.Name(),
			"x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities())}
		if seq, ok := b.SequenceNumber(); ok {
			attrs = append(attrs, "sequence", seq)
		}
		attrs = append(attrs, "next_refresh", next.UTC().Format(time.RFC3339))
		r.log.Info("fetcher: federated bundle updated", attrs...)
		if r.onChange != nil {
			r.onChange(td)
		}
	}
	return goOn, nil
}

// result is the outcome of one fetch of a peer.
type result struct {
	stored    *spiffebundle.Bundle // the last good bundle after the attempt
	storeRead bool                 // stored is what the store holds (nil: nothing)
	changed   bool                 // stored was just written
	answer    Answer               // what the endpoint said; zero after an error
	err       error
}

// request is a fetch of a peer, ready to send.
type request struct {
	stored    *spiffebundle.Bundle // the stored bundle of the peer's trust domain
	storeRead bool                 // stored is what the store holds (nil: nothing)
	opts      FetchOptions
	cond      Conditions
}

// prepare reads what a fetch of peer needs from the store: the stored
// bundle, to compare the answer with, and the trust for an https_spiffe
// endpoint. The fetch is conditional on tag, the ETag of the last good
// answer, when the store still holds tagged, the bundle that answer carried;
// and then it asks the endpoint to wait if wait is set.
func (r *Refresher) prepare(ctx context.Context, peer Peer, tag string, tagged *spiffebundle.Bundle, wait time.Duration) (request, error) {
	td := peer.TrustDomain
	endpointTD := peer.EndpointID.TrustDomain() // zero for https_web
	stored, readErr := r.stored(ctx, td)
	if readErr != nil {
		if endpointTD == td {
			// Self-serving https_spiffe: the stored bundle is the trust.
			return request{}, readErr
		}
		// The stored bundle is only compared with the fetched one: fetch
		// and store anyway, so that a stored bundle the store can no longer
		// read is replaced rather than blocking every refresh.
		r.warnUnreadable(td, readErr)
	}
	req := request{
		stored:    stored,
		storeRead: readErr == nil,
		opts:      FetchOptions{RootCAs: r.rootCAs.Load(), Timeout: r.timeout, Clock: r.clock},
	}
	if peer.Profile == ProfileHTTPSSPIFFE {
		// Read now, not cached: an operator's `meshfed bundle set`, or a
		// fetch of the endpoint's own trust domain, counts from the next
		// attempt (SPIFFE Federation §5.2.2.4: the latest bundle).
		trust := stored
		if endpointTD != td {
			var err error
			if trust, err = r.stored(ctx, endpointTD); err != nil {
				return req, err
			}
		}
		req.opts.Bundles = storedSource{td: endpointTD, bundle: trust}
	}
	if tag != "" && tagged != nil && req.storeRead && stored.Equal(tagged) {
		// A 304 keeps the stored bundle, so only the bundle the tag names
		// may be kept that way. After `meshfed bundle set`, the next fetch
		// asks for the endpoint's bundle in full, and stores it over the
		// operator's (Federation §4.2).
		req.cond = Conditions{ETag: tag, Wait: wait}
	}
	return req, nil
}

func (r *Refresher) warnUnreadable(td spiffeid.TrustDomain, err error) {
	r.log.Warn("fetcher: cannot read the stored bundle; fetching and storing the peer's anyway",
		"federated_trust_domain", td.Name(), "error", err.Error())
}

// apply stores the bundle of a 200 answer if it differs from stored, the
// bundle the store held (when storeRead). A 304 stores nothing: the
// endpoint's bundle is still the one its tag names, which the store held
// when the request left (prepare).
func (r *Refresher) apply(ctx context.Context, td spiffeid.TrustDomain, stored *spiffebundle.Bundle, storeRead bool, a Answer) result {
	res := result{stored: stored, storeRead: storeRead, answer: a}
	if a.NotModified {
		return res
	}
	fetched := a.Bundle
	if storeRead && fetched.Equal(stored) {
		// Same content: no write, no change for the server to push.
		return res
	}
	if seq, ok := fetched.SequenceNumber(); ok && stored != nil {
		if old, ok := stored.SequenceNumber(); ok && seq < old {
			// A lower spiffe_sequence breaks the spec's "monotonically
			// increasing" (Trust Domain and Bundle §4.1.1), but it is
			// stored anyway: the bundle is authenticated by TLS, not by
			// the number, so whoever can serve it could as well send a
			// higher one, and refusing would freeze this side on keys the
			// peer has dropped (revoked, perhaps) after it restored a
			// backup or was rebuilt. It also replaces a bundle an operator
			// set by hand, as Federation §4.2 says it should.
			r.log.Warn("fetcher: the fetched bundle has a lower spiffe_sequence than the stored one; storing it anyway, since the peer's endpoint serves it",
				"federated_trust_domain", td.Name(), "sequence", seq, "stored_sequence", old)
		}
	}
	if err := r.store.SetFederatedBundle(ctx, fetched); err != nil {
		return result{stored: stored, storeRead: storeRead, err: fmt.Errorf("fetcher: %s: storing the fetched bundle: %w", td.Name(), err)}
	}
	res.stored, res.storeRead, res.changed = fetched, true, true
	return res
}

// stored reads the bundle of td from the store; nil if none is stored.
func (r *Refresher) stored(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	b, err := r.store.FederatedBundle(ctx, td)
	if err != nil {
		return nil, fmt.Errorf("fetcher: %s: reading the stored bundle: %w", td.Name(), err)
	}
	if b != nil && b.TrustDomain() != td {
		return nil, fmt.Errorf("fetcher: %s: the store returned the bundle of %s", td.Name(), b.TrustDomain().Name())
	}
	return b, nil
}

// storedSource is the x509bundle.Source of one stored bundle, which may be
// missing.
type storedSource struct {
	td     spiffeid.TrustDomain
	bundle *spiffebundle.Bundle
}

func (s storedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td || s.bundle == nil {
		return nil, fmt.Errorf("no bundle of %s is stored", td.Name())
	}
	return s.bundle.X509Bundle(), nil
}
