package fetcher_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// peerMode is how much of meshfed's long-poll protocol a pushPeer speaks.
type peerMode int

const (
	// speaksPush: ETag, 304 for If-None-Match, and a long poll held until
	// the bundle changes (200) or the test ends it (the wait passed).
	speaksPush peerMode = iota
	// speaksETag: ETag and 304, but Prefer is ignored, so a long poll is
	// answered at once, as by a static file server.
	speaksETag
	// speaksNone: SPIRE's endpoint: 200 at once, no ETag.
	speaksNone
	// answersAtOnce: speaksPush, except that it answers a long poll at once
	// with 304 while saying it waited.
	answersAtOnce
)

// pushPeer is a test double of meshfed's bundle endpoint (https_web) with
// the conditional long poll: every 200 carries ETag, the quoted hex SHA-256
// of the body; If-None-Match with the current ETag gets 304; with Prefer:
// wait=N too, the request is held until the bundle changes (200 with the new
// one) or the test ends the wait (end), and both answers carry
// Preference-Applied: wait=N. It logs every answered request as a line such
// as "GET If-None-Match:v1 Prefer:wait=30 → 304 Preference-Applied:wait=30",
// naming ETags by the versions the test gave.
type pushPeer struct {
	mode peerMode
	url  string

	mu       sync.Mutex
	body     []byte
	tag      string
	names    map[string]string // ETag → version
	changed  chan struct{}     // closed at the next set
	failing  int               // answer every request with this status
	log      []string
	polledAt []time.Time // when each long poll arrived

	held     chan string     // the version each held long poll waits on
	ends     chan heldAnswer // ends one held long poll
	inFlight atomic.Int64
}

// heldAnswer ends a held long poll: 304 (the wait passed), another status,
// or, with a body, 200 with that body.
type heldAnswer struct {
	status int
	body   []byte
}

func newPushPeer(t testing.TB, ca *testCA, mode peerMode, version string, b *spiffebundle.Bundle) *pushPeer {
	t.Helper()
	p := &pushPeer{
		mode:    mode,
		names:   make(map[string]string),
		changed: make(chan struct{}),
		held:    make(chan string, 64),
		ends:    make(chan heldAnswer),
	}
	p.set(t, version, b)
	p.url = webServer(t, ca, p).URL
	return p
}

func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// set serves b as version from now on and answers the held long polls.
func (p *pushPeer) set(t testing.TB, version string, b *spiffebundle.Bundle) {
	p.setQuietly(t, version, b)
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// setQuietly serves b as version from now on, but leaves the held long
// polls waiting.
func (p *pushPeer) setQuietly(t testing.TB, version string, b *spiffebundle.Bundle) {
	body := marshal(t, b)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.body, p.tag = body, etagOf(body)
	p.names[p.tag] = version
}

// fail answers every request with status from now on; 0 stops that.
func (p *pushPeer) fail(status int) {
	p.mu.Lock()
	p.failing = status
	p.mu.Unlock()
}

func (p *pushPeer) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.log...)
}

func (p *pushPeer) longPollTimes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.polledAt...)
}

