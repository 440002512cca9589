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
// The package never follows a redirect, never reads more than
// bundle.MaxBytes of an answer, never reuses a connection across fetches,
// never merges the bundles of two trust domains, and never logs a bundle's
// body: only counts, sequence numbers and certificate fingerprints.
package fetcher

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Store is where the Refresher reads the last good bundles and writes new
// ones. The server's store adapts to it. When a read fails, only the fetches
// that need the stored bundle as trust (https_spiffe) fail; any other fetch
// stores what it got without comparing, so that a stored bundle that can no
// longer be read is replaced instead of blocking every refresh.
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
	// OnChange, if set, is called with a peer's trust domain after a bundle
	// that differs from the stored one was stored, so that the caller can
	// push it at once. It runs on the goroutine that fetched, while that
	// peer is not fetched again, so it should return quickly.
	OnChange func(spiffeid.TrustDomain)
}

// maxParallelFetches bounds the fetches one pass runs at once, so that a
// pass over many unreachable peers takes a bounded multiple of Timeout
// without opening a connection to every peer at the same moment.
const maxParallelFetches = 4

// Refresher fetches the bundles of its peers on schedule. Make one with New;
// call Run once, or drive it with RefreshDue. Its methods are safe for
// concurrent use.
type Refresher struct {
	store    Store
	rootCAs  *x509.CertPool
	clock    pki.Clock
	log      *slog.Logger
	timeout  time.Duration
	sched    schedule
	onChange func(spiffeid.TrustDomain)

	peers []*peerState // in configuration order
	byTD  map[spiffeid.TrustDomain]*peerState
	wake  chan struct{} // Refresh changed a schedule; Run looks again
	ran   atomic.Bool

	mu sync.Mutex // guards the fields of every peerState marked so
}

type peerState struct {
	peer Peer
	busy sync.Mutex // held while the peer is fetched: one fetch at a time

	// Guarded by Refresher.mu.
	st          state
	lastSuccess time.Time
	lastErr     error
	checked     *spiffebundle.Bundle // the bundle whose CA lifetimes were last checked
}

// New checks cfg and fills in the defaults. It fetches nothing.
func New(cfg Config) (*Refresher, error) {
	if cfg.Store == nil {
		return nil, errors.New("fetcher: a store is required")
	}
	r := &Refresher{
		store:    cfg.Store,
		rootCAs:  cfg.RootCAs,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		timeout:  cfg.Timeout,
		onChange: cfg.OnChange,
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
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("fetcher: %s is negative (%s)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if r.sched.min > r.sched.max {
		return nil, fmt.Errorf("fetcher: MinRefresh %s is longer than MaxRefresh %s", r.sched.min, r.sched.max)
	}
	for _, p := range cfg.Peers {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if _, dup := r.byTD[p.TrustDomain]; dup {
			return nil, fmt.Errorf("fetcher: %s: configured twice; give one bundle endpoint per trust domain", p.TrustDomain.Name())
		}
		ps := &peerState{peer: p}
		r.peers = append(r.peers, ps)
		r.byTD[p.TrustDomain] = ps
	}
	return r, nil
}

// Run fetches every peer at once, then each again when it is due, waiting
// on a real timer in between, until ctx is done; then it returns nil. It may
// be called only once.
func (r *Refresher) Run(ctx context.Context) error {
	if !r.ran.CompareAndSwap(false, true) {
		return errors.New("fetcher: Run called twice; make a new Refresher")
	}
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
	for _, ps := range r.peers {
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
	ps, ok := r.byTD[td]
	if !ok {
		return fmt.Errorf("fetcher: %q is not a configured federation peer", td.Name())
	}
	ps.busy.Lock()
	err := r.attempt(ctx, ps)
	ps.busy.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return err
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

// attempt fetches one peer and records the outcome. The caller holds
// ps.busy.
func (r *Refresher) attempt(ctx context.Context, ps *peerState) error {
	now := r.clock()
	td := ps.peer.TrustDomain
	res := r.fetch(ctx, ps.peer)
	if res.err != nil && ctx.Err() != nil {
		// Shutting down (or the operator gave up): not the peer's fault.
		return res.err
	}

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
	}
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
		return res.err
	}
	if wasFailing > 0 {
		r.log.Info("fetcher: fetching a federated bundle works again",
			"federated_trust_domain", td.Name(), "failed_attempts", wasFailing)
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
	return nil
}

// result is the outcome of one fetch of a peer.
type result struct {
	stored    *spiffebundle.Bundle // the last good bundle after the attempt
	storeRead bool                 // stored is what the store holds (nil: nothing)
	changed   bool                 // stored was just written
	err       error
}

// fetch reads the stored bundle, fetches the peer's, and stores it if it
// differs.
func (r *Refresher) fetch(ctx context.Context, peer Peer) result {
	td := peer.TrustDomain
	endpointTD := peer.EndpointID.TrustDomain() // zero for https_web
	stored, readErr := r.stored(ctx, td)
	if readErr != nil {
		if endpointTD == td {
			// Self-serving https_spiffe: the stored bundle is the trust.
			return result{err: readErr}
		}
		// The stored bundle is only compared with the fetched one: fetch
		// and store anyway, so that a stored bundle the store can no longer
		// read is replaced rather than blocking every refresh.
		r.log.Warn("fetcher: cannot read the stored bundle; fetching and storing the peer's anyway",
			"federated_trust_domain", td.Name(), "error", readErr.Error())
	}
	res := result{stored: stored, storeRead: readErr == nil}
	opts := FetchOptions{RootCAs: r.rootCAs, Timeout: r.timeout, Clock: r.clock}
	if peer.Profile == ProfileHTTPSSPIFFE {
		// Read now, not cached: an operator's `meshfed bundle set`, or a
		// fetch of the endpoint's own trust domain, counts from the next
		// attempt (SPIFFE Federation §5.2.2.4: the latest bundle).
		trust := stored
		if endpointTD != td {
			var err error
			if trust, err = r.stored(ctx, endpointTD); err != nil {
				res.err = err
				return res
			}
		}
		opts.Bundles = storedSource{td: endpointTD, bundle: trust}
	}
	fetched, err := Fetch(ctx, peer, opts)
	if err != nil {
		res.err = err
		return res
	}
	if res.storeRead && fetched.Equal(stored) {
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
		res.err = fmt.Errorf("fetcher: %s: storing the fetched bundle: %w", td.Name(), err)
		return res
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
