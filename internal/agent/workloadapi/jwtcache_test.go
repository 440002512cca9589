package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// cacheServer runs a server as serve does and returns it too; its cache's
// clock is time.Now shifted by what *skew holds.
func cacheServer(t *testing.T, cfg workloadapi.Config, skew *atomic.Int64) (*workloadapi.Server, workload.SpiffeWorkloadAPIClient) {
	t.Helper()
	cfg.SocketPath = filepath.Join(t.TempDir(), "agent.sock")
	srv := startServer(t, cfg, func(srv *workloadapi.Server) {
		if skew != nil {
			srv.SetJWTCacheClock(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
		}
	})
	return srv, rawClient(t, cfg.SocketPath)
}

func validate(t *testing.T, rc workload.SpiffeWorkloadAPIClient, token, aud string) (*workload.ValidateJWTSVIDResponse, error) {
	t.Helper()
	return rc.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: aud, Svid: token})
}

// wantStats fails unless the server's cache keeps entries tokens and has
// answered hits calls.
func wantStats(t *testing.T, srv *workloadapi.Server, entries int, hits uint64) {
	t.Helper()
	if n, h := srv.JWTCacheStats(); n != entries || h != hits {
		t.Fatalf("cache: %d entries, %d hits; want %d, %d", n, h, entries, hits)
	}
}

// switchAttestor attests every caller as having the selectors it holds.
type switchAttestor struct {
	*attest.Attestor
	sel atomic.Pointer[[]attest.Selector]
}

func (a *switchAttestor) AttestPeer(context.Context) ([]attest.Selector, error) {
	return *a.sel.Load(), nil
}

func (a *switchAttestor) set(t *testing.T, selectors ...string) {
	t.Helper()
	var sel []attest.Selector
	for _, s := range selectors {
		p, err := attest.ParseSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		sel = append(sel, p)
	}
	a.sel.Store(&sel)
}

const cacheAud = "spiffe://east.example/reports"

var reviews = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")

func TestValidateJWTSVIDCacheHit(t *testing.T) {
	w := newWorld(t)
	srv, rc := cacheServer(t, workloadapi.Config{Source: w.src}, nil)
	good := w.east.jwtToken(t, reviews, []string{cacheAud, "other"}, time.Now().Add(5*time.Minute))

	first, err := validate(t, rc, good, cacheAud)
	if err != nil {
		t.Fatal(err)
	}
	wantStats(t, srv, 1, 0)
	second, err := validate(t, rc, good, cacheAud)
	if err != nil {
		t.Fatal(err)
	}
	wantStats(t, srv, 1, 1)
	if !proto.Equal(first, second) || second.GetSpiffeId() != reviews.String() {
		t.Fatalf("hit answered %v, the validation %v", second, first)
	}
	// The other audience of the token, on a hit.
	if _, err := validate(t, rc, good, "other"); err != nil {
		t.Fatal(err)
	}
	wantStats(t, srv, 1, 2)

	// Refusals on a hit are those of a validation, code and text: compare
	// with a server without a cache.
	_, uncached := cacheServer(t, workloadapi.Config{Source: w.src, JWTCacheSize: -1}, nil)
	_, err = validate(t, rc, good, "spiffe://east.example/elsewhere")
	wantStats(t, srv, 1, 3)
	_, want := validate(t, uncached, good, "spiffe://east.example/elsewhere")
	wantStatus(t, err, codes.InvalidArgument, `jwtsvid: expected audience in ["spiffe://east.example/elsewhere"] (audience=["spiffe://east.example/reports" "other"])`)
	if status.Convert(err).Message() != status.Convert(want).Message() {
		t.Fatalf("a hit says %v, a validation %v", err, want)
	}
}