// waitHeld waits until a long poll is held, and checks the version it
// waits on.
func (p *pushPeer) waitHeld(t testing.TB, version string) {
	t.Helper()
	select {
	case got := <-p.held:
		if got != version {
			t.Fatalf("a long poll waits on %s, want %s", got, version)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no long poll waiting on %s within 10s; requests:\n%s", version, strings.Join(p.requests(), "\n"))
	}
}

// end ends the held long poll with a.
func (p *pushPeer) end(t testing.TB, a heldAnswer) {
	t.Helper()
	select {
	case p.ends <- a:
	case <-time.After(10 * time.Second):
		t.Fatal("no long poll held within 10s")
	}
}

func (p *pushPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	line := "GET"
	inm, prefer := r.Header.Get("If-None-Match"), r.Header.Get("Prefer")
	p.mu.Lock()
	if inm != "" {
		line += " If-None-Match:" + p.name(inm)
	}
	if prefer != "" {
		line += " Prefer:" + prefer
		p.polledAt = append(p.polledAt, time.Now())
	}
	p.mu.Unlock()

	status, body := p.answer(w, r, inm, prefer)
	if status == 0 {
		return // the client went away
	}
	line += " → " + strconv.Itoa(status)
	if pa := w.Header().Get("Preference-Applied"); pa != "" {
		line += " Preference-Applied:" + pa
	}
	// Logged before answering, so that the client cannot act on the
	// answer before it is in the log.
	p.mu.Lock()
	p.log = append(p.log, line)
	p.mu.Unlock()
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// name is the version of tag; p.mu is held.
func (p *pushPeer) name(tag string) string {
	if v, ok := p.names[tag]; ok {
		return v
	}
	return tag
}

// answer decides the status and body, and sets the headers.
func (p *pushPeer) answer(w http.ResponseWriter, r *http.Request, inm, prefer string) (int, []byte) {
	h := w.Header()
	p.mu.Lock()
	body, tag, changed, failing := p.body, p.tag, p.changed, p.failing
	p.mu.Unlock()
	if failing != 0 {
		return failing, []byte("bundle unavailable")
	}
	h.Set("Content-Type", "application/json")
	if p.mode == speaksNone {
		return http.StatusOK, body
	}
	h.Set("ETag", tag)
	if inm != tag {
		return http.StatusOK, body
	}
	n, err := strconv.Atoi(strings.TrimPrefix(prefer, "wait="))
	if err != nil || n <= 0 || p.mode == speaksETag {
		return http.StatusNotModified, nil
	}
	h.Set("Preference-Applied", "wait="+strconv.Itoa(min(n, 60)))
	if p.mode == answersAtOnce {
		return http.StatusNotModified, nil
	}
	select {
	case p.held <- p.versionOf(inm):
	default:
	}
	select {
	case <-changed:
		p.mu.Lock()
		body, tag = p.body, p.tag
		p.mu.Unlock()
		h.Set("ETag", tag)
		return http.StatusOK, body
	case a := <-p.ends:
		switch {
		case a.body != nil:
			h.Set("ETag", etagOf(a.body))
			return http.StatusOK, a.body
		case a.status == http.StatusNotModified:
			return a.status, nil
		default:
			h.Del("ETag")
			h.Del("Preference-Applied")
			h.Set("Content-Type", "text/plain")
			return a.status, []byte("bundle unavailable")
		}
	case <-r.Context().Done():
		return 0, nil
	}
}

func (p *pushPeer) versionOf(tag string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name(tag)
}

// pushFixture is a Refresher running against a pushPeer that serves v1,
// with a refresh hint of an hour, on an injected clock that stands at t0
// unless a test moves it: the schedule is an hour away throughout.
type pushFixture struct {
	*harness
	peer    *pushPeer
	v1, v2  *spiffebundle.Bundle
	began   time.Time // just before Run started
	stopRun func()    // cancels Run and waits for it to return
}

func startPush(t testing.TB, mode peerMode, spacing time.Duration) *pushFixture {
	t.Helper()
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	f := &pushFixture{v1: westCA.bundle(t, 1, time.Hour), v2: westCA.bundle(t, 2, time.Hour)}
	f.peer = newPushPeer(t, webCA, mode, "v1", f.v1)
	peer := fetcher.Peer{TrustDomain: west, URL: f.peer.url, Profile: fetcher.ProfileHTTPSWeb}
	f.harness = newHarness(t, newStore(), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
	fetcher.SetLongPollSpacing(f.r, spacing)
	f.began = time.Now()
	f.stopRun = runRefresher(t, f.r)
	return f
}

// runRefresher runs r until the returned function (or the test's end)
// cancels it; that function returns once Run did.
func runRefresher(t testing.TB, r *fetcher.Refresher) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds, for up to 10 s: for what a long poll's
// goroutine does.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func checkRequests(t testing.TB, p *pushPeer, want ...string) {
	t.Helper()
	if got := p.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func (f *pushFixture) checkStored(t testing.TB, want *spiffebundle.Bundle, writes, changes int) {
	t.Helper()
	if got := f.store.get(west); !got.Equal(want) {
		seq, _ := got.SequenceNumber()
		wantSeq, _ := want.SequenceNumber()
		t.Fatalf("stored the bundle with sequence %d, want %d", seq, wantSeq)
	}
	if got := f.store.writeCount(); got != writes {
		t.Fatalf("%d store writes, want %d", got, writes)
	}
	if got := len(f.changes()); got != changes {
		t.Fatalf("%d OnChange calls, want %d", got, changes)
	}
	if got := f.store.overlapCount(); got != 0 {
		t.Fatalf("%d store writes overlapped another of the same trust domain", got)
	}
}

// checkStatus compares the status of the one peer with want, filled in
// with what does not change in these tests.
func (f *pushFixture) checkStatus(t testing.TB, want fetcher.PeerStatus) {
	t.Helper()
	want.TrustDomain, want.URL, want.Profile = west, f.peer.url, fetcher.ProfileHTTPSWeb
	b := f.store.get(west)
	seq, _ := b.SequenceNumber()
	want.Sequence = &seq
	want.RefreshHint, want.RefreshInterval = time.Hour, time.Hour
	want.X509Authorities, want.JWTAuthorities = 1, 1
	want.EarliestExpiry = b.X509Authorities()[0].NotAfter
	if got := f.r.Status()[0]; !reflect.DeepEqual(got, want) {
		t.Fatalf("status:\n got %+v\nwant %+v", got, want)
	}
}

const (
	firstFetch   = "GET → 200"
	pushOnLog    = "INFO fetcher: the federated bundle endpoint holds long polls; a change of its bundle arrives at once federated_trust_domain=west.example wait=30s"
	longPollV1   = "GET If-None-Match:v1 Prefer:wait=30"
	waited       = " Preference-Applied:wait=30"
	updatedLogV1 = "INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=1 jwt_authorities=1 sequence=1 next_refresh="
	updatedLogV2 = "INFO fetcher: federated bundle updated federated_trust_domain=west.example x509_authorities=1 jwt_authorities=1 sequence=2 next_refresh="
)

// TestLongPollChange: a change of the peer's bundle is answered to the held
// long poll, stored and pushed (OnChange) at once, while the schedule's next
// fetch is an hour away; then the next long poll waits on the new bundle.
func TestLongPollChange(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	// Run's first pass stores v1; the long poll starts and is held.
	f.peer.waitHeld(t, "v1")
	f.checkStored(t, f.v1, 1, 1)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour)})

	f.peer.set(t, "v2", f.v2)
	f.peer.waitHeld(t, "v2")
	f.checkStored(t, f.v2, 2, 2)
	if got := f.changes(); !reflect.DeepEqual(got, []spiffeid.TrustDomain{west, west}) {
		t.Fatalf("OnChange calls %v, want [west.example west.example]", got)
	}
	checkRequests(t, f.peer, firstFetch, longPollV1+" → 200"+waited)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour), Push: true})
	lines := f.logs.take()
	checkLogs(t, lines, updatedLogV1+rfc3339(t0.Add(time.Hour)), pushOnLog, updatedLogV2+rfc3339(t0.Add(time.Hour)))
	checkNoBody(t, lines, f.v1, f.v2)
}

