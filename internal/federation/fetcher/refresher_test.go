package fetcher_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// harness is a Refresher with an injected clock, store and log.
type harness struct {
	r       *fetcher.Refresher
	clock   *clock
	store   *memStore
	logs    *logs
	mu      sync.Mutex
	changed []spiffeid.TrustDomain // OnChange calls
}

func newHarness(t testing.TB, store *memStore, cfg fetcher.Config) *harness {
	t.Helper()
	h := &harness{clock: newClock(), store: store, logs: &logs{}}
	cfg.Store = store
	cfg.Clock = h.clock.Now
	cfg.Logger = h.logs.logger()
	cfg.OnChange = func(td spiffeid.TrustDomain) {
		h.mu.Lock()
		h.changed = append(h.changed, td)
		h.mu.Unlock()
	}
	r, err := fetcher.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	return h
}

func (h *harness) changes() []spiffeid.TrustDomain {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]spiffeid.TrustDomain(nil), h.changed...)
}

// pass runs RefreshDue and checks when it says the next fetch is due.
func (h *harness) pass(t testing.TB, wantNext time.Time) {
	t.Helper()
	if next := h.r.RefreshDue(context.Background()); !next.Equal(wantNext) {
		t.Fatalf("at %s: next due %s, want %s", rfc3339(h.clock.Now()), rfc3339(next), rfc3339(wantNext))
	}
}

