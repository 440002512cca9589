package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/sds"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxCachedJWTSVIDs bounds the JWT-SVIDs kept: workloads choose audiences
// freely, and each (entry, audience) is kept until half its life.
const maxCachedJWTSVIDs = 4096

// Cache holds what the agent serves: its trust domain's roots and JWT keys,
// the federated bundles, the entries it was given, an X.509-SVID for each,
// and the JWT-SVIDs signed for them recently. It is safe for concurrent use.
type Cache struct {
	clock func() time.Time
	// fetchJWT gets a JWT-SVID for an entry (Agent.JWTSVID); set by New.
	fetchJWT func(ctx context.Context, entryID string, audience []string) (*jwtsvid.SVID, error)
	// spread turns a failed renewal's backoff into the wait before the next
	// try (Agent.spread); set by New, none if nil.
	spread func(time.Duration) time.Duration

	mu           sync.Mutex
	td           spiffeid.TrustDomain
	roots        []*x509.Certificate
	localJWT     *jwtbundle.Bundle // nil until the server sent a bundle
	bootstrap    []*x509.Certificate
	federated    map[spiffeid.TrustDomain]*x509bundle.Bundle
	federatedJWT map[spiffeid.TrustDomain]*jwtbundle.Bundle
	// meshWide are the federated trust domains every workload gets (the
	// other members of this domain's VirtualMesh), entries or not.
	meshWide []spiffeid.TrustDomain
	entries  map[string]*entryState
	sidecar  *x509svid.SVID // sidecar mode: the one identity, served to every caller
	jwts     map[jwtKey]cachedJWT
	changed  chan struct{} // closed at the next change
	wake     chan struct{} // tells Run that entries changed
	policies policyState   // for the proxies (policies.go)
}

// jwtKey names a cached JWT-SVID: an entry and the audience, in order.
type jwtKey struct{ entry, audience string }

type cachedJWT struct {
	svid    *jwtsvid.SVID
	refresh time.Time // half its life: a newer one is fetched from then on
}

func newJWTKey(entryID string, audience []string) jwtKey {
	return jwtKey{entryID, fmt.Sprintf("%q", audience)}
}

type entryState struct {
	entry    *pb.Entry
	svid     *x509svid.SVID
	next     time.Time // when to renew, or retry after a failure
	failures int
}