// TestLongPollNotModified: a long poll answered 304 when the wait is over is
// a success that stores nothing, and the next long poll follows at once.
func TestLongPollNotModified(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	for i := range 3 {
		f.clock.advance(30 * time.Second)
		f.peer.end(t, heldAnswer{status: http.StatusNotModified})
		f.peer.waitHeld(t, "v1")
		now := t0.Add(time.Duration(i+1) * 30 * time.Second)
		f.checkStatus(t, fetcher.PeerStatus{LastAttempt: now, LastSuccess: now, NextRefresh: now.Add(time.Hour), Push: true})
	}
	f.checkStored(t, f.v1, 1, 1)
	checkRequests(t, f.peer, firstFetch, longPollV1+" → 304"+waited, longPollV1+" → 304"+waited, longPollV1+" → 304"+waited)
	checkLogs(t, f.logs.take(), updatedLogV1+rfc3339(t0.Add(time.Hour)), pushOnLog)
}

// TestLongPollNotOffered: an endpoint that ignores the headers (SPIRE's) is
// never long-polled; one that answers If-None-Match but not Prefer is asked
// once, then again only after MaxRefresh.
func TestLongPollNotOffered(t *testing.T) {
	for _, tc := range []struct {
		name         string
		mode         peerMode
		wantStarted  int // long polls after the first fetch and a Refresh
		wantRequests []string
		wantLogs     []string
		wantLater    int // long polls after another Refresh an hour later
	}{
		{
			name:         "SPIRE: no ETag",
			mode:         speaksNone,
			wantStarted:  0,
			wantRequests: []string{firstFetch, "GET → 200"},
			wantLogs:     []string{updatedLogV1 + rfc3339(t0.Add(time.Hour))},
			wantLater:    0,
		},
		{
			name:         "ETag, but Prefer ignored",
			mode:         speaksETag,
			wantStarted:  1,
			wantRequests: []string{firstFetch, longPollV1 + " → 304", "GET If-None-Match:v1 → 304"},
			wantLogs: []string{
				updatedLogV1 + rfc3339(t0.Add(time.Hour)),
				"INFO fetcher: the federated bundle endpoint answers long polls at once; fetching it on schedule federated_trust_domain=west.example long_poll_again=" + rfc3339(t0.Add(time.Hour)),
			},
			wantLater: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startPush(t, tc.mode, 0)
			// The long poll, if any, is decided before OnChange is called.
			waitFor(t, "the first fetch", func() bool { return len(f.changes()) == 1 })
			waitFor(t, "no long poll to run", func() bool { return fetcher.LongPollsRunning(f.r) == 0 })
			if err := f.r.Refresh(context.Background(), west); err != nil {
				t.Fatal(err)
			}
			if got := fetcher.LongPollsStarted(f.r); got != tc.wantStarted {
				t.Fatalf("%d long polls, want %d", got, tc.wantStarted)
			}
			checkRequests(t, f.peer, tc.wantRequests...)
			checkLogs(t, f.logs.take(), tc.wantLogs...)
			f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour)})

			f.clock.advance(time.Hour)
			if err := f.r.Refresh(context.Background(), west); err != nil {
				t.Fatal(err)
			}
			if got := fetcher.LongPollsStarted(f.r); got != tc.wantLater {
				t.Fatalf("an hour later: %d long polls, want %d", got, tc.wantLater)
			}
			f.checkStored(t, f.v1, 1, 1)
		})
	}
}

