package fetcher_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestFetchWeb fetches from https_web servers that misbehave in one way
// each, and checks the exact outcome.
func TestFetchWeb(t *testing.T) {
	webCA := newCA(t, east, caTTL) // signs the endpoint's Web PKI certificate
	westCA := newCA(t, west, caTTL)
	good := westCA.bundle(t, 7, time.Minute)
	goodJSON := marshal(t, good)
	// padded is goodJSON grown with trailing spaces to exactly MaxBytes.
	padded := append(bytes.Clone(goodJSON), bytes.Repeat([]byte(" "), bundle.MaxBytes-len(goodJSON))...)
	jwtOnly := spiffebundle.FromJWTAuthorities(west, good.JWTAuthorities())

	type fetchCase struct {
		name    string
		handler http.Handler
		url     func(base string) string // default: base
		rootCAs *testCA                  // default: webCA
		clock   time.Time                // default: t0
		timeout time.Duration
		want    *spiffebundle.Bundle
		wantErr string // %s: the URL
	}
	for _, tc := range []fetchCase{
		{name: "ok", handler: serve(http.StatusOK, goodJSON), want: good},
		{name: "exactly MaxBytes", handler: serve(http.StatusOK, padded), want: good},
		{
			name:    "one byte over MaxBytes",
			handler: serve(http.StatusOK, append(bytes.Clone(padded), ' ')),
			wantErr: "fetcher: west.example: GET %s: the bundle is larger than 1048576 bytes",
		},
		{
			name: "Content-Length over MaxBytes",
			handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(bundle.MaxBytes+1))
				w.WriteHeader(http.StatusOK)
			}),
			wantErr: "fetcher: west.example: GET %s: the bundle is larger than 1048576 bytes",
		},
		{
			name:    "status 503",
			handler: serve(http.StatusServiceUnavailable, []byte("bundle unavailable")),
			wantErr: `fetcher: west.example: GET %s: the endpoint answered "503 Service Unavailable", not 200 OK`,
		},
		{
			name:    "status 204",
			handler: serve(http.StatusNoContent, nil),
			wantErr: `fetcher: west.example: GET %s: the endpoint answered "204 No Content", not 200 OK`,
		},
		{
			name: "redirect",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://cdn.example/west.json", http.StatusFound)
			}),
			wantErr: `fetcher: west.example: GET %s: redirected ("302 Found") to "https://cdn.example/west.json"; redirects are not followed, so configure the final URL as bundle_endpoint_url`,
		},
		{
			name: "redirect to a long URL: cut",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://cdn.example/"+strings.Repeat("a", 10000), http.StatusTemporaryRedirect)
			}),
			wantErr: `fetcher: west.example: GET %s: redirected ("307 Temporary Redirect") to "https://cdn.example/` + strings.Repeat("a", 512-len("https://cdn.example/")) + `... (truncated)"; redirects are not followed, so configure the final URL as bundle_endpoint_url`,
		},
		{
			name:    "malformed JSON",
			handler: serve(http.StatusOK, goodJSON[:len(goodJSON)/2]),
			wantErr: "fetcher: west.example: GET %s: bundle: spiffebundle: unable to parse JWKS: unexpected end of JSON input",
		},
		{
			name:    "PEM instead of JSON",
			handler: serve(http.StatusOK, pemfile.EncodeCertificates(westCA.root)),
			wantErr: "fetcher: west.example: GET %s: the answer is not SPIFFE bundle JSON (it does not begin with '{')",
		},
		{
			name:    "empty body",
			handler: serve(http.StatusOK, nil),
			wantErr: "fetcher: west.example: GET %s: the answer is not SPIFFE bundle JSON (it does not begin with '{')",
		},
		{
			name:    "no X.509 authority",
			handler: serve(http.StatusOK, marshal(t, jwtOnly)),
			wantErr: "fetcher: west.example: GET %s: the bundle holds no x509-svid authority, so it would authenticate no X.509-SVID of the trust domain",
		},
		{
			name:    "a megabyte key ID: the error is cut",
			handler: serve(http.StatusOK, withKey(t, goodJSON, `{"use":"jwt-svid","kty":"oct","k":"AAAA","kid":"`+longKID+`"}`)),
			wantErr: "fetcher: west.example: GET %s: " + fmt.Sprintf("bundle: jwt-svid authority %q is a []uint8, not an ECDSA, RSA or Ed25519 public key", longKID)[:512] + "... (truncated)",
		},
		{
			name:    "no keys at all",
			handler: serve(http.StatusOK, []byte(`{"keys":[]}`)),
			wantErr: `fetcher: west.example: GET %s: bundle: bundle for "west.example" holds no keys`,
		},
		{
			name:    "host name mismatch",
			handler: serve(http.StatusOK, goodJSON),
			url:     func(base string) string { return strings.Replace(base, "127.0.0.1", "localhost", 1) },
			wantErr: "fetcher: west.example: GET %s: tls: failed to verify certificate: x509: certificate is not valid for any names, but wanted to match localhost",
		},
		{
			name:    "unknown authority",
			handler: serve(http.StatusOK, goodJSON),
			rootCAs: westCA,
			wantErr: "fetcher: west.example: GET %s: tls: failed to verify certificate: x509: certificate signed by unknown authority",
		},
		{
			name:    "certificate expired by the clock",
			handler: serve(http.StatusOK, goodJSON),
			clock:   t0.Add(caTTL + time.Hour),
			wantErr: "fetcher: west.example: GET %s: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time " +
				t0.Add(caTTL+time.Hour).Format(time.RFC3339) + " is after " + t0.Add(caTTL).Format(time.RFC3339),
		},
		{
			name: "timeout",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done() // the client gives up and hangs up
				// Never answer: returning would send an empty 200, which a
				// client still reading (a loaded machine) takes for the
				// answer instead of timing out.
				panic(http.ErrAbortHandler)
			}),
			timeout: 100 * time.Millisecond,
			wantErr: "fetcher: west.example: GET %s: no complete answer within 100ms",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := webServer(t, webCA, tc.handler)
			url := srv.URL + "/bundle"
			if tc.url != nil {
				url = tc.url(url)
			}
			roots := webCA
			if tc.rootCAs != nil {
				roots = tc.rootCAs
			}
			now := t0
			if !tc.clock.IsZero() {
				now = tc.clock
			}
			peer := fetcher.Peer{TrustDomain: west, URL: url, Profile: fetcher.ProfileHTTPSWeb}
			got, err := fetcher.Fetch(context.Background(), peer, fetcher.FetchOptions{
				RootCAs: roots.pool(),
				Timeout: tc.timeout,
				Clock:   func() time.Time { return now },
			})
			wantErr := ""
			if tc.wantErr != "" {
				wantErr = fmt.Sprintf(tc.wantErr, url)
			}
			if errText(err) != wantErr {
				t.Fatalf("error:\n got %v\nwant %s", err, wantErr)
			}
			if !got.Equal(tc.want) {
				t.Fatalf("bundle: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestFetchRefusesOldTLS checks the TLS floor: a server that speaks at most
// TLS 1.1 gets no request, one that speaks TLS 1.2 does.
func TestFetchRefusesOldTLS(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	good := westCA.bundle(t, 1, 0)
	for _, tc := range []struct {
		name       string
		maxVersion uint16
		wantErr    string
	}{
		{"TLS 1.1", tls.VersionTLS11, "fetcher: west.example: GET %s: remote error: tls: protocol version not supported"},
		{"TLS 1.2", tls.VersionTLS12, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := webServer(t, webCA, serve(http.StatusOK, marshal(t, good)))
			srv.TLS.MinVersion = tls.VersionTLS10
			srv.TLS.MaxVersion = tc.maxVersion
			peer := fetcher.Peer{TrustDomain: west, URL: srv.URL, Profile: fetcher.ProfileHTTPSWeb}
			_, err := fetcher.Fetch(context.Background(), peer, fetcher.FetchOptions{RootCAs: webCA.pool(), Clock: func() time.Time { return t0 }})
			wantErr := ""
			if tc.wantErr != "" {
				wantErr = fmt.Sprintf(tc.wantErr, srv.URL)
			}
			if errText(err) != wantErr {
				t.Fatalf("error:\n got %v\nwant %s", err, wantErr)
			}
		})
	}
}

// TestFetchSPIFFE fetches from the real meshfed bundle endpoint, profile
// https_spiffe, with the endpoint presenting various SVIDs and the client
// trusting various bundles.
func TestFetchSPIFFE(t *testing.T) {
	westCA := newCA(t, west, caTTL)
	eastCA := newCA(t, east, caTTL)
	otherWest := newCA(t, west, caTTL) // a west.example CA nobody trusts
	eastServer := spiffeid.RequireFromString("spiffe://east.example/bundle-server")
	westBundle := westCA.bundle(t, 3, 0)

	for _, tc := range []struct {
		name       string
		svid       *spiffeid.ID // the endpoint's SVID, signed by signer
		signer     *testCA
		endpointID spiffeid.ID
		trust      x509bundle.Source
		clock      time.Time
		wantErr    string // %s: the URL
	}{
		{
			name:   "self-serving",
			signer: westCA, endpointID: westServer,
			trust: westCA.bundle(t, 1, 0),
		},
		{
			name:   "served by another trust domain",
			svid:   &eastServer,
			signer: eastCA, endpointID: eastServer,
			trust: eastCA.bundle(t, 1, 0),
		},
		{
			name:   "another SPIFFE ID",
			svid:   ptr(spiffeid.RequireFromString("spiffe://west.example/impostor")),
			signer: westCA, endpointID: westServer,
			trust:   westCA.bundle(t, 1, 0),
			wantErr: "fetcher: west.example: GET %s: the endpoint presented the X.509-SVID of spiffe://west.example/impostor, not spiffe://west.example/meshfed/bundle-endpoint",
		},
		{
			name:   "SVID of an untrusted CA",
			signer: otherWest, endpointID: westServer,
			trust:   westCA.bundle(t, 1, 0),
			wantErr: "fetcher: west.example: GET %s: the endpoint's certificate is not an X.509-SVID the stored bundle of west.example vouches for: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority (possibly because of \"x509: ECDSA verification failure\" while trying to verify candidate authority certificate \"west.example test root\")",
		},
		{
			name:   "trust of the wrong trust domain",
			svid:   &eastServer,
			signer: eastCA, endpointID: eastServer,
			trust:   westCA.bundle(t, 1, 0),
			wantErr: `fetcher: west.example: cannot authenticate the bundle endpoint spiffe://east.example/bundle-server: spiffebundle: no X.509 bundle for trust domain "east.example"; get the bundle of east.example out of band and run "meshfed bundle set --trust-domain east.example --in BUNDLE.json" first`,
		},
		{
			name:   "no trust bundle",
			signer: westCA, endpointID: westServer,
			wantErr: `fetcher: west.example: cannot authenticate the bundle endpoint spiffe://west.example/meshfed/bundle-endpoint: no bundle source was given; get the bundle of west.example out of band and run "meshfed bundle set --trust-domain west.example --in BUNDLE.json" first`,
		},
		{
			name:   "trust bundle with JWT keys only",
			signer: westCA, endpointID: westServer,
			trust:   spiffebundle.FromJWTAuthorities(west, westBundle.JWTAuthorities()),
			wantErr: `fetcher: west.example: cannot authenticate the bundle endpoint spiffe://west.example/meshfed/bundle-endpoint: the bundle of west.example holds no x509-svid authority; get the bundle of west.example out of band and run "meshfed bundle set --trust-domain west.example --in BUNDLE.json" first`,
		},
		{
			name:   "SVID expired by the clock",
			signer: westCA, endpointID: westServer,
			trust:   westCA.bundle(t, 1, 0),
			clock:   t0.Add(caTTL + time.Hour),
			wantErr: "fetcher: west.example: GET %s: the endpoint's certificate is not an X.509-SVID the stored bundle of west.example vouches for: x509svid: could not verify leaf certificate: x509: certificate has expired or is not yet valid: current time " + t0.Add(caTTL+time.Hour).Format(time.RFC3339) + " is after " + t0.Add(caTTL).Format(time.RFC3339),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := westServer
			if tc.svid != nil {
				id = *tc.svid
			}
			ep := spiffeEndpoint(t, west, tc.signer.svid(t, id), westBundle)
			now := t0
			if !tc.clock.IsZero() {
				now = tc.clock
			}
			peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: tc.endpointID}
			got, err := fetcher.Fetch(context.Background(), peer, fetcher.FetchOptions{Bundles: tc.trust, Clock: func() time.Time { return now }})
			wantErr := ""
			if tc.wantErr != "" {
				wantErr = strings.ReplaceAll(tc.wantErr, "%s", ep.url())
			}
			if errText(err) != wantErr {
				t.Fatalf("error:\n got %v\nwant %s", err, wantErr)
			}
			if err == nil && !got.Equal(westBundle) {
				t.Fatalf("got %v, want the served bundle", got)
			}
			if err != nil && got != nil {
				t.Fatal("a bundle was returned with the error")
			}
		})
	}
}