func newCache(clock func() time.Time) *Cache {
	return &Cache{
		clock:        clock,
		federated:    map[spiffeid.TrustDomain]*x509bundle.Bundle{},
		federatedJWT: map[spiffeid.TrustDomain]*jwtbundle.Bundle{},
		entries:      map[string]*entryState{},
		jwts:         map[jwtKey]cachedJWT{},
		changed:      make(chan struct{}),
		wake:         make(chan struct{}, 1),
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

// setLocalBundle installs the bundle of this trust domain the server sent:
// its roots and its JWT keys.
func (c *Cache) setLocalBundle(b *spiffebundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.td, c.roots, c.localJWT = b.TrustDomain(), b.X509Authorities(), b.JWTBundle()
	c.notify()
}

// setFederated installs the federated bundles; those of meshWide go to
// every workload.
func (c *Cache) setFederated(fed map[spiffeid.TrustDomain]*spiffebundle.Bundle, meshWide []spiffeid.TrustDomain) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.federated = make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(fed))
	c.federatedJWT = make(map[spiffeid.TrustDomain]*jwtbundle.Bundle, len(fed))
	for td, b := range fed {
		c.federated[td] = b.X509Bundle()
		c.federatedJWT[td] = b.JWTBundle()
	}
	c.meshWide = meshWide
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
		switch {
		case st.entry.GetSpiffeId() != e.GetSpiffeId():
			// Another identity: the old one is not served meanwhile.
			st.svid, st.next, st.failures = nil, time.Time{}, 0
		case !sameStrings(st.entry.GetDnsNames(), e.GetDnsNames()) || st.entry.GetX509SvidTtlSeconds() != e.GetX509SvidTtlSeconds():
			// The same identity, signed anew now ('meshfed entry
			// update'); the SVID held is served until the new one comes.
			st.next, st.failures = time.Time{}, 0
		}
		st.entry = e
	}
	for id := range c.entries {
		if !seen[id] {
			delete(c.entries, id)
		}
	}
	for k, j := range c.jwts {
		if st, ok := c.entries[k.entry]; !ok || st.entry.GetSpiffeId() != j.svid.ID.String() {
			delete(c.jwts, k)
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

// renewOtherRoots brings the renewal of every SVID that chains to a root
// other than root (by subject key ID) forward to at, and wakes Run. It
// returns how many it moved.
func (c *Cache) renewOtherRoots(root []byte, at time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, st := range c.entries {
		if st.svid != nil && otherRoot(st.svid.Certificates, root) && st.next.After(at) {
			st.next = at
			n++
		}
	}
	if n > 0 {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return n
}

// otherRoot reports whether an SVID chain (leaf first, root left out) ends
// at a root other than the one with subject key ID root, by the top
// certificate's authority key ID; a chain without one is never "other".
func otherRoot(chain []*x509.Certificate, root []byte) bool {
	id := chain[len(chain)-1].AuthorityKeyId
	return len(id) > 0 && !bytes.Equal(id, root)
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
	wait := backoff(st.failures, max)
	if c.spread != nil {
		wait = c.spread(wait)
	}
	st.next = now.Add(wait)
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

// matching returns the entries whose selectors (at least one) are all among
// sel, ordered by entry ID; call with mu held.
func (c *Cache) matching(sel []Selector) []*entryState {
	have := map[Selector]bool{}
	for _, s := range sel {
		have[s] = true
	}
	ids := make([]string, 0, len(c.entries))
	for id := range c.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*entryState
	for _, id := range ids {
		st := c.entries[id]
		match := len(st.entry.GetSelectors()) > 0
		for _, s := range st.entry.GetSelectors() {
			if !have[Selector{Type: s.GetType(), Value: s.GetValue()}] {
				match = false
				break
			}
		}
		if match {
			out = append(out, st)
		}
	}
	return out
}

// setSidecar installs the sidecar's own SVID, which every local caller gets
// (sidecar mode has no entries: the pod is the workload).
func (c *Cache) setSidecar(svid *x509svid.SVID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sidecar = svid
	c.notify()
}

// X509SVIDs returns the unexpired SVIDs of the entries whose selectors are
// all among sel (in sidecar mode, the sidecar's own SVID, with every
// federated trust domain). An expired SVID is never returned.
func (c *Cache) X509SVIDs(sel []Selector) []workloadapi.Identity {
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []workloadapi.Identity
	if c.sidecar != nil {
		if now.After(c.sidecar.Certificates[0].NotAfter) {
			return nil
		}
		ident := workloadapi.Identity{SVID: c.sidecar}
		for td := range c.federated {
			ident.FederatesWith = append(ident.FederatesWith, td)
		}
		sort.Slice(ident.FederatesWith, func(i, j int) bool { return ident.FederatesWith[i].Name() < ident.FederatesWith[j].Name() })
		return []workloadapi.Identity{ident}
	}
	for _, st := range c.matching(sel) {
		if st.svid == nil || now.After(st.svid.Certificates[0].NotAfter) {
			continue
		}
		ident := workloadapi.Identity{SVID: st.svid, FederatesWith: slices.Clone(c.meshWide)}
		for _, name := range st.entry.GetFederatesWith() {
			if td, err := spiffeid.TrustDomainFromString(name); err == nil && !slices.Contains(ident.FederatesWith, td) {
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

// JWTBundles returns this trust domain's JWT keys (nil until the server sent
// its bundle) and those of the federated trust domains.
func (c *Cache) JWTBundles() (*jwtbundle.Bundle, []*jwtbundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tds := make([]spiffeid.TrustDomain, 0, len(c.federatedJWT))
	for td := range c.federatedJWT {
		tds = append(tds, td)
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Name() < tds[j].Name() })
	fed := make([]*jwtbundle.Bundle, 0, len(tds))
	for _, td := range tds {
		fed = append(fed, c.federatedJWT[td])
	}
	return c.localJWT, fed
}

// localJWTBundle is this trust domain's JWT keys, nil before the server sent
// them.
func (c *Cache) localJWTBundle() *jwtbundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.localJWT
}

// JWTSVIDs returns a JWT-SVID for audience for each entry whose selectors
// are all among sel (only those for id, unless id is zero), in the order of
// X509SVIDs. They come from the agent (Agent.JWTSVID): cached, or signed by
// the server now. An entry that cannot get one fails the call.
func (c *Cache) JWTSVIDs(ctx context.Context, sel []Selector, id spiffeid.ID, audience []string) ([]*jwtsvid.SVID, error) {
	c.mu.Lock()
	var ids []string
	for _, st := range c.matching(sel) {
		if id.IsZero() || st.entry.GetSpiffeId() == id.String() {
			ids = append(ids, st.entry.GetId())
		}
	}
	fetch := c.fetchJWT
	c.mu.Unlock()
	if len(ids) > 0 && fetch == nil {
		return nil, errors.New("agent: this cache has no server to sign JWT-SVIDs")
	}
	var out []*jwtsvid.SVID
	for _, e := range ids {
		svid, err := fetch(ctx, e, audience)
		if err != nil {
			return nil, err
		}
		out = append(out, svid)
	}
	return out, nil
}

// entrySPIFFEID is the SPIFFE ID of an entry the agent serves.
func (c *Cache) entrySPIFFEID(entryID string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.entries[entryID]
	if !ok {
		return "", false
	}
	return st.entry.GetSpiffeId(), true
}

// cachedJWTSVID returns the JWT-SVID kept for the entry and audience if it
// is not yet half through its life.
func (c *Cache) cachedJWTSVID(entryID string, audience []string, now time.Time) *jwtsvid.SVID {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.jwts[newJWTKey(entryID, audience)]
	if !ok || !now.Before(j.refresh) || !now.Before(j.svid.Expiry) {
		return nil
	}
	return j.svid
}

// keepJWTSVID keeps a JWT-SVID fetched at now until half its remaining life,
// unless its entry is gone or changed meanwhile, or the cache is full of
// unexpired ones.
func (c *Cache) keepJWTSVID(entryID string, audience []string, svid *jwtsvid.SVID, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.entries[entryID]; !ok || st.entry.GetSpiffeId() != svid.ID.String() {
		return
	}
	if len(c.jwts) >= maxCachedJWTSVIDs {
		for k, j := range c.jwts {
			if !now.Before(j.refresh) {
				delete(c.jwts, k)
			}
		}
		if len(c.jwts) >= maxCachedJWTSVIDs {
			return
		}
	}
	c.jwts[newJWTKey(entryID, audience)] = cachedJWT{svid: svid, refresh: now.Add(svid.Expiry.Sub(now) / 2)}
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

// And what Envoy's SDS serves from.
var _ sds.Source = (*Cache)(nil)