// TestLongPollErrorResumesSchedule: a long poll that fails stops; the
// failure is recorded and backs off as a scheduled fetch's would, the
// schedule fetches again when due, and its success starts the long poll
// again.
func TestLongPollErrorResumesSchedule(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")
	f.peer.end(t, heldAnswer{status: http.StatusServiceUnavailable})
	waitFor(t, "the long poll to stop", func() bool { return fetcher.LongPollsRunning(f.r) == 0 })

	wantErr := fmt.Sprintf(`fetcher: west.example: GET %s: the endpoint answered "503 Service Unavailable", not 200 OK or 304 Not Modified`, f.peer.url)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, LastError: wantErr, Failures: 1, NextRefresh: t0.Add(10 * time.Second)})
	checkLogs(t, f.logs.take(),
		updatedLogV1+rfc3339(t0.Add(time.Hour)),
		pushOnLog,
		"WARN fetcher: fetching a federated bundle failed; keeping the last good one federated_trust_domain=west.example error="+wantErr+" failures=1 next_attempt="+rfc3339(t0.Add(10*time.Second)),
		"INFO fetcher: stopped long polling a federated bundle endpoint; fetching it on schedule until a fetch succeeds federated_trust_domain=west.example")

	// Due after the backoff: Run's pass asks conditionally, and the 304
	// starts the long poll again, which is Push once the endpoint held it.
	f.clock.advance(10 * time.Second)
	fetcher.Wake(f.r)
	f.peer.waitHeld(t, "v1")
	then := t0.Add(10 * time.Second)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: then, LastSuccess: then, NextRefresh: then.Add(time.Hour)})
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: then, LastSuccess: then, NextRefresh: then.Add(time.Hour), Push: true})
	checkRequests(t, f.peer,
		firstFetch,
		longPollV1+" → 304"+waited,
		longPollV1+" → 503",
		"GET If-None-Match:v1 → 304",
		longPollV1+" → 304"+waited)
	checkLogs(t, f.logs.take(),
		"INFO fetcher: fetching a federated bundle works again federated_trust_domain=west.example failed_attempts=1",
		pushOnLog)
	f.checkStored(t, f.v1, 1, 1)
}