// TestFetchWebEndpoint fetches from the real meshfed bundle endpoint,
// profile https_web.
func TestFetchWebEndpoint(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westBundle := newCA(t, west, caTTL).bundle(t, 9, 2*time.Minute)
	ep := webEndpoint(t, west, webCA, westBundle)
	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb}
	got, err := fetcher.Fetch(context.Background(), peer, fetcher.FetchOptions{RootCAs: webCA.pool(), Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(westBundle) {
		t.Fatalf("got %v, want the served bundle", got)
	}
}

// TestFetchInvalidPeer checks that Fetch validates the peer before dialing.
func TestFetchInvalidPeer(t *testing.T) {
	_, err := fetcher.Fetch(context.Background(), fetcher.Peer{TrustDomain: west, URL: "http://west.example/", Profile: fetcher.ProfileHTTPSWeb}, fetcher.FetchOptions{})
	want := `fetcher: west.example: bundle_endpoint_url "http://west.example/" is not an https URL; both profiles fetch over TLS`
	if errText(err) != want {
		t.Fatalf("error:\n got %v\nwant %s", err, want)
	}
}

func ptr[T any](v T) *T { return &v }

// longKID is a JWT key ID that fills most of a bundle's size bound.
var longKID = strings.Repeat("k", bundle.MaxBytes-4096)

// withKey adds a raw JWK to the keys of a bundle's JSON.
func withKey(t testing.TB, bundleJSON []byte, jwk string) []byte {
	t.Helper()
	i := bytes.Index(bundleJSON, []byte(`"keys": [`))
	if i < 0 {
		t.Fatalf("no keys in %s", bundleJSON)
	}
	i += len(`"keys": [`)
	return slices.Concat(bundleJSON[:i], []byte(jwk+","), bundleJSON[i:])
}

// TestFetchConditional fetches with and without an ETag and a wait from
// servers that answer one way each, and checks the request's conditional
// headers and the exact answer.
func TestFetchConditional(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	good := newCA(t, west, caTTL).bundle(t, 7, time.Minute)
	goodJSON := marshal(t, good)
	const tag, other = `"abc"`, `"def"`
	// answer sends status, with the headers given as name, value pairs,
	// and the bundle with a 200.
	answer := func(status int, headers ...string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			for i := 0; i < len(headers); i += 2 {
				w.Header().Set(headers[i], headers[i+1])
			}
			w.WriteHeader(status)
			if status == http.StatusOK {
				_, _ = w.Write(goodJSON)
			}
		})
	}
	for _, tc := range []struct {
		name       string
		handler    http.Handler
		cond       fetcher.Conditions
		timeout    time.Duration
		wantINM    string // If-None-Match sent
		wantPrefer string // Prefer sent
		notSent    bool   // refused before a request
		want       fetcher.Answer
		wantErr    string // %s: the URL
	}{
		{
			name:    "unconditional: the ETag is returned",
			handler: answer(http.StatusOK, "ETag", tag),
			want:    fetcher.Answer{Bundle: good, ETag: tag},
		},
		{
			name:    "unconditional, weak ETag",
			handler: answer(http.StatusOK, "ETag", "W/"+tag),
			want:    fetcher.Answer{Bundle: good, ETag: "W/" + tag},
		},
		{
			name:    "If-None-Match answered 304",
			handler: answer(http.StatusNotModified, "ETag", tag),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			want:    fetcher.Answer{NotModified: true, ETag: tag},
		},
		{
			name:    "304 without an ETag",
			handler: answer(http.StatusNotModified),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			want:    fetcher.Answer{NotModified: true, ETag: tag},
		},
		{
			name:    "304 with the weak form of the ETag",
			handler: answer(http.StatusNotModified, "ETag", "W/"+tag),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			want:    fetcher.Answer{NotModified: true, ETag: tag},
		},
		{
			name:    "If-None-Match, bundle changed: 200 with the new ETag",
			handler: answer(http.StatusOK, "ETag", other),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			want:    fetcher.Answer{Bundle: good, ETag: other},
		},
		{
			name:       "long poll: Prefer sent, Preference-Applied read",
			handler:    answer(http.StatusNotModified, "ETag", tag, "Preference-Applied", "wait=30"),
			cond:       fetcher.Conditions{ETag: tag, Wait: 30 * time.Second},
			wantINM:    tag,
			wantPrefer: "wait=30",
			want:       fetcher.Answer{NotModified: true, ETag: tag, WaitApplied: true, AppliedWait: 30 * time.Second},
		},
		{
			name:       "long poll answered 200, among other preferences",
			handler:    answer(http.StatusOK, "ETag", other, "Preference-Applied", `return=minimal, wait="15"`),
			cond:       fetcher.Conditions{ETag: tag, Wait: 90*time.Second + 999*time.Millisecond},
			wantINM:    tag,
			wantPrefer: "wait=90",
			want:       fetcher.Answer{Bundle: good, ETag: other, WaitApplied: true, AppliedWait: 15 * time.Second},
		},
		{
			name:       "long poll not honoured",
			handler:    answer(http.StatusNotModified, "ETag", tag),
			cond:       fetcher.Conditions{ETag: tag, Wait: 30 * time.Second},
			wantINM:    tag,
			wantPrefer: "wait=30",
			want:       fetcher.Answer{NotModified: true, ETag: tag},
		},
		{
			name:    "a wait of under a second is not asked for",
			handler: answer(http.StatusNotModified, "ETag", tag, "Preference-Applied", "wait=1"),
			cond:    fetcher.Conditions{ETag: tag, Wait: 999 * time.Millisecond},
			wantINM: tag,
			want:    fetcher.Answer{NotModified: true, ETag: tag},
		},
		{
			name:    "a wait without an ETag is not asked for",
			handler: answer(http.StatusOK, "ETag", tag, "Preference-Applied", "wait=30"),
			cond:    fetcher.Conditions{Wait: 30 * time.Second},
			want:    fetcher.Answer{Bundle: good, ETag: tag},
		},
		{
			name:    "an unquoted ETag is ignored",
			handler: answer(http.StatusOK, "ETag", "abc"),
			want:    fetcher.Answer{Bundle: good},
		},
		{
			name:    "an ETag over 256 bytes is ignored",
			handler: answer(http.StatusOK, "ETag", `"`+strings.Repeat("a", 255)+`"`),
			want:    fetcher.Answer{Bundle: good},
		},
		{
			name:    "an ETag of 256 bytes is kept",
			handler: answer(http.StatusOK, "ETag", `"`+strings.Repeat("a", 254)+`"`),
			want:    fetcher.Answer{Bundle: good, ETag: `"` + strings.Repeat("a", 254) + `"`},
		},
		{
			name:    "304 for another ETag",
			handler: answer(http.StatusNotModified, "ETag", other),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			wantErr: `fetcher: west.example: GET %s: the endpoint answered 304 Not Modified with the ETag "def", not "abc", which it was asked about`,
		},
		{
			name:    "304 with a malformed ETag",
			handler: answer(http.StatusNotModified, "ETag", "abc"),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			wantErr: `fetcher: west.example: GET %s: the endpoint answered 304 Not Modified with the ETag "abc", not "abc", which it was asked about`,
		},
		{
			name:    "304 to an unconditional request",
			handler: answer(http.StatusNotModified, "ETag", tag),
			wantErr: `fetcher: west.example: GET %s: the endpoint answered "304 Not Modified", not 200 OK`,
		},
		{
			name:    "conditional, status 503",
			handler: answer(http.StatusServiceUnavailable),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			wantErr: `fetcher: west.example: GET %s: the endpoint answered "503 Service Unavailable", not 200 OK or 304 Not Modified`,
		},
		{
			name:    "conditional, redirect",
			handler: answer(http.StatusFound, "Location", "https://cdn.example/west.json"),
			cond:    fetcher.Conditions{ETag: tag},
			wantINM: tag,
			wantErr: `fetcher: west.example: GET %s: redirected ("302 Found") to "https://cdn.example/west.json"; redirects are not followed, so configure the final URL as bundle_endpoint_url`,
		},
		{
			name:    "an ETag to send that is not one",
			handler: answer(http.StatusOK),
			cond:    fetcher.Conditions{ETag: "abc"},
			notSent: true,
			wantErr: `fetcher: west.example: the ETag to send, "abc", is not an RFC 9110 entity-tag of at most 256 bytes`,
		},
		{
			name: "a long poll's timeout is the wait plus Timeout",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
				panic(http.ErrAbortHandler) // never answer (see "timeout")
			}),
			cond:       fetcher.Conditions{ETag: tag, Wait: time.Second},
			timeout:    100 * time.Millisecond,
			wantINM:    tag,
			wantPrefer: "wait=1",
			wantErr:    "fetcher: west.example: GET %s: no complete answer within 1.1s",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotINM, gotPrefer atomic.Pointer[string]
			srv := webServer(t, webCA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inm, prefer := r.Header.Get("If-None-Match"), r.Header.Get("Prefer")
				gotINM.Store(&inm)
				gotPrefer.Store(&prefer)
				tc.handler.ServeHTTP(w, r)
			}))
			peer := fetcher.Peer{TrustDomain: west, URL: srv.URL, Profile: fetcher.ProfileHTTPSWeb}
			got, err := fetcher.FetchConditional(context.Background(), peer, fetcher.FetchOptions{
				RootCAs: webCA.pool(),
				Timeout: tc.timeout,
				Clock:   func() time.Time { return t0 },
			}, tc.cond)
			if wantErr := strings.ReplaceAll(tc.wantErr, "%s", srv.URL); errText(err) != wantErr {
				t.Fatalf("error:\n got %v\nwant %s", err, wantErr)
			}
			if !got.Bundle.Equal(tc.want.Bundle) {
				t.Fatalf("bundle: got %v, want %v", got.Bundle, tc.want.Bundle)
			}
			got.Bundle, tc.want.Bundle = nil, nil
			if got != tc.want {
				t.Fatalf("answer: got %+v, want %+v", got, tc.want)
			}
			if tc.notSent {
				if gotINM.Load() != nil {
					t.Fatal("a request was sent")
				}
				return
			}
			if p := gotINM.Load(); p == nil || *p != tc.wantINM {
				t.Fatalf("If-None-Match sent: %v, want %q", p, tc.wantINM)
			}
			if p := gotPrefer.Load(); *p != tc.wantPrefer {
				t.Fatalf("Prefer sent: %q, want %q", *p, tc.wantPrefer)
			}
		})
	}
}
