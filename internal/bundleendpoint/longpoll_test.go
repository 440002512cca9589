package bundleendpoint_test

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundleendpoint"
)

// changes is a Config.Changes for tests: a channel closed at each change.
type changes struct {
	mu sync.Mutex
	ch chan struct{}
}

func newChanges() *changes { return &changes{ch: make(chan struct{})} }

func (c *changes) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

func (c *changes) changed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.ch)
	c.ch = make(chan struct{})
}

// conditional makes a GET with If-None-Match and, if wait is set, Prefer.
func conditional(c *http.Client, u, tag, wait string) response {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return response{err: err}
	}
	req.Header.Set("If-None-Match", tag)
	if wait != "" {
		req.Header.Set("Prefer", "wait="+wait)
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: string(body), err: err}
}

// The conditional long poll: an ETag on every answer; If-None-Match with the
// current tag is 304 at once; with Prefer: wait the request is held until
// the bundle changes (200 with the new bundle) or the wait ends (304), and
// the answer says Preference-Applied.
func TestConditionalLongPoll(t *testing.T) {
	p := newPKI(t)
	first, second := p.bundle(t, 7), p.bundle(t, 8)
	src := &bundleSource{bundle: first}
	ch := newChanges()
	s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID)), Changes: ch.wait})
	c := httpClient(t, first)
	u := url(s, "/")

	r := do(t, c, http.MethodGet, u)
	tag := r.header.Get("ETag")
	if r.code != http.StatusOK || len(tag) != 66 || tag[0] != '"' {
		t.Fatalf("first GET: %d, ETag %q", r.code, tag)
	}
	if again := do(t, c, http.MethodGet, u); again.header.Get("ETag") != tag {
		t.Fatal("the ETag of one bundle changed between requests")
	}

	if r := conditional(c, u, tag, ""); r.code != http.StatusNotModified || r.body != "" || r.header.Get("Preference-Applied") != "" || r.header.Get("ETag") != tag {
		t.Fatalf("If-None-Match without a wait: %d %q %v", r.code, r.body, r.header)
	}
	if r := conditional(c, u, `"stale"`, "30"); r.code != http.StatusOK || r.header.Get("ETag") != tag {
		t.Fatalf("a stale tag: %d", r.code)
	}

	// Held until the bundle changes; the wait asked for is capped.
	calls := src.callCount()
	held := make(chan response, 1)
	go func() { held <- conditional(c, u, tag, "999") }()
	deadline := time.Now().Add(10 * time.Second)
	for src.callCount() == calls {
		if time.Now().After(deadline) {
			t.Fatal("the long poll never reached the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case r := <-held:
		t.Fatalf("answered before any change: %d", r.code)
	case <-time.After(50 * time.Millisecond):
	}
	src.set(second, nil)
	ch.changed()
	r = <-held
	if r.code != http.StatusOK || r.body != string(marshal(t, second)) || r.header.Get("ETag") == tag || r.header.Get("Preference-Applied") != "wait=60" {
		t.Fatalf("after the change: %d, Preference-Applied %q", r.code, r.header.Get("Preference-Applied"))
	}

	// A wait that passes without a change ends in 304.
	tag = r.header.Get("ETag")
	if r := conditional(c, u, tag, "1"); r.code != http.StatusNotModified || r.header.Get("Preference-Applied") != "wait=1" {
		t.Fatalf("a wait without a change: %d %v", r.code, r.header)
	}
	// A change signal that leaves the bundle as it was keeps the request held.
	held = make(chan response, 1)
	go func() { held <- conditional(c, u, tag, "1") }()
	time.Sleep(100 * time.Millisecond)
	ch.changed()
	if r := <-held; r.code != http.StatusNotModified {
		t.Fatalf("a signal without a change: %d", r.code)
	}
	codes := s.Requests()
	if codes[http.StatusOK] != 4 || codes[http.StatusNotModified] != 3 {
		t.Errorf("requests by code %v", codes)
	}
}

// A held request is answered at once when the endpoint stops.
func TestLongPollEndsOnStop(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	ch := newChanges()
	src := &bundleSource{bundle: b}
	s, err := bundleendpoint.New(bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src,
		SVIDSource: newSVIDSource(p.svid(t, endpointID)), Changes: ch.wait})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	c := httpClient(t, b)
	u := url(s, "/")
	var r response
	deadline := time.Now().Add(10 * time.Second)
	for r = get(c, http.MethodGet, u); r.err != nil; r = get(c, http.MethodGet, u) {
		if time.Now().After(deadline) {
			t.Fatal(r.err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	held := make(chan response, 1)
	calls := src.callCount()
	go func() { held <- conditional(c, u, r.header.Get("ETag"), "60") }()
	for src.callCount() == calls {
		if time.Now().After(deadline) {
			t.Fatal("the long poll never reached the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := <-held; r.code != http.StatusNotModified {
		t.Errorf("held request at stop: %d, %v", r.code, r.err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stopping took %s with a request held", d)
	}
}
