package workloadapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// dial opens a connection of its own to the socket and makes sure it is
// connected (or refused) before returning, by making a first call.
func dialOwn(t *testing.T, path string) (*grpc.ClientConn, workload.SpiffeWorkloadAPIClient) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, workload.NewSpiffeWorkloadAPIClient(conn)
}

// openStream opens a FetchX509SVID stream and returns it after its first
// response, or the error of the call.
func openStream(t *testing.T, c workload.SpiffeWorkloadAPIClient) (cancel func(), err error) {
	t.Helper()
	ctx, cancel := context.WithCancel(withHeader(t.Context()))
	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return cancel, nil
}

// serveGated serves w's source as serve does, with cfg's other settings,
// behind a gate made of gcfg, whose connections the attestor admits; reg
// holds the gate's metrics.
func serveGated(t *testing.T, w *world, gcfg admit.Config, cfg workloadapi.Config) (path string, gate *admit.Gate, reg *prometheus.Registry) {
	t.Helper()
	gate, err := admit.New(gcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source, cfg.Gate = w.src, gate
	if cfg.Attestor, err = attest.New(attest.Config{Admit: gate.Conn}); err != nil {
		t.Fatal(err)
	}
	reg = prometheus.NewRegistry()
	reg.MustRegister(gate.Collectors()...)
	return serve(t, cfg), gate, reg
}

func TestWorkloadLimits(t *testing.T) {
	w := newWorld(t)
	var log testsync.Buffer
	path, gate, reg := serveGated(t, w, admit.Config{
		Limits: admit.Limits{Conns: 10, ConnsPerUID: 2, Calls: 10, CallsPerUID: 3},
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
	}, workloadapi.Config{})
	uid := uint32(os.Geteuid())
	usage := func() (conns, calls int) {
		_, _, conns, calls = gate.Usage(uid)
		return conns, calls
	}

	// Connections: two of this uid are admitted, a third is closed at once.
	conn1, c1 := dialOwn(t, path)
	_, c2 := dialOwn(t, path)
	var streams []func()
	for _, c := range []workload.SpiffeWorkloadAPIClient{c1, c2} {
		cancel, err := openStream(t, c)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, cancel)
	}
	// The refused connection's first call is answered with the reason.
	_, c3 := dialOwn(t, path)
	want := fmt.Sprintf("admit: uid %d holds as many connections to this agent as limits.max_connections_per_uid allows (2); a process of that user may be leaking them (close streams and connections when done)", uid)
	if _, err := openStream(t, c3); status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != want {
		t.Fatalf("a third connection of one uid: %v, want ResourceExhausted %q", err, want)
	}
	if conns, calls := usage(); conns != 2 || calls != 2 {
		t.Fatalf("usage: %d connections, %d calls; want 2 and 2", conns, calls)
	}
	if !strings.Contains(log.String(), want) {
		t.Fatalf("the refusal is not logged with its reason:\n%s", log.String())
	}

	// Calls: a third stream is admitted, a fourth call of any kind is
	// refused with the limit's name, and a closed stream gives its place back.
	cancel, err := openStream(t, c1)
	if err != nil {
		t.Fatal(err)
	}
	streams = append(streams, cancel)
	want = fmt.Sprintf("admit: uid %d holds as many calls to this agent as limits.max_calls_per_uid allows (3); a process of that user may be leaking them (close streams and connections when done)", uid)
	if _, err := openStream(t, c2); status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != want {
		t.Fatalf("a fourth stream: %v, want ResourceExhausted %q", err, want)
	}
	_, err = c2.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "b"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a unary call past the limit: %v, want ResourceExhausted", err)
	}
	if got := metric(t, reg, "meshfed_agent_calls_in_flight", "method", "SpiffeWorkloadAPI/FetchX509SVID"); got != 3 {
		t.Fatalf("FetchX509SVID streams in flight = %v, want 3", got)
	}
	streams[0]()
	testsync.Eventually(t, "the closed stream's release", func() bool { _, calls := usage(); return calls == 2 })
	if cancel, err = openStream(t, c2); err != nil {
		t.Fatalf("a stream after one closed: %v", err)
	}
	streams = append(streams, cancel)

	// A closed connection gives its place back, and its stream's.
	conn1.Close()
	testsync.Eventually(t, "the closed connection's release", func() bool { conns, calls := usage(); return conns == 1 && calls == 2 })
	_, c4 := dialOwn(t, path)
	if cancel, err = openStream(t, c4); err != nil {
		t.Fatalf("a new connection after one closed: %v", err)
	}
	streams = append(streams, cancel)

	for _, m := range []struct {
		what, limit string
		want        float64
	}{
		{"call", "max_calls_per_uid", 2},
		{"connection", "max_connections_per_uid", 1},
	} {
		if got := metric(t, reg, "meshfed_agent_workload_refused_total", "what", m.what, "limit", m.limit); got != m.want {
			t.Errorf("refused %s for %s = %v, want %v", m.what, m.limit, got, m.want)
		}
	}
	if got := metric(t, reg, "meshfed_agent_calls_total", "method", "SpiffeWorkloadAPI/ValidateJWTSVID", "code", "ResourceExhausted"); got != 1 {
		t.Errorf("ValidateJWTSVID calls refused = %v, want 1", got)
	}
	for _, s := range streams {
		s()
	}
}

