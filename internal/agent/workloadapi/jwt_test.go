package workloadapi_test

import (
	"crypto"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
)

func (d *domain) jwtBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(d.td, map[string]crypto.PublicKey{d.kid: d.jwtKey.Public()})
}

// jwtToken signs a JWT-SVID for id with d's JWT key, as a server would.
func (d *domain) jwtToken(t *testing.T, id spiffeid.ID, aud []string, exp time.Time) string {
	t.Helper()
	return testjwt.Sign(t, jose.ES256, d.jwtKey, d.kid, "JWT", jwt.Claims{
		Subject: id.String(), Audience: aud, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now()),
	})
}

func (d *domain) jwtSVID(t *testing.T, id spiffeid.ID, aud []string, exp time.Time) *jwtsvid.SVID {
	t.Helper()
	svid, err := jwtsvid.ParseInsecure(d.jwtToken(t, id, aud, exp), aud)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func jwtIDs(svids []*jwtsvid.SVID) []string {
	var out []string
	for _, s := range svids {
		out = append(out, s.ID.String())
	}
	return out
}

func TestFetchJWTSVID(t *testing.T) {
	w := newWorld(t)
	path := serve(t, workloadapi.Config{Source: w.src})
	c := newClient(t, path)
	aud := "spiffe://west.example/api"

	// The default identity, validating with east's JWT key.
	svid, err := c.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: aud, ExtraAudiences: []string{"reports"}})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != w.workload.ID || !slices.Equal(svid.Audience, []string{aud, "reports"}) {
		t.Fatalf("JWT-SVID for %s, aud %q", svid.ID, svid.Audience)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), w.east.jwtBundle(), []string{"reports"}); err != nil {
		t.Fatalf("the JWT-SVID does not validate with east's JWT bundle: %v", err)
	}

	// All identities, the default first; or the one asked for.
	all, err := c.FetchJWTSVIDs(t.Context(), jwtsvid.Params{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := jwtIDs(all), []string{"spiffe://east.example/ns/default/sa/reviews", "spiffe://east.example/by-path"}; !slices.Equal(got, want) {
		t.Fatalf("JWT-SVIDs for %q, want %q", got, want)
	}
	one, err := c.FetchJWTSVIDs(t.Context(), jwtsvid.Params{Audience: aud, Subject: w.byPath.ID})
	if err != nil {
		t.Fatal(err)
	}
	if got := jwtIDs(one); !slices.Equal(got, []string{"spiffe://east.example/by-path"}) {
		t.Fatalf("JWT-SVIDs for %s: %q", w.byPath.ID, got)
	}
	// Another workload's identity, or one nobody has, is refused.
	for _, id := range []spiffeid.ID{w.other.ID, spiffeid.RequireFromString("spiffe://east.example/nobody")} {
		_, err = c.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: aud, Subject: id})
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	}

	rc := rawClient(t, path)
	for _, tc := range []struct {
		name string
		req  *workload.JWTSVIDRequest
		msg  string
	}{
		{"no audience", &workload.JWTSVIDRequest{}, "audience: give 1 to 16 values, not 0"},
		{"17 audiences", &workload.JWTSVIDRequest{Audience: slices.Repeat([]string{"a"}, 17)}, "audience: give 1 to 16 values, not 17"},
		{"empty audience", &workload.JWTSVIDRequest{Audience: []string{"a", ""}}, "audience 2 is empty or longer than 2048 bytes"},
		{"long audience", &workload.JWTSVIDRequest{Audience: []string{strings.Repeat("a", 2049)}}, "audience 1 is empty or longer than 2048 bytes"},
		{"bad spiffe_id", &workload.JWTSVIDRequest{Audience: []string{"a"}, SpiffeId: "east.example/x"}, "spiffe_id: scheme is missing or invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rc.FetchJWTSVID(withHeader(t.Context()), tc.req)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
}

func TestFetchJWTSVIDFailures(t *testing.T) {
	t.Run("server unreachable", func(t *testing.T) {
		w := newWorld(t)
		w.src.signJWT = func(spiffeid.ID, []string) (*jwtsvid.SVID, error) {
			return nil, errors.New("agent: the server signed no JWT-SVID: connection refused")
		}
		_, err := newClient(t, serve(t, workloadapi.Config{Source: w.src})).FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: "a"})
		wantStatus(t, err, codes.Unavailable, "could not get a JWT-SVID: agent: the server signed no JWT-SVID: connection refused; retry")
	})
	t.Run("expired SVIDs are not sent", func(t *testing.T) {
		w := newWorld(t)
		w.src.signJWT = func(id spiffeid.ID, aud []string) (*jwtsvid.SVID, error) {
			return w.east.jwtSVID(t, id, aud, time.Now().Add(time.Minute)), nil
		}
		later := time.Now().Add(2 * time.Minute)
		c := newClient(t, serve(t, workloadapi.Config{Source: w.src, Clock: func() time.Time { return later }}))
		_, err := c.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: "a"})
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	})
}

