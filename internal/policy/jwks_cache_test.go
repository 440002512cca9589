package policy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestJWKSCache: fetched once, kept for the refresh interval, refetched
// after it; a failed refetch keeps the last good set; a URI never fetched
// successfully is retried only after the failure hold; bad bodies are
// refused.
func TestJWKSCache(t *testing.T) {
	iss := newTestIssuer(t, "k1")
	var hits atomic.Int64
	var mu sync.Mutex
	status, body := http.StatusOK, iss.jwks
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mu.Lock()
		defer mu.Unlock()
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	set := func(code int, b string) {
		mu.Lock()
		status, body = code, b
		mu.Unlock()
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewJWKSCache(JWKSCacheConfig{Client: srv.Client(), Refresh: time.Minute, FailureHold: 5 * time.Second, Clock: func() time.Time { return now }})
	uri := srv.URL + "/jwks"

	steps := []struct {
		name    string
		advance time.Duration
		status  int
		body    string
		hits    int64
		err     string // "" = the issuer's key set
	}{
		{"first use fetches", 0, 200, iss.jwks, 1, ""},
		{"within refresh: cached", 30 * time.Second, 500, "", 1, ""},
		{"after refresh, server failing: last good kept", 31 * time.Second, 500, "", 2, ""},
		{"after refresh again, recovered", 61 * time.Second, 200, iss.jwks, 3, ""},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		set(s.status, s.body)
		data, err := c.FetchJWKS(uri)
		if err != nil || string(data) != iss.jwks || hits.Load() != s.hits {
			t.Fatalf("%s: err %v, data ok %v, hits %d; want the key set after %d fetches", s.name, err, string(data) == iss.jwks, hits.Load(), s.hits)
		}
	}

	bad := []struct {
		name, body string
		status     int
		err        string
	}{
		{"not found", "", 404, "HTTP 404"},
		{"not JSON", "<html>", 200, "not a JWKS"},
		{"no keys", `{"keys":[]}`, 200, "JWKS has no keys"},
		{"too large", `{"keys":[` + strings.Repeat(" ", MaxJWKSSize) + `]}`, 200, "larger than the bound"},
	}
	for i, b := range bad {
		set(b.status, b.body)
		u := fmt.Sprintf("%s/other%d", srv.URL, i)
		before := hits.Load()
		if _, err := c.FetchJWKS(u); err == nil || !strings.Contains(err.Error(), b.err) {
			t.Fatalf("%s: err %v, want %q", b.name, err, b.err)
		}
		// Within the failure hold the error is returned without a fetch.
		set(200, iss.jwks)
		if _, err := c.FetchJWKS(u); err == nil || hits.Load() != before+1 {
			t.Fatalf("%s: within the failure hold: err %v, fetches %d; want the held error, one fetch", b.name, err, hits.Load()-before)
		}
	}
	now = now.Add(6 * time.Second)
	if data, err := c.FetchJWKS(srv.URL + "/other0"); err != nil || string(data) != iss.jwks {
		t.Fatalf("after the failure hold: %v", err)
	}
	if _, err := c.FetchJWKS("file:///etc/passwd"); err == nil || !strings.Contains(err.Error(), "not an http(s) URL") {
		t.Fatalf("file URI: err %v", err)
	}
}

// TestOpenIDDiscovery: a rule with only an issuer gets its keys from the
// issuer's discovery document, as istiod resolves them; a document naming
// another issuer, or without a usable jwks_uri, is refused.
func TestOpenIDDiscovery(t *testing.T) {
	iss := newTestIssuer(t, "k1")
	var issuer string
	discovery := func() string { return fmt.Sprintf(`{"issuer":%q,"jwks_uri":%q}`, issuer, issuer+"/keys") }
	mux := http.NewServeMux()
	var doc atomic.Value
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, doc.Load()) })
	mux.HandleFunc("/keys", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, iss.jwks) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	issuer = srv.URL
	doc.Store(discovery())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	docs, err := Parse("ra.yaml", []byte("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: r\n  namespace: ns\nspec:\n  jwtRules:\n  - issuer: "+issuer+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewSet(docs)
	if err != nil {
		t.Fatal(err)
	}
	tok := iss.sign(t, map[string]any{"iss": issuer, "sub": "alice", "exp": now.Add(time.Hour).Unix()})
	headers := map[string][]string{"Authorization": {"Bearer " + tok}}
	if _, err := set.Authenticate("ns", nil, headers, nil, now); err == nil || !strings.Contains(err.Error(), "nothing here does OpenID discovery") {
		t.Fatalf("without a discoverer: %v", err)
	}
	c := NewJWKSCache(JWKSCacheConfig{Client: srv.Client(), Clock: func() time.Time { return now }})
	res, err := set.WithJWKSFetcher(c).Authenticate("ns", nil, headers, nil, now)
	if err != nil || res.Principal != issuer+"/alice" {
		t.Fatalf("by discovery: %+v, %v", res, err)
	}

	for _, tc := range []struct{ doc, err string }{
		{`{"issuer":"https://other.example","jwks_uri":"` + issuer + `/keys"}`, `names issuer "https://other.example"`},
		{`{"issuer":"` + issuer + `","jwks_uri":"file:///etc/keys"}`, `jwks_uri "file:///etc/keys" is not an http(s) URL`},
		{`<html>`, "not an OpenID discovery document"},
	} {
		doc.Store(tc.doc)
		fresh := NewJWKSCache(JWKSCacheConfig{Client: srv.Client(), Clock: func() time.Time { return now }})
		if _, err := fresh.DiscoverJWKS(issuer); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("discovery document %s: err %v, want %q", tc.doc, err, tc.err)
		}
	}
}

// FuzzParseKeyDocuments: what a key server sends (a JWKS, a discovery
// document) never panics the parsers, and what they accept is usable.
func FuzzParseKeyDocuments(f *testing.F) {
	iss := newTestIssuer(f, "k1")
	f.Add([]byte(iss.jwks))
	f.Add([]byte(`{"issuer":"https://a.example","jwks_uri":"https://a.example/keys"}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if set, err := parseJWKS(data); err == nil {
			if len(set.Keys) == 0 {
				t.Fatal("accepted a JWKS without keys")
			}
			for _, k := range set.Keys {
				if !k.IsPublic() {
					t.Fatal("accepted a private key")
				}
			}
		}
		if uri, err := parseDiscovery("https://a.example", data); err == nil {
			if l := strings.ToLower(uri); !strings.HasPrefix(l, "http://") && !strings.HasPrefix(l, "https://") {
				t.Fatalf("accepted jwks_uri %q", uri)
			}
		}
	})
}