func checkLogs(t testing.TB, got []string, want ...string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("logs:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

// checkNoBody fails if a log line holds any certificate of the bundles in
// base64, as a bundle body would.
func checkNoBody(t testing.TB, lines []string, bs ...*spiffebundle.Bundle) {
	t.Helper()
	for _, line := range lines {
		if strings.Contains(line, `"x5c"`) || strings.Contains(line, `"keys"`) {
			t.Fatalf("log line holds bundle JSON: %s", line)
		}
		for _, b := range bs {
			for _, c := range b.X509Authorities() {
				if strings.Contains(line, base64.StdEncoding.EncodeToString(c.Raw)[:32]) {
					t.Fatalf("log line holds a certificate: %s", line)
				}
			}
		}
	}
}

// TestRefresherSPIFFE follows a self-serving https_spiffe peer through
// bootstrap, a rotation, a fetch of the same bundle, and a new hint, against
// the real meshfed bundle endpoint.
func TestRefresherSPIFFE(t *testing.T) {
	westCA := newCA(t, west, caTTL)
	v1 := westCA.bundle(t, 1, 2*time.Minute)
	next := newCA(t, west, caTTL) // the root west.example rotates to
	v2 := westCA.bundle(t, 2, 2*time.Minute, next.root)
	ep := spiffeEndpoint(t, west, westCA.svid(t, westServer), v2)

	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: westServer}
	h := newHarness(t, newStore(v1), fetcher.Config{Peers: []fetcher.Peer{peer}})
	var allLogs []string
	take := func() []string { l := h.logs.take(); allLogs = append(allLogs, l...); return l }

	// First pass: v2 replaces the operator's v1.
	h.pass(t, t0.Add(2*time.Minute))
	if got := h.store.get(west); !got.Equal(v2) {
		t.Fatalf("stored %v, want v2", got)
	}
	if got := h.changes(); !reflect.DeepEqual(got, []spiffeid.TrustDomain{west}) {
		t.Fatalf("OnChange calls %v, want [west.example]", got)
	}
	checkLogs(t, take(),
		"INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=2 jwt_authorities=1 sequence=2 next_refresh="+rfc3339(t0.Add(2*time.Minute)))

	// Not due yet: no request.
	h.clock.advance(time.Minute)
	h.pass(t, t0.Add(2*time.Minute))
	if got := ep.requests(); got != 1 {
		t.Fatalf("endpoint answered %d requests, want 1", got)
	}

	// Due: asked with the ETag of v2, the endpoint answers 304 Not
	// Modified; nothing is written.
	h.clock.advance(time.Minute)
	h.pass(t, t0.Add(4*time.Minute))
	if got := ep.srv.Requests(); got[http.StatusOK] != 1 || got[http.StatusNotModified] != 1 {
		t.Fatalf("endpoint answered %v, want one 200 and one 304", got)
	}
	if got := h.store.writeCount(); got != 1 {
		t.Fatalf("%d store writes, want 1", got)
	}
	if got := len(h.changes()); got != 1 {
		t.Fatalf("%d OnChange calls, want 1", got)
	}
	checkLogs(t, take())

	// The peer drops the old root and asks for 30 s refreshes. The fetch
	// is authenticated with v2, the bundle stored last.
	v3 := next.bundle(t, 3, 30*time.Second)
	ep.bundle.set(v3)
	h.clock.advance(2 * time.Minute)
	h.pass(t, t0.Add(4*time.Minute+30*time.Second))
	if got := h.store.get(west); !got.Equal(v3) {
		t.Fatalf("stored %v, want v3", got)
	}
	if got := len(h.changes()); got != 2 {
		t.Fatalf("%d OnChange calls, want 2", got)
	}
	take()

	seq := uint64(3)
	want := []fetcher.PeerStatus{{
		TrustDomain:     west,
		URL:             ep.url(),
		Profile:         fetcher.ProfileHTTPSSPIFFE,
		EndpointID:      westServer,
		LastAttempt:     t0.Add(4 * time.Minute),
		LastSuccess:     t0.Add(4 * time.Minute),
		NextRefresh:     t0.Add(4*time.Minute + 30*time.Second),
		Sequence:        &seq,
		RefreshHint:     30 * time.Second,
		RefreshInterval: 30 * time.Second,
		X509Authorities: 1,
		JWTAuthorities:  1,
		EarliestExpiry:  next.root.NotAfter,
	}}
	if got := h.r.Status(); !reflect.DeepEqual(got, want) {
		t.Fatalf("status:\n got %+v\nwant %+v", got, want)
	}
	checkNoBody(t, allLogs, v1, v2, v3)
}

// TestRefresherKeepsLastGood serves what must be refused, twice, then a
// good bundle: the stored bundle stays until then, the failures back off,
// and the error is reported exactly.
func TestRefresherKeepsLastGood(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	stored := westCA.bundle(t, 5, 5*time.Minute)
	fixed := westCA.bundle(t, 6, 5*time.Minute)
	jwtOnly := spiffebundle.FromJWTAuthorities(west, fixed.JWTAuthorities())
	jwtOnly.SetSequenceNumber(6)
	huge := append([]byte(`{"keys":[], "pad": "`), make([]byte, 1<<20)...)

	for _, tc := range []struct {
		name    string
		handler http.Handler
		wantErr string // %s: the URL
	}{
		{"no X.509 authority", serve(http.StatusOK, marshal(t, jwtOnly)),
			"fetcher: west.example: GET %s: the bundle holds no x509-svid authority, so it would authenticate no X.509-SVID of the trust domain"},
		{"malformed JSON", serve(http.StatusOK, []byte(`{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AAAA"]}]}`)),
			"fetcher: west.example: GET %s: bundle: spiffebundle: unable to parse JWKS: go-jose/go-jose: failed to unmarshal x5c field: x509: malformed certificate"},
		{"oversized", serve(http.StatusOK, huge),
			"fetcher: west.example: GET %s: the bundle is larger than 1048576 bytes"},
		{"status 500", serve(http.StatusInternalServerError, []byte("oops")),
			`fetcher: west.example: GET %s: the endpoint answered "500 Internal Server Error", not 200 OK`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var handler atomic.Pointer[http.Handler]
			handler.Store(&tc.handler)
			srv := webServer(t, webCA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*handler.Load()).ServeHTTP(w, r) }))
			peer := fetcher.Peer{TrustDomain: west, URL: srv.URL, Profile: fetcher.ProfileHTTPSWeb}
			h := newHarness(t, newStore(stored), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
			wantErr := fmt.Sprintf(tc.wantErr, srv.URL)

			// Two failures: 10 s, then 20 s.
			for i, wait := range []time.Duration{10 * time.Second, 20 * time.Second} {
				now := h.clock.Now()
				h.pass(t, now.Add(wait))
				if got := h.store.get(west); !got.Equal(stored) {
					t.Fatalf("failure %d: the stored bundle changed", i+1)
				}
				st := h.r.Status()[0]
				if st.LastError != wantErr || st.Failures != i+1 || !st.LastSuccess.IsZero() || !st.LastAttempt.Equal(now) {
					t.Fatalf("failure %d: status %+v\nwant error %s", i+1, st, wantErr)
				}
				if s, _ := stored.SequenceNumber(); *st.Sequence != s || st.X509Authorities != 1 {
					t.Fatalf("failure %d: status does not show the last good bundle: %+v", i+1, st)
				}
				lines := h.logs.take()
				checkLogs(t, lines, fmt.Sprintf("WARN fetcher: fetching a federated bundle failed; keeping the last good one federated_trust_domain=west.example error=%s failures=%d next_attempt=%s",
					wantErr, i+1, rfc3339(now.Add(wait))))
				checkNoBody(t, lines, stored, fixed)
				h.clock.advance(wait)
			}
			if got := h.store.writeCount(); got != 0 {
				t.Fatalf("%d store writes, want none", got)
			}
			if got := h.changes(); len(got) != 0 {
				t.Fatalf("OnChange called for %v", got)
			}

			// The endpoint is fixed: the next due pass stores the bundle.
			good := serve(http.StatusOK, marshal(t, fixed))
			handler.Store(&good)
			now := h.clock.Now()
			h.pass(t, now.Add(5*time.Minute))
			if got := h.store.get(west); !got.Equal(fixed) {
				t.Fatal("the fixed bundle was not stored")
			}
			if st := h.r.Status()[0]; st.LastError != "" || st.Failures != 0 || !st.LastSuccess.Equal(now) {
				t.Fatalf("status after success: %+v", st)
			}
			checkLogs(t, h.logs.take(),
				"INFO fetcher: fetching a federated bundle works again federated_trust_domain=west.example failed_attempts=2",
				"INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=1 jwt_authorities=1 sequence=6 next_refresh="+rfc3339(now.Add(5*time.Minute)))
		})
	}
}