// TestLongPollOvertaken: a Refresh stores v2 while a long poll waits; the
// long poll's late answer, v1, is dropped instead of stored over v2, and
// the next long poll waits on v2.
func TestLongPollOvertaken(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")

	f.peer.setQuietly(t, "v2", f.v2)
	if err := f.r.Refresh(context.Background(), west); err != nil {
		t.Fatal(err)
	}
	f.checkStored(t, f.v2, 2, 2)
	f.peer.end(t, heldAnswer{body: marshal(t, f.v1)})
	f.peer.waitHeld(t, "v2")
	f.checkStored(t, f.v2, 2, 2)
	checkRequests(t, f.peer,
		firstFetch,
		longPollV1+" → 304"+waited,
		"GET If-None-Match:v1 → 200",
		longPollV1+" → 200"+waited)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour), Push: true})
}

// TestLongPollAfterBundleSet: while the endpoint is long-polled, an
// operator sets a bundle by hand. A 304 cannot keep that bundle, so the
// next request is a plain fetch, whose bundle replaces it; then long
// polling goes on.
func TestLongPollAfterBundleSet(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")

	handSet := newCA(t, west, caTTL).bundle(t, 9, time.Hour)
	if err := f.store.SetFederatedBundle(context.Background(), handSet); err != nil {
		t.Fatal(err)
	}
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")
	f.checkStored(t, f.v1, 3, 2)
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour)})
	f.peer.end(t, heldAnswer{status: http.StatusNotModified})
	f.peer.waitHeld(t, "v1")
	f.checkStatus(t, fetcher.PeerStatus{LastAttempt: t0, LastSuccess: t0, NextRefresh: t0.Add(time.Hour), Push: true})
	checkRequests(t, f.peer,
		firstFetch,
		longPollV1+" → 304"+waited,
		longPollV1+" → 304"+waited,
		"GET → 200",
		longPollV1+" → 304"+waited)
}

// TestLongPollSpacing: an endpoint that answers every long poll at once,
// claiming to have waited, gets one no sooner than the spacing after the
// previous one began.
func TestLongPollSpacing(t *testing.T) {
	const spacing = 200 * time.Millisecond
	f := startPush(t, answersAtOnce, spacing)
	waitFor(t, "three long polls", func() bool { return len(f.peer.longPollTimes()) >= 3 })
	// The n-th long poll begins at least (n-1)·spacing after the first,
	// which begins after Run started.
	if d := f.peer.longPollTimes()[2].Sub(f.began); d < 2*spacing {
		t.Fatalf("the third long poll came %s after Run started, want at least %s", d, 2*spacing)
	}
	if got := fetcher.LongPollsStarted(f.r); got != 1 {
		t.Fatalf("%d long-poll goroutines started, want 1", got)
	}
}