// A hit checks exp and iat with the cache's clock, as jwtsvid does with
// time.Now, with its leeway of a minute; an expired token is forgotten.
func TestValidateJWTSVIDCacheClock(t *testing.T) {
	w := newWorld(t)
	var skew atomic.Int64
	srv, rc := cacheServer(t, workloadapi.Config{Source: w.src}, &skew)
	exp := time.Now().Add(5 * time.Minute)
	good := w.east.jwtToken(t, reviews, []string{cacheAud}, exp)
	if _, err := validate(t, rc, good, cacheAud); err != nil {
		t.Fatal(err)
	}
	wantStats(t, srv, 1, 0)

	for _, tc := range []struct {
		name string
		skew time.Duration
		err  error // nil: valid
	}{
		{"within the leeway after exp", 5*time.Minute + 30*time.Second, nil},
		{"issued in the future beyond the leeway", -2 * time.Minute, jwt.ErrIssuedInTheFuture},
		{"expired beyond the leeway", 7 * time.Minute, status.Error(codes.InvalidArgument, "jwtsvid: token has expired")},
	} {
		skew.Store(int64(tc.skew))
		_, err := validate(t, rc, good, cacheAud)
		if tc.err == nil && err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.err != nil {
			wantStatus(t, err, codes.InvalidArgument, status.Convert(tc.err).Message())
		}
	}
	// Three hits; the expired token was forgotten.
	wantStats(t, srv, 0, 3)
}

// A change of bundles ends what the cache knows; so does another key under
// the token's key ID, even if the Source does not signal it.
func TestValidateJWTSVIDCacheBundleChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(w *world)
		msg    string
	}{
		{"key removed", func(w *world) {
			w.src.update(func(f *fakeSource) { f.jwtLocal = jwtbundle.New(east) })
		}, `jwtsvid: no JWT authority "east.example-jwt" found for trust domain "east.example"`},
		{"key replaced without a signal", func(w *world) {
			w.src.mu.Lock()
			defer w.src.mu.Unlock()
			w.src.jwtLocal = jwtbundle.FromJWTAuthorities(east, map[string]crypto.PublicKey{w.east.kid: genKey(t).Public()})
		}, "jwtsvid: unable to get claims from token: go-jose/go-jose: error in cryptographic primitive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			srv, rc := cacheServer(t, workloadapi.Config{Source: w.src}, nil)
			good := w.east.jwtToken(t, reviews, []string{cacheAud}, time.Now().Add(5*time.Minute))
			for range 2 {
				if _, err := validate(t, rc, good, cacheAud); err != nil {
					t.Fatal(err)
				}
			}
			wantStats(t, srv, 1, 1)
			tc.change(w)
			_, err := validate(t, rc, good, cacheAud)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
			wantStats(t, srv, 1, 1) // a miss; the stale entry waits to be replaced or evicted
		})
	}
}