// TestRefresherRefusesImpostor: an https_spiffe endpoint that presents
// another SPIFFE ID, or an SVID the stored bundle does not vouch for, is
// not believed.
func TestRefresherRefusesImpostor(t *testing.T) {
	westCA := newCA(t, west, caTTL)
	stored := westCA.bundle(t, 1, 0)
	forged := newCA(t, west, caTTL) // a west.example CA the stored bundle does not hold
	for _, tc := range []struct {
		name    string
		signer  *testCA
		id      spiffeid.ID
		wantErr string
	}{
		{
			name: "other SPIFFE ID", signer: westCA, id: spiffeid.RequireFromString("spiffe://west.example/web"),
			wantErr: "fetcher: west.example: GET %s: the endpoint presented the X.509-SVID of spiffe://west.example/web, not spiffe://west.example/meshfed/bundle-endpoint",
		},
		{
			name: "SVID of a forged CA", signer: forged, id: westServer,
			wantErr: "fetcher: west.example: GET %s: the endpoint's certificate is not an X.509-SVID the stored bundle of west.example vouches for: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority (possibly because of \"x509: ECDSA verification failure\" while trying to verify candidate authority certificate \"west.example test root\")",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The impostor serves a bundle of its own CA.
			ep := spiffeEndpoint(t, west, tc.signer.svid(t, tc.id), tc.signer.bundle(t, 2, 0))
			peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: westServer}
			h := newHarness(t, newStore(stored), fetcher.Config{Peers: []fetcher.Peer{peer}})
			err := h.r.Refresh(context.Background(), west)
			if want := fmt.Sprintf(tc.wantErr, ep.url()); errText(err) != want {
				t.Fatalf("error:\n got %v\nwant %s", err, want)
			}
			if got := h.store.get(west); !got.Equal(stored) || h.store.writeCount() != 0 {
				t.Fatal("the stored bundle changed")
			}
			if ep.requests() != 0 {
				t.Fatal("the request was sent to an endpoint that failed authentication")
			}
		})
	}
}

