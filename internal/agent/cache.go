package agent

import (
	"crypto/x509"
	"sort"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Cache holds what the agent serves: its trust domain's roots, the federated
// bundles, the entries it was given and an SVID for each. It is safe for
// concurrent use.
type Cache struct {
	clock func() time.Time

	mu        sync.Mutex
	td        spiffeid.TrustDomain
	roots     []*x509.Certificate
	bootstrap []*x509.Certificate
	federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	entries   map[string]*entryState
	changed   chan struct{} // closed at the next change
	wake      chan struct{} // tells Run that entries changed
}

type entryState struct {
	entry    *pb.Entry
	svid     *x509svid.SVID
	next     time.Time // when to renew, or retry after a failure
	failures int
}

func newCache(clock func() time.Time) *Cache {
	return &Cache{
		clock:     clock,
		federated: map[spiffeid.TrustDomain]*x509bundle.Bundle{},
		entries:   map[string]*entryState{},
		changed:   make(chan struct{}),
		wake:      make(chan struct{}, 1),
	}
}

// notify wakes every waiter; call with mu held.
func (c *Cache) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of SVIDs or bundles.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Cache) entriesChanged() <-chan struct{} { return c.wake }

func (c *Cache) setBootstrapRoots(roots []*x509.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bootstrap = roots
}

func (c *Cache) setTrustDomain(td spiffeid.TrustDomain, roots []*x509.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.td, c.roots = td, roots
	c.notify()
}

func (c *Cache) setFederated(fed map[spiffeid.TrustDomain]*x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.federated = fed
	c.notify()
}

// localSource verifies this trust domain's SVIDs: the roots the server sent,
// or before that the bootstrap bundle (for the leaf's own trust domain).
func (c *Cache) localSource(chain []*x509.Certificate) x509bundle.Source {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.td.IsZero() && len(c.roots) > 0 {
		return x509bundle.FromX509Authorities(c.td, c.roots)
	}
	td := c.td
	if td.IsZero() && len(chain) > 0 {
		if id, err := x509svid.IDFromCert(chain[0]); err == nil {
			td = id.TrustDomain()
		}
	}
	if td.IsZero() {
		return x509bundle.NewSet()
	}
	return x509bundle.FromX509Authorities(td, c.bootstrap)
}

// setEntries reconciles the entries with a snapshot: new entries are due at
// once, removed ones are dropped with their SVIDs, and an entry whose SPIFFE
// ID or DNS names changed gets a new SVID.
func (c *Cache) setEntries(entries []*pb.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	for _, e := range entries {
		seen[e.GetId()] = true
		st, ok := c.entries[e.GetId()]
		if !ok {
			c.entries[e.GetId()] = &entryState{entry: e}
			continue
		}
		if st.entry.GetSpiffeId() != e.GetSpiffeId() || !sameStrings(st.entry.GetDnsNames(), e.GetDnsNames()) {
			st.svid, st.next, st.failures = nil, time.Time{}, 0
		}
		st.entry = e
	}
	for id := range c.entries {
		if !seen[id] {
			delete(c.entries, id)
		}
	}
	c.notify()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// due returns the entries to renew now, in a stable order.
func (c *Cache) due(now time.Time) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id, st := range c.entries {
		if !now.Before(st.next) { // a new entry's zero time is always due
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// nextDue is the earliest renewal or retry time (zero if none).
func (c *Cache) nextDue() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t time.Time
	for _, st := range c.entries {
		if t.IsZero() || st.next.Before(t) {
			t = st.next
		}
	}
	return t
}

func (c *Cache) setSVID(id string, svid *x509svid.SVID, next time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.entries[id]
	if !ok {
		return // the entry was deleted meanwhile
	}
	st.svid, st.next, st.failures = svid, next, 0
	c.notify()
}

// failed schedules a retry with exponential backoff (1s, 2s, 4s … max).
func (c *Cache) failed(id string, now time.Time, max time.Duration, _ error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.entries[id]
	if !ok {
		return
	}
	st.failures++
	st.next = now.Add(backoff(st.failures, max))
}

func backoff(failures int, max time.Duration) time.Duration {
	d := time.Second
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Selector is a property of a workload, e.g. unix:uid:1000.
type Selector = attest.Selector

// X509SVIDs returns the unexpired SVIDs of the entries whose selectors are
// all among sel. An expired SVID is never returned.
func (c *Cache) X509SVIDs(sel []Selector) []workloadapi.Identity {
	have := map[Selector]bool{}
	for _, s := range sel {
		have[s] = true
	}
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.entries))
	for id := range c.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []workloadapi.Identity
	for _, id := range ids {
		st := c.entries[id]
		if st.svid == nil || now.After(st.svid.Certificates[0].NotAfter) || len(st.entry.GetSelectors()) == 0 {
			continue
		}
		match := true
		for _, s := range st.entry.GetSelectors() {
			if !have[Selector{Type: s.GetType(), Value: s.GetValue()}] {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		ident := workloadapi.Identity{SVID: st.svid}
		for _, name := range st.entry.GetFederatesWith() {
			if td, err := spiffeid.TrustDomainFromString(name); err == nil {
				ident.FederatesWith = append(ident.FederatesWith, td)
			}
		}
		out = append(out, ident)
	}
	return out
}

// Bundles returns this trust domain's bundle and the federated ones.
func (c *Cache) Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var local *x509bundle.Bundle
	if !c.td.IsZero() {
		local = x509bundle.FromX509Authorities(c.td, c.roots)
	}
	tds := make([]spiffeid.TrustDomain, 0, len(c.federated))
	for td := range c.federated {
		tds = append(tds, td)
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Name() < tds[j].Name() })
	fed := make([]*x509bundle.Bundle, 0, len(tds))
	for _, td := range tds {
		fed = append(fed, c.federated[td])
	}
	return local, fed
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The cache is what the Workload API serves from.
var _ workloadapi.Source = (*Cache)(nil)