func TestFetchJWTBundles(t *testing.T) {
	w := newWorld(t)
	path := serve(t, workloadapi.Config{Source: w.src})

	set, err := newClient(t, path).FetchJWTBundles(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range set.Bundles() {
		got = append(got, b.TrustDomain().Name())
	}
	slices.Sort(got)
	if want := []string{"east.example", "west.example"}; !slices.Equal(got, want) {
		t.Fatalf("JWT bundles of %q, want %q (north is another workload's federation)", got, want)
	}
	for _, d := range []*domain{w.east, w.west} {
		b, err := set.GetJWTBundleForTrustDomain(d.td)
		if err != nil {
			t.Fatal(err)
		}
		if !b.Equal(d.jwtBundle()) {
			t.Errorf("JWT bundle of %s is not its key", d.td)
		}
	}

	// West rotates its JWT key: the open stream gets the new one.
	stream, err := rawClient(t, path).FetchJWTBundles(withHeader(t.Context()), &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	newWest := newDomain(t, west)
	w.src.update(func(f *fakeSource) { f.jwtFederated[0] = newWest.jwtBundle() })
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwtbundle.Parse(west, resp.Bundles["spiffe://west.example"])
	if err != nil || !b.Equal(newWest.jwtBundle()) {
		t.Fatalf("west's JWT bundle after its rotation: %v", err)
	}

	t.Run("no identity", func(t *testing.T) {
		w := newWorld(t)
		w.src.entries = w.src.entries[1:2] // only the other uid's
		_, err := newClient(t, serve(t, workloadapi.Config{Source: w.src})).FetchJWTBundles(t.Context())
		wantStatus(t, err, codes.PermissionDenied, "no identity issued")
	})
	t.Run("no bundle yet", func(t *testing.T) {
		w := newWorld(t)
		w.src.jwtLocal = nil
		_, err := newClient(t, serve(t, workloadapi.Config{Source: w.src})).FetchJWTBundles(t.Context())
		wantStatus(t, err, codes.Unavailable, "the agent has no trust bundle yet; retry")
	})
}

func TestValidateJWTSVID(t *testing.T) {
	w := newWorld(t)
	path := serve(t, workloadapi.Config{Source: w.src})
	rc := rawClient(t, path)
	const aud = "spiffe://east.example/reports"
	exp := time.Now().Add(5 * time.Minute)
	reviews := spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")

	good := w.east.jwtToken(t, reviews, []string{aud}, exp)
	resp, err := rc.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: aud, Svid: good})
	if err != nil {
		t.Fatal(err)
	}
	claims := resp.GetClaims().AsMap()
	if resp.GetSpiffeId() != reviews.String() || claims["sub"] != reviews.String() || claims["aud"] != aud || claims["exp"] != float64(exp.Unix()) {
		t.Fatalf("validated %s with claims %v", resp.GetSpiffeId(), claims)
	}
	// go-spiffe's client, and a federated domain's token.
	fromWest := w.west.jwtToken(t, spiffeid.RequireFromString("spiffe://west.example/api"), []string{aud}, exp)
	if svid, err := newClient(t, path).ValidateJWTSVID(t.Context(), fromWest, aud); err != nil || svid.ID.String() != "spiffe://west.example/api" {
		t.Fatalf("west's JWT-SVID: %v, %v", svid, err)
	}

	stranger := genKey(t)
	forged := (&domain{td: east, jwtKey: stranger, kid: w.east.kid}).jwtToken(t, reviews, []string{aud}, exp)
	for _, tc := range []struct {
		name, audience, token, msg string
	}{
		{"wrong audience", "spiffe://east.example/other", good, `jwtsvid: expected audience in ["spiffe://east.example/other"] (audience=["spiffe://east.example/reports"])`},
		{"expired", aud, w.east.jwtToken(t, reviews, []string{aud}, time.Now().Add(-2*time.Minute)), "jwtsvid: token has expired"},
		{"unknown key", aud, (&domain{td: east, jwtKey: stranger, kid: "k9"}).jwtToken(t, reviews, []string{aud}, exp), `jwtsvid: no JWT authority "k9" found for trust domain "east.example"`},
		{"forged with a known kid", aud, forged, "jwtsvid: unable to get claims from token: go-jose/go-jose: error in cryptographic primitive"},
		{"a domain the workload does not federate with", aud, w.north.jwtToken(t, spiffeid.RequireFromString("spiffe://north.example/x"), []string{aud}, exp),
			`jwtsvid: no bundle found for trust domain "north.example"`},
		{"not a JWT", aud, "a.b.c", "jwtsvid: unable to parse JWT token"},
		{"no audience", "", good, "audience and svid are required"},
		{"no token", aud, "", "audience and svid are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rc.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: tc.audience, Svid: tc.token})
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
}

// go-spiffe's JWTSource: JWT-SVIDs on demand, bundles kept up to date.
func TestJWTSource(t *testing.T) {
	w := newWorld(t)
	path := serve(t, workloadapi.Config{Source: w.src})
	src, err := spiffewl.NewJWTSource(t.Context(), spiffewl.WithClientOptions(spiffewl.WithAddr("unix://"+path)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: "reports"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"reports"}); err != nil || svid.ID != w.workload.ID {
		t.Fatalf("JWT-SVID %s against the source's own bundles: %v", svid.ID, err)
	}
	if _, err := src.GetJWTBundleForTrustDomain(west); err != nil {
		t.Errorf("west: %v", err)
	}
	if _, err := src.GetJWTBundleForTrustDomain(north); err == nil {
		t.Error("north's JWT bundle reached a workload that does not federate with it")
	}
}