// TestRefresherBootstrap: an https_spiffe peer needs the bundle of its
// endpoint's trust domain in the store first, whether self-serving or not.
func TestRefresherBootstrap(t *testing.T) {
	westCA := newCA(t, west, caTTL)
	eastCA := newCA(t, east, caTTL)
	eastServer := spiffeid.RequireFromString("spiffe://east.example/bundle-server")
	served := westCA.bundle(t, 4, 0)
	for _, tc := range []struct {
		name       string
		endpointID spiffeid.ID
		signer     *testCA
		trust      *spiffebundle.Bundle // what the operator stores
		wantErr    string
	}{
		{"self-serving", westServer, westCA, westCA.bundle(t, 1, 0),
			`fetcher: west.example: cannot authenticate the bundle endpoint spiffe://west.example/meshfed/bundle-endpoint: no bundle of west.example is stored; get the bundle of west.example out of band and run "meshfed bundle set --trust-domain west.example --in BUNDLE.json" first`},
		{"served by east.example", eastServer, eastCA, eastCA.bundle(t, 1, 0),
			`fetcher: west.example: cannot authenticate the bundle endpoint spiffe://east.example/bundle-server: no bundle of east.example is stored; get the bundle of east.example out of band and run "meshfed bundle set --trust-domain east.example --in BUNDLE.json" first`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := spiffeEndpoint(t, west, tc.signer.svid(t, tc.endpointID), served)
			peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: tc.endpointID}
			store := newStore()
			h := newHarness(t, store, fetcher.Config{Peers: []fetcher.Peer{peer}})
			h.pass(t, t0.Add(10*time.Second))
			if st := h.r.Status()[0]; st.LastError != tc.wantErr {
				t.Fatalf("error:\n got %s\nwant %s", st.LastError, tc.wantErr)
			}
			if store.get(west) != nil {
				t.Fatal("a bundle was stored")
			}

			// The operator runs `meshfed bundle set`, then `refresh`.
			if err := store.SetFederatedBundle(context.Background(), tc.trust); err != nil {
				t.Fatal(err)
			}
			if err := h.r.Refresh(context.Background(), west); err != nil {
				t.Fatal(err)
			}
			if got := store.get(west); !got.Equal(served) {
				t.Fatalf("stored %v, want the served bundle", got)
			}
		})
	}
}

// TestRefresherLowerSequence: a bundle whose spiffe_sequence went down is
// stored, with a warning.
func TestRefresherLowerSequence(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	stored := westCA.bundle(t, 10, 0)
	served := westCA.bundle(t, 4, 0) // another JWT key, and a lower sequence
	ep := webEndpoint(t, west, webCA, served)
	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb}
	h := newHarness(t, newStore(stored), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
	h.pass(t, t0.Add(5*time.Minute))
	if got := h.store.get(west); !got.Equal(served) {
		t.Fatal("the bundle with the lower sequence was not stored")
	}
	checkLogs(t, h.logs.take(),
		"WARN fetcher: the fetched bundle has a lower spiffe_sequence than the stored one; storing it anyway, since the peer's endpoint serves it federated_trust_domain=west.example sequence=4 stored_sequence=10",
		"INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=1 jwt_authorities=1 sequence=4 next_refresh="+rfc3339(t0.Add(5*time.Minute)))
}