// TestRunStopsLongPolls: when Run's context is done, Run returns only after
// the long poll's goroutine did, and the held request is dropped.
func TestRunStopsLongPolls(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	if got := fetcher.LongPollsRunning(f.r); got != 1 {
		t.Fatalf("%d long polls running, want 1", got)
	}
	f.stopRun()
	if got := fetcher.LongPollsRunning(f.r); got != 0 {
		t.Fatalf("Run returned with %d long polls running", got)
	}
	waitFor(t, "the held request to end", func() bool { return f.peer.inFlight.Load() == 0 })
	if got := fetcher.LongPollsStarted(f.r); got != 1 {
		t.Fatalf("%d long polls started, want 1", got)
	}
	if st := f.r.Status()[0]; st.LastError != "" || st.Failures != 0 || st.Push {
		t.Fatalf("status after Run stopped: %+v", st)
	}
}

// TestLongPollConcurrent changes the peer's bundle while Refresh calls and
// Status reads run beside the long poll, for the race detector; no two
// writes of the peer's bundle overlap.
func TestLongPollConcurrent(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	westCA := newCA(t, west, caTTL)
	var versions []*spiffebundle.Bundle
	for i := range 10 {
		versions = append(versions, westCA.bundle(t, uint64(i+3), time.Hour))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i, b := range versions {
			f.peer.set(t, fmt.Sprintf("v%d", i+3), b)
			runtime.Gosched()
		}
	})
	for range 3 {
		wg.Go(func() {
			for range 5 {
				if err := f.r.Refresh(context.Background(), west); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			f.r.Status()
			runtime.Gosched()
		}
	})
	wg.Wait()
	if err := f.r.Refresh(context.Background(), west); err != nil {
		t.Fatal(err)
	}
	last := versions[len(versions)-1]
	if got := f.store.get(west); !got.Equal(last) {
		t.Fatal("the last bundle is not stored")
	}
	if got := f.store.overlapCount(); got != 0 {
		t.Fatalf("%d writes overlapped", got)
	}
	if st := f.r.Status()[0]; st.LastError != "" {
		t.Fatalf("status: %+v", st)
	}
}