// metric is the value of the counter or gauge of name whose labels
// include the given name-value pairs, failing the test if there is none.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	m := series(t, reg, name, labels...)
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	return 0
}

// histogram is the histogram of name whose labels include the given
// name-value pairs, failing the test if there is none.
func histogram(t *testing.T, reg *prometheus.Registry, name string, labels ...string) *dto.Histogram {
	t.Helper()
	h := series(t, reg, name, labels...).GetHistogram()
	if h == nil {
		t.Fatalf("%s%v is not a histogram", name, labels)
	}
	return h
}

// series is the first series of name whose labels include the given
// name-value pairs, failing the test if there is none.
func series(t *testing.T, reg *prometheus.Registry, name string, labels ...string) *dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			return m
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return nil
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// TestSilentConnectionClosed: a connection that never begins HTTP/2 is
// closed after Config.HandshakeTimeout, giving its place back.
func TestSilentConnectionClosed(t *testing.T) {
	w := newWorld(t)
	path, gate, _ := serveGated(t, w, admit.Config{Limits: admit.Limits{ConnsPerUID: 1}}, workloadapi.Config{HandshakeTimeout: 200 * time.Millisecond})
	silent, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	uid := uint32(os.Geteuid())
	testsync.Eventually(t, "the silent connection's admission", func() bool { _, _, conns, _ := gate.Usage(uid); return conns == 1 })
	// The server sends its SETTINGS and then closes it: reading ends (EOF,
	// or a reset) before the test's deadline.
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, silent); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the silent connection was not closed by the server: %v", err)
	}
	testsync.Eventually(t, "the silent connection's release", func() bool { _, _, conns, _ := gate.Usage(uid); return conns == 0 })
	_, c := dialOwn(t, path)
	cancel, err := openStream(t, c)
	if err != nil {
		t.Fatalf("a connection after the silent one was closed: %v", err)
	}
	cancel()
}

// TestCallsTimedToFirstResponse: the gate times each admitted call to its
// first response (meshfed_agent_call_first_response_seconds): a unary call
// to its return, error or not, and a stream to its first message only. The
// gate's clock steps 300µs each time it is read, so a call it times takes
// exactly one step.
func TestCallsTimedToFirstResponse(t *testing.T) {
	w := newWorld(t)
	const step = 300 * time.Microsecond
	var reads atomic.Int64
	t0 := time.Now()
	clock := func() time.Time { return t0.Add(time.Duration(reads.Add(1)) * step) }
	path, _, reg := serveGated(t, w, admit.Config{Clock: clock}, workloadapi.Config{})
	_, c := dialOwn(t, path)
	const name = "meshfed_agent_call_first_response_seconds"
	timed := func(method string) *dto.Histogram {
		return histogram(t, reg, name, "method", "SpiffeWorkloadAPI/"+method)
	}

	// A stream: its first message is timed, and a second one (the source
	// changed) is not.
	ctx, cancel := context.WithCancel(withHeader(t.Context()))
	defer cancel()
	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// (Observed just after the message was handed to gRPC, which may be
	// after it arrived here.)
	testsync.Eventually(t, "the first message's timing", func() bool { return timed("FetchX509SVID").GetSampleCount() == 1 })
	w.src.update(func(f *fakeSource) { f.entries = f.entries[:2] })
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()

	// A unary call refused by the handler is timed too.
	_, err = c.ValidateJWTSVID(withHeader(t.Context()), &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "not-a-token"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID of a malformed token: %v, want InvalidArgument", err)
	}

	// A stream that ends without a message (no identity) is not.
	w.src.update(func(f *fakeSource) { f.entries = nil })
	_, err = openStream(t, c)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509SVID without an identity: %v, want PermissionDenied", err)
	}

	for method, want := range map[string]uint64{"FetchX509SVID": 1, "ValidateJWTSVID": 1} {
		h := timed(method)
		if h.GetSampleCount() != want || h.GetSampleSum() != step.Seconds() {
			t.Errorf("%s: %d calls timed, %v s in all; want %d, %v s", method, h.GetSampleCount(), h.GetSampleSum(), want, step.Seconds())
		}
		// Bucket by bucket: none up to 250µs, all from 500µs.
		for _, b := range h.GetBucket() {
			wantIn := want
			if b.GetUpperBound() < step.Seconds() {
				wantIn = 0
			}
			if b.GetCumulativeCount() != wantIn {
				t.Errorf("%s: %d calls at most %v s, want %d", method, b.GetCumulativeCount(), b.GetUpperBound(), wantIn)
			}
		}
	}
}
