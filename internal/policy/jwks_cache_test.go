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