// TestRefresherNotModified drives the schedule (no Run, so no long poll):
// a fetch asks with the ETag of the last good answer, and a 304 is a
// success that stores nothing; a fetch after the operator replaced the
// stored bundle asks without it, and stores the endpoint's bundle again.
func TestRefresherNotModified(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	v1 := westCA.bundle(t, 1, 5*time.Minute)
	v2 := westCA.bundle(t, 2, 5*time.Minute)
	handSet := westCA.bundle(t, 7, 5*time.Minute)
	p := newPushPeer(t, webCA, speaksPush, "v1", v1)
	peer := fetcher.Peer{TrustDomain: west, URL: p.url, Profile: fetcher.ProfileHTTPSWeb}
	h := newHarness(t, newStore(), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
	status := func(t *testing.T, want fetcher.PeerStatus) {
		t.Helper()
		want.TrustDomain, want.URL, want.Profile = west, p.url, fetcher.ProfileHTTPSWeb
		want.RefreshHint, want.RefreshInterval = 5*time.Minute, 5*time.Minute
		want.X509Authorities, want.JWTAuthorities = 1, 1
		want.EarliestExpiry = westCA.root.NotAfter
		if got := h.r.Status()[0]; !reflect.DeepEqual(got, want) {
			t.Fatalf("status:\n got %+v\nwant %+v", got, want)
		}
	}
	seq1 := uint64(1)
	minutes := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

	h.pass(t, minutes(5))
	h.logs.take()

	// Due: 304, a success that stores nothing and pushes nothing.
	h.clock.set(minutes(5))
	h.pass(t, minutes(10))
	if h.store.writeCount() != 1 || len(h.changes()) != 1 {
		t.Fatalf("%d writes and %d OnChange calls, want 1 and 1", h.store.writeCount(), len(h.changes()))
	}
	status(t, fetcher.PeerStatus{LastAttempt: minutes(5), LastSuccess: minutes(5), NextRefresh: minutes(10), Sequence: &seq1})
	checkLogs(t, h.logs.take())

	// A failure, then a 304 again: the failures reset.
	p.fail(http.StatusServiceUnavailable)
	h.clock.set(minutes(10))
	h.pass(t, minutes(10).Add(10*time.Second))
	p.fail(0)
	h.clock.advance(10 * time.Second)
	h.pass(t, minutes(15).Add(10*time.Second))
	status(t, fetcher.PeerStatus{LastAttempt: minutes(10).Add(10 * time.Second), LastSuccess: minutes(10).Add(10 * time.Second),
		NextRefresh: minutes(15).Add(10 * time.Second), Sequence: &seq1})
	checkLogs(t, h.logs.take(),
		"WARN fetcher: fetching a federated bundle failed; keeping the last good one federated_trust_domain=west.example error=fetcher: west.example: GET "+p.url+
			`: the endpoint answered "503 Service Unavailable", not 200 OK or 304 Not Modified failures=1 next_attempt=`+rfc3339(minutes(10).Add(10*time.Second)),
		"INFO fetcher: fetching a federated bundle works again federated_trust_domain=west.example failed_attempts=1")

	// The operator sets a bundle by hand: the next fetch cannot be
	// answered 304, since that would keep it; the endpoint's replaces it.
	if err := h.store.SetFederatedBundle(context.Background(), handSet); err != nil {
		t.Fatal(err)
	}
	h.clock.set(minutes(20))
	h.pass(t, minutes(25))
	if got := h.store.get(west); !got.Equal(v1) {
		t.Fatal("the endpoint's bundle did not replace the one set by hand")
	}

	// The endpoint's bundle changes: the conditional GET gets it.
	p.set(t, "v2", v2)
	h.clock.set(minutes(25))
	h.pass(t, minutes(30))
	if got := h.store.get(west); !got.Equal(v2) {
		t.Fatal("v2 was not stored")
	}
	if got := len(h.changes()); got != 3 {
		t.Fatalf("%d OnChange calls, want 3", got)
	}
	checkRequests(t, p,
		"GET → 200",
		"GET If-None-Match:v1 → 304",
		"GET If-None-Match:v1 → 503",
		"GET If-None-Match:v1 → 304",
		"GET → 200",
		"GET If-None-Match:v1 → 200")
	if got := fetcher.LongPollsStarted(h.r); got != 0 {
		t.Fatalf("%d long polls without Run, want none", got)
	}
}

// TestLongPollMeshfedEndpoint long-polls the real meshfed bundle endpoint:
// a change of its bundle is stored at once, and the endpoint is then
// long-polled (Push).
func TestLongPollMeshfedEndpoint(t *testing.T) {
	webCA := newCA(t, east, caTTL)
	westCA := newCA(t, west, caTTL)
	v1 := westCA.bundle(t, 1, time.Hour)
	v2 := westCA.bundle(t, 2, time.Hour)
	ep := webEndpoint(t, west, webCA, v1)
	peer := fetcher.Peer{TrustDomain: west, URL: ep.url(), Profile: fetcher.ProfileHTTPSWeb}
	h := newHarness(t, newStore(), fetcher.Config{Peers: []fetcher.Peer{peer}, RootCAs: webCA.pool()})
	runRefresher(t, h.r)

	select {
	case <-ep.bundle.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the endpoint holds no long poll within 10s")
	}
	ep.bundle.set(v2)
	// The endpoint counts an answer after sending it, and OnChange runs
	// after the status is updated: wait for all of it.
	waitFor(t, "v2 to be stored and pushed, by a long poll", func() bool {
		return h.store.get(west).Equal(v2) && len(h.changes()) == 2 && h.r.Status()[0].Push &&
			reflect.DeepEqual(ep.srv.Requests(), map[int]uint64{http.StatusOK: 2})
	})
	if got := h.changes(); !reflect.DeepEqual(got, []spiffeid.TrustDomain{west, west}) {
		t.Fatalf("OnChange calls %v, want [west.example west.example]", got)
	}
	if st := h.r.Status()[0]; !st.NextRefresh.Equal(t0.Add(time.Hour)) || st.LastError != "" {
		t.Fatalf("status %+v, want the next refresh an hour after t0 and no error", st)
	}
}

// TestNewLongPollWait: LongPollWait is whole seconds, and not negative.
func TestNewLongPollWait(t *testing.T) {
	for _, tc := range []struct {
		wait    time.Duration
		wantErr string
	}{
		{0, ""},
		{45 * time.Second, ""},
		{-time.Second, "fetcher: LongPollWait is negative (-1s)"},
		{1500 * time.Millisecond, "fetcher: LongPollWait 1.5s is not a whole number of seconds, which is what Prefer: wait counts"},
	} {
		_, err := fetcher.New(fetcher.Config{Store: newStore(), LongPollWait: tc.wait})
		if errText(err) != tc.wantErr {
			t.Errorf("LongPollWait %s: error %v, want %q", tc.wait, err, tc.wantErr)
		}
	}
}

// TestSetPeers: a peer removed by SetPeers has its held long poll ended and
// nothing of it is stored after SetPeers returns, even if its bundle
// changes; added back, it is fetched at once; the same configuration again
// changes nothing; a peer whose endpoint changed is fetched again at once.
func TestSetPeers(t *testing.T) {
	f := startPush(t, speaksPush, 0)
	f.peer.waitHeld(t, "v1")
	peer := fetcher.Peer{TrustDomain: west, URL: f.peer.url, Profile: fetcher.ProfileHTTPSWeb}
	roots := fetcher.RootCAsOf(f.r)

	added, changed, removed, err := f.r.SetPeers(nil, roots)
	if err != nil || len(added)+len(changed) != 0 || !reflect.DeepEqual(removed, []spiffeid.TrustDomain{west}) {
		t.Fatalf("SetPeers(none): added %v, changed %v, removed %v, %v", added, changed, removed, err)
	}
	waitFor(t, "the removed peer's long poll to end", func() bool {
		return fetcher.LongPollsRunning(f.r) == 0 && f.peer.inFlight.Load() == 0
	})
	f.peer.set(t, "v2", f.v2)
	if len(f.r.Status()) != 0 {
		t.Errorf("status after the removal: %+v", f.r.Status())
	}
	if err := f.r.Refresh(context.Background(), west); errText(err) != `fetcher: "west.example" is not a configured federation peer` {
		t.Errorf("Refresh of the removed peer: %v", err)
	}
	f.checkStored(t, f.v1, 1, 1) // v2 was not fetched

	if added, _, _, err := f.r.SetPeers([]fetcher.Peer{peer}, roots); err != nil || !reflect.DeepEqual(added, []spiffeid.TrustDomain{west}) {
		t.Fatalf("SetPeers(west) again: added %v, %v", added, err)
	}
	f.peer.waitHeld(t, "v2") // fetched at once, then long-polled
	f.checkStored(t, f.v2, 2, 2)
	started := fetcher.LongPollsStarted(f.r)

	if a, c, r, err := f.r.SetPeers([]fetcher.Peer{peer}, roots); err != nil || len(a)+len(c)+len(r) != 0 {
		t.Fatalf("the same peers again: added %v, changed %v, removed %v, %v", a, c, r, err)
	}
	if got := fetcher.LongPollsStarted(f.r); got != started {
		t.Errorf("the same peers again started %d long polls", got-started)
	}

	moved := peer
	moved.URL = f.peer.url + "/bundle"
	if _, c, _, err := f.r.SetPeers([]fetcher.Peer{moved}, roots); err != nil || !reflect.DeepEqual(c, []spiffeid.TrustDomain{west}) {
		t.Fatalf("a new URL: changed %v, %v", c, err)
	}
	waitFor(t, "the moved peer to be fetched and long-polled again", func() bool {
		return fetcher.LongPollsStarted(f.r) == started+1 && fetcher.LongPollsRunning(f.r) == 1
	})
	if st := f.r.Status(); len(st) != 1 || st[0].URL != moved.URL {
		t.Errorf("status after the move: %+v", st)
	}

	if _, _, _, err := f.r.SetPeers([]fetcher.Peer{peer, peer}, roots); err == nil || err.Error() != "fetcher: west.example: configured twice; give one bundle endpoint per trust domain" {
		t.Errorf("a peer twice: %v", err)
	}
}