// TestRefresherExpiringAuthority: an authority that expires before the
// next regular fetch brings the fetch forward, and a CA that lives under
// three refresh intervals is warned about once per bundle change.
func TestRefresherExpiringAuthority(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	shortCA := caWithTTL(t, west, 3*time.Minute) // lives 3m30s with the backdating
	served := westCA.bundle(t, 1, 5*time.Minute, shortCA)
	ep := webEndpoint(t, west, webCA, served)
	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb}
	h := newHarness(t, newStore(), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})

	warning := "WARN fetcher: a CA of a federated trust domain lives less than three refresh intervals; two failed fetches could miss its successor federated_trust_domain=west.example authority=" +
		fingerprint(shortCA) + " lifetime=3m30s refresh_interval=5m0s"
	updated := func(seq int, next time.Time) string {
		return fmt.Sprintf("INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=2 jwt_authorities=1 sequence=%d next_refresh=%s", seq, rfc3339(next))
	}

	// 3m left: halfway, 90 s.
	h.pass(t, t0.Add(90*time.Second))
	checkLogs(t, h.logs.take(), warning, updated(1, t0.Add(90*time.Second)))

	// 90 s left: 45 s. Same bundle: no warning.
	h.clock.advance(90 * time.Second)
	h.pass(t, t0.Add(135*time.Second))
	checkLogs(t, h.logs.take())

	// A new bundle still holding the short-lived CA: warned again.
	ep.bundle.set(westCA.bundle(t, 2, 5*time.Minute, shortCA))
	h.clock.advance(45 * time.Second)
	h.pass(t, t0.Add(135*time.Second+22500*time.Millisecond))
	checkLogs(t, h.logs.take(), warning, updated(2, t0.Add(135*time.Second+22500*time.Millisecond)))

	// After it expired, the regular interval again.
	h.clock.set(t0.Add(4 * time.Minute))
	h.pass(t, t0.Add(9*time.Minute))
	if got := h.r.Status()[0].EarliestExpiry; !got.Equal(shortCA.NotAfter) {
		t.Fatalf("earliest expiry %s, want %s", got, shortCA.NotAfter)
	}
}

// TestRefresherStoreFails: a store that cannot be read blocks only what
// needs the stored bundle as trust; otherwise the peer's bundle is fetched
// and stored, so that an unreadable stored bundle gets replaced.
func TestRefresherStoreFails(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	eastCA := newCA(t, east, caTTL)
	served := westCA.bundle(t, 1, 0)
	eastServer := spiffeid.RequireFromString("spiffe://east.example/bundle-server")
	readWarning := "WARN fetcher: cannot read the stored bundle; fetching and storing the peer's anyway federated_trust_domain=west.example error=fetcher: west.example: reading the stored bundle: store: database is locked"
	for _, tc := range []struct {
		name     string
		endpoint func(t testing.TB) (*endpoint, fetcher.Peer)
		wantErr  string
		wantLogs []string
	}{
		{
			name: "https_web: fetched and stored",
			endpoint: func(t testing.TB) (*endpoint, fetcher.Peer) {
				ep := webEndpoint(t, west, webCA, served)
				return ep, fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb}
			},
			wantLogs: []string{readWarning, "INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=1 jwt_authorities=1 sequence=1 next_refresh=" + rfc3339(t0.Add(5*time.Minute))},
		},
		{
			name: "https_spiffe, self-serving: no trust",
			endpoint: func(t testing.TB) (*endpoint, fetcher.Peer) {
				ep := spiffeEndpoint(t, west, westCA.svid(t, westServer), served)
				return ep, fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: westServer}
			},
			wantErr: "fetcher: west.example: reading the stored bundle: store: database is locked",
		},
		{
			name: "https_spiffe, served by east.example: no trust",
			endpoint: func(t testing.TB) (*endpoint, fetcher.Peer) {
				ep := spiffeEndpoint(t, west, eastCA.svid(t, eastServer), served)
				return ep, fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: eastServer}
			},
			wantErr: "fetcher: east.example: reading the stored bundle: store: database is locked",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep, peer := tc.endpoint(t)
			store := newStore(eastCA.bundle(t, 1, 0))
			store.failReads(errStore)
			h := newHarness(t, store, fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
			if tc.wantErr != "" {
				h.pass(t, t0.Add(10*time.Second))
				if st := h.r.Status()[0]; st.LastError != tc.wantErr {
					t.Fatalf("error:\n got %s\nwant %s", st.LastError, tc.wantErr)
				}
				if ep.requests() != 0 || store.writeCount() != 0 {
					t.Fatal("fetched or stored without the trust bundle")
				}
				return
			}
			h.pass(t, t0.Add(5*time.Minute))
			if got := store.get(west); !got.Equal(served) {
				t.Fatalf("stored %v, want the served bundle", got)
			}
			checkLogs(t, h.logs.take(), tc.wantLogs...)
		})
	}
}