// A token is trusted on a hit only if its trust domain is trusted by this
// caller: the other uid's entry federates with north, the test's with west.
func TestValidateJWTSVIDCachePerCaller(t *testing.T) {
	w := newWorld(t)
	a, err := attest.New(attest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	as := &switchAttestor{Attestor: a}
	as.set(t, otherUID)
	srv, rc := cacheServer(t, workloadapi.Config{Source: w.src, Attestor: as}, nil)
	fromNorth := w.north.jwtToken(t, spiffeid.RequireFromString("spiffe://north.example/x"), []string{cacheAud}, time.Now().Add(5*time.Minute))
	for range 2 {
		if _, err := validate(t, rc, fromNorth, cacheAud); err != nil {
			t.Fatal(err)
		}
	}
	wantStats(t, srv, 1, 1)

	as.set(t, myUID)
	_, err = validate(t, rc, fromNorth, cacheAud)
	wantStatus(t, err, codes.InvalidArgument, `jwtsvid: no bundle found for trust domain "north.example"`)
	wantStats(t, srv, 1, 1)
}

// The cache keeps at most JWTCacheSize tokens, dropping the oldest; it keeps
// no failure and no token over 4 KiB; disabled, it keeps nothing and
// validation is unchanged.
func TestValidateJWTSVIDCacheBounds(t *testing.T) {
	w := newWorld(t)
	exp := time.Now().Add(5 * time.Minute)
	tokens := make([]string, 3)
	for i := range tokens {
		tokens[i] = w.east.jwtToken(t, spiffeid.RequireFromPath(east, "/w"+string(rune('0'+i))), []string{cacheAud}, exp)
	}

	t.Run("bound", func(t *testing.T) {
		srv, rc := cacheServer(t, workloadapi.Config{Source: w.src, JWTCacheSize: 2}, nil)
		for _, tok := range tokens {
			if _, err := validate(t, rc, tok, cacheAud); err != nil {
				t.Fatal(err)
			}
		}
		wantStats(t, srv, 2, 0)
		// The newest is kept, the oldest was dropped.
		for i, hits := range []uint64{1, 1} {
			if _, err := validate(t, rc, tokens[[]int{2, 0}[i]], cacheAud); err != nil {
				t.Fatal(err)
			}
			wantStats(t, srv, 2, hits)
		}
	})
	t.Run("failures and large tokens", func(t *testing.T) {
		srv, rc := cacheServer(t, workloadapi.Config{Source: w.src}, nil)
		forged := (&domain{td: east, jwtKey: genKey(t), kid: w.east.kid}).jwtToken(t, reviews, []string{cacheAud}, exp)
		for range 2 {
			_, err := validate(t, rc, forged, cacheAud)
			wantStatus(t, err, codes.InvalidArgument, "jwtsvid: unable to get claims from token: go-jose/go-jose: error in cryptographic primitive")
		}
		large := w.east.jwtToken(t, reviews, append([]string{cacheAud}, slices.Repeat([]string{string(make([]byte, 2000))}, 3)...), exp)
		if len(large) <= 4<<10 {
			t.Fatalf("the large token has %d bytes", len(large))
		}
		for range 2 {
			if _, err := validate(t, rc, large, cacheAud); err != nil {
				t.Fatal(err)
			}
		}
		wantStats(t, srv, 0, 0)
	})
	t.Run("disabled", func(t *testing.T) {
		srv, rc := cacheServer(t, workloadapi.Config{Source: w.src, JWTCacheSize: -1}, nil)
		for range 2 {
			resp, err := validate(t, rc, tokens[0], cacheAud)
			if err != nil || resp.GetSpiffeId() != "spiffe://east.example/w0" {
				t.Fatalf("validated %v: %v", resp, err)
			}
		}
		_, err := validate(t, rc, tokens[0], "spiffe://east.example/elsewhere")
		wantStatus(t, err, codes.InvalidArgument, `jwtsvid: expected audience in ["spiffe://east.example/elsewhere"] (audience=["spiffe://east.example/reports"])`)
		wantStats(t, srv, 0, 0)
	})
}

// A new stream after a rotation gets the new SVID and key, not the encoding
// kept of the old one.
func TestFetchX509SVIDAfterRotation(t *testing.T) {
	w := newWorld(t)
	rc := rawClient(t, serve(t, workloadapi.Config{Source: w.src}))
	fetch := func() *workload.X509SVID {
		t.Helper()
		ctx, cancel := context.WithCancel(withHeader(t.Context()))
		defer cancel()
		stream, err := rc.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetSvids()[0]
	}
	wantKey := func(got *workload.X509SVID, key crypto.Signer) {
		t.Helper()
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.GetX509SvidKey()) != string(der) {
			t.Fatal("the SVID's key is not the current one")
		}
	}
	wantKey(fetch(), w.workload.PrivateKey)
	wantKey(fetch(), w.workload.PrivateKey)

	next := w.east.svid(t, "/ns/default/sa/reviews", time.Hour)
	w.src.update(func(f *fakeSource) { f.entries[0].id.SVID = next })
	got := fetch()
	wantKey(got, next.PrivateKey)
	var chain []byte
	for _, c := range next.Certificates {
		chain = append(chain, c.Raw...)
	}
	if string(got.GetX509Svid()) != string(chain) {
		t.Fatal("the chain is not the new SVID's")
	}
}

// A token of a rarer form (here a header field besides alg, kid and typ) is
// validated by go-spiffe's jwtsvid, answered as any other, and not kept:
// only quick validations are.
func TestValidateJWTSVIDRareForm(t *testing.T) {
	w := newWorld(t)
	srv, rc := cacheServer(t, workloadapi.Config{Source: w.src}, nil)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: w.east.jwtKey, KeyID: w.east.kid}},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("cty", "json"))
	if err != nil {
		t.Fatal(err)
	}
	rare, err := jwt.Signed(sig).Claims(jwt.Claims{
		Subject: reviews.String(), Audience: []string{cacheAud}, Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour)), ID: "j-1",
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		resp, err := validate(t, rc, rare, cacheAud)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSpiffeId() != reviews.String() || resp.GetClaims().GetFields()["jti"].GetStringValue() != "j-1" {
			t.Fatalf("answered %v", resp)
		}
		wantStats(t, srv, 0, 0)
	}
	// A token of the common form is kept.
	if _, err := validate(t, rc, w.east.jwtToken(t, reviews, []string{cacheAud}, time.Now().Add(time.Hour)), cacheAud); err != nil {
		t.Fatal(err)
	}
	wantStats(t, srv, 1, 0)
}