func TestRefreshUnknownPeer(t *testing.T) {
	h := newHarness(t, newStore(), fetcher.Config{})
	err := h.r.Refresh(context.Background(), east)
	if want := `fetcher: "east.example" is not a configured federation peer`; errText(err) != want {
		t.Fatalf("error:\n got %v\nwant %s", err, want)
	}
	if next := h.r.RefreshDue(context.Background()); !next.IsZero() {
		t.Fatalf("next due %s with no peers, want zero", next)
	}
}

// TestRefresherConcurrent runs passes, operator refreshes and status reads
// at once over several peers, for the race detector.
func TestRefresherConcurrent(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	var peers []fetcher.Peer
	var served []*spiffebundle.Bundle
	for i := range 5 {
		td := spiffeid.RequireTrustDomainFromString(fmt.Sprintf("peer%d.example", i))
		b := newCA(t, td, caTTL).bundle(t, 1, 0)
		ep := webEndpoint(t, td, webCA, b)
		peers = append(peers, fetcher.Peer{TrustDomain: td, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb})
		served = append(served, b)
	}
	h := newHarness(t, newStore(), fetcher.Config{Peers: peers, RootCAs: webCA.pool()})
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() { h.r.RefreshDue(context.Background()) })
		wg.Go(func() {
			if err := h.r.Refresh(context.Background(), p.TrustDomain); err != nil {
				t.Errorf("peer %d: %v", i, err)
			}
		})
		wg.Go(func() { h.r.Status() })
	}
	wg.Wait()
	for i, p := range peers {
		if got := h.store.get(p.TrustDomain); !got.Equal(served[i]) {
			t.Fatalf("%s: stored %v", p.TrustDomain, got)
		}
	}
	if got := len(h.changes()); got != len(peers) {
		t.Fatalf("%d OnChange calls, want %d: one per peer", got, len(peers))
	}
}

// TestRun: Run fetches at once, stops when its context is done, and runs
// only once.
func TestRun(t *testing.T) {
	westCA := newCA(t, west, caTTL)
	served := westCA.bundle(t, 2, 0)
	ep := spiffeEndpoint(t, west, westCA.svid(t, westServer), served)
	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: westServer}
	store := newStore(westCA.bundle(t, 1, 0))
	changed := make(chan spiffeid.TrustDomain, 1)
	r, err := fetcher.New(fetcher.Config{
		Peers:    []fetcher.Peer{peer},
		Store:    store,
		Clock:    func() time.Time { return t0 },
		OnChange: func(td spiffeid.TrustDomain) { changed <- td },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case td := <-changed:
		if td != west {
			t.Fatalf("OnChange(%s), want west.example", td)
		}
	case err := <-done:
		t.Fatalf("Run returned %v before fetching", err)
	}
	if got := store.get(west); !got.Equal(served) {
		t.Fatal("Run did not store the served bundle")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := r.Run(context.Background()); errText(err) != "fetcher: Run called twice; make a new Refresher" {
		t.Fatalf("second Run: %v", err)
	}
}

// fingerprint is how the package names a certificate in logs.
func fingerprint(c *x509.Certificate) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(c.Raw))
}
