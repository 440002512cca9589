package workloadapi_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshfed/meshfed/internal/agent/admit"
	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// The Workload API benchmarks run a real Server (New and Run on a unix
// socket in a temporary directory) with the real attestor, the test
// process being the workload: each connection pays for SO_PEERCRED and a
// /proc read when it is accepted (before the clock starts: workloads keep
// their connection), and each call for the /proc reads and user and group
// lookups of attest.AttestPeer. The Source is the tests' fakeSource with
// one SVID for the process's uid, federating with west, and the JWT bundles
// of east and west; the Server has its defaults (a verified-token cache of
// 1000 JWT-SVIDs). The clients are in the same process, each with its own
// connection, as workloads are separate processes; they share the CPUs
// with the server.
//
// Beside each call, in the same run, the ceiling is a bare gRPC round trip
// of the same shape on the same kind of socket with the same transport
// credentials and the same metadata: grpc.health.v1.Health/Watch (a new
// server stream, its first response, close) for FetchX509SVID, and
// Health/Check (unary) for ValidateJWTSVID. The "+attest" ceilings add the
// one thing every Workload API call must do that another package does:
// attest.AttestPeer per call. What remains is the Workload API's own work.
// docs/performance.md records the figures.

// benchClients are the numbers of concurrent clients measured.
var benchClients = []int{1, 100, 1000}

// benchAudience is the audience of the JWT-SVID ValidateJWTSVID checks.
const benchAudience = "spiffe://east.example/reports"

// benchDistinctTokens is how many distinct JWT-SVIDs validate-jwtsvid-distinct
// cycles through: more than the server's verified-token cache keeps (1000 by
// default, the oldest dropped first), so that none is still kept when it
// comes round again and every call verifies a signature.
const benchDistinctTokens = 4096

// benchEnv is a running Workload API server, the two ceiling servers, and
// what their clients send.
type benchEnv struct {
	wl, bare, attested string   // socket paths
	verified           string   // the bare server verifying an ECDSA signature per call
	token              string   // a JWT-SVID for benchAudience
	distinct           []string // benchDistinctTokens others, each with its own jti
	nextDistinct       atomic.Uint64
	want               spiffeid.ID
	agent              *prometheus.Registry // the Workload API's gate's metrics
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	eastD, westD := benchDomain(b, east), benchDomain(b, west)
	svid := benchSVID(b, eastD, "/ns/default/sa/reviews")
	src := newSource(eastD.bundle(), westD.bundle())
	src.jwtLocal = eastD.jwtBundle()
	src.jwtFederated = []*jwtbundle.Bundle{westD.jwtBundle()}
	src.entries = []entry{
		{selectors: []string{myUID}, id: workloadapi.Identity{SVID: svid, FederatesWith: []spiffeid.TrustDomain{west}}},
		{selectors: []string{otherUID}, id: workloadapi.Identity{SVID: benchSVID(b, eastD, "/other")}},
	}

	// The agent's admission gate, with its default limits, as the binary
	// runs it on the Workload API (not on the ceilings' servers).
	gate, err := admit.New(admit.Config{})
	if err != nil {
		b.Fatal(err)
	}
	a, err := attest.New(attest.Config{Admit: gate.Conn})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	e := &benchEnv{
		wl:       filepath.Join(dir, "agent.sock"),
		bare:     filepath.Join(dir, "bare.sock"),
		attested: filepath.Join(dir, "attested.sock"),
		verified: filepath.Join(dir, "verified.sock"),
		token:    benchToken(b, eastD, svid.ID, ""),
		want:     svid.ID,
		agent:    prometheus.NewRegistry(),
	}
	e.agent.MustRegister(gate.Collectors()...)
	e.distinct = make([]string, benchDistinctTokens)
	for i := range e.distinct {
		e.distinct[i] = benchToken(b, eastD, svid.ID, strconv.Itoa(i))
	}
	// Logging as the agent does by default: text at info, here discarded.
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := workloadapi.New(workloadapi.Config{SocketPath: e.wl, Source: src, Attestor: a, Logger: logger, Gate: gate})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	})

	// The ceilings' servers attest as the Workload API does, without the
	// gate (whose per-uid bound counts every connection it admits).
	a, err = attest.New(attest.Config{})
	if err != nil {
		b.Fatal(err)
	}
	serveHealth(b, e.bare, workloadapi.TransportOptions(a)...)
	attestUnary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if _, err := a.AttestPeer(ctx); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	attestStream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if _, err := a.AttestPeer(ss.Context()); err != nil {
			return err
		}
		return h(srv, ss)
	}
	serveHealth(b, e.attested, append(workloadapi.TransportOptions(a),
		grpc.UnaryInterceptor(attestUnary), grpc.StreamInterceptor(attestStream))...)
	serveHealth(b, e.verified, append(workloadapi.TransportOptions(a), grpc.UnaryInterceptor(verifyUnary(b)))...)
	return e
}

// verifyUnary is the interceptor of the ceiling of validating a new
// JWT-SVID: the one thing a new token's validation cannot skip, an ES256
// (ECDSA P-256, SHA-256) signature verified per call, a different
// signature each time, as a new token has.
func verifyUnary(b *testing.B) grpc.UnaryServerInterceptor {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	type signed struct {
		digest [32]byte
		sig    []byte
	}
	sigs := make([]signed, benchDistinctTokens)
	for i := range sigs {
		sigs[i].digest = sha256.Sum256([]byte(strconv.Itoa(i)))
		if sigs[i].sig, err = ecdsa.SignASN1(rand.Reader, key, sigs[i].digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		s := &sigs[(next.Add(1)-1)%uint64(len(sigs))]
		if !ecdsa.VerifyASN1(&key.PublicKey, s.digest[:], s.sig) {
			return nil, errors.New("bench: the signature does not verify")
		}
		return h(ctx, req)
	}
}

// serveHealth serves the gRPC health service, reporting SERVING, on a unix
// socket at path until the benchmark ends.
func serveHealth(b *testing.B, path string, opts ...grpc.ServerOption) {
	b.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	b.Cleanup(srv.Stop)
}

// benchDomain is newDomain for a benchmark.
func benchDomain(b *testing.B, td spiffeid.TrustDomain) *domain {
	b.Helper()
	key := func() crypto.Signer {
		k, err := pki.GenerateKey(pki.ECP256)
		if err != nil {
			b.Fatal(err)
		}
		return k
	}
	rootKey, intKey := key(), key()
	root, err := pki.CreateRoot(pki.RootRequest{Signer: rootKey, Now: t0, TTL: 24 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	clock := func() time.Time { return t0 }
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{root}, Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: intKey.Public(), TrustDomain: td, TTL: 12 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: intKey, Chain: chain, Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	return &domain{td: td, root: root, ca: ca, jwtKey: key(), kid: td.Name() + "-jwt"}
}

// benchSVID is domain.svid for a benchmark: an SVID for path, valid for an
// hour from t0.
func benchSVID(b *testing.B, d *domain, path string) *x509svid.SVID {
	b.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromPath(d.td, path)
	chain, err := d.ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

// benchToken is domain.jwtToken for a benchmark: a JWT-SVID for id and
// benchAudience, valid for an hour, with jti as its jti claim if not empty.
func benchToken(b *testing.B, d *domain, id spiffeid.ID, jti string) string {
	b.Helper()
	return testjwt.Sign(b, jose.ES256, d.jwtKey, d.kid, "JWT", jwt.Claims{
		Subject: id.String(), Audience: []string{benchAudience}, ID: jti,
		Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour)), IssuedAt: jwt.NewNumericDate(time.Now()),
	})
}

// benchCtx carries the security header; the ceilings get it too, so that
// every call puts the same bytes on the wire.
var benchCtx = metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")

// A benchCall is one operation a client makes on its connection.
type benchCall func(*grpc.ClientConn) error

func (e *benchEnv) fetchX509SVID(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(benchCtx)
	defer cancel() // closes the stream
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	if len(resp.GetSvids()) != 1 || resp.Svids[0].GetSpiffeId() != e.want.String() || len(resp.GetFederatedBundles()) != 1 {
		return fmt.Errorf("FetchX509SVID: %d SVIDs, %d federated bundles; want %s and west's bundle", len(resp.GetSvids()), len(resp.GetFederatedBundles()), e.want)
	}
	return nil
}

func (e *benchEnv) validateJWTSVID(conn *grpc.ClientConn) error {
	return e.validate(conn, e.token)
}

// validateDistinct validates the next of e.distinct, round and round.
func (e *benchEnv) validateDistinct(conn *grpc.ClientConn) error {
	return e.validate(conn, e.distinct[(e.nextDistinct.Add(1)-1)%uint64(len(e.distinct))])
}

func (e *benchEnv) validate(conn *grpc.ClientConn, token string) error {
	resp, err := workload.NewSpiffeWorkloadAPIClient(conn).ValidateJWTSVID(benchCtx, &workload.ValidateJWTSVIDRequest{Audience: benchAudience, Svid: token})
	if err != nil {
		return err
	}
	if resp.GetSpiffeId() != e.want.String() {
		return fmt.Errorf("ValidateJWTSVID: %q, want %s", resp.GetSpiffeId(), e.want)
	}
	return nil
}

// healthWatch is the ceiling of FetchX509SVID: a new server stream, its
// first response, close.
func healthWatch(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(benchCtx)
	defer cancel()
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("Health/Watch: %s", resp.GetStatus())
	}
	return nil
}

// healthCheck is the ceiling of ValidateJWTSVID: a unary round trip.
func healthCheck(conn *grpc.ClientConn) error {
	resp, err := healthpb.NewHealthClient(conn).Check(benchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("Health/Check: %s", resp.GetStatus())
	}
	return nil
}

// dialClients opens n connections to the socket at path, each made ready
// by one call of warm, and closes them when the benchmark ends.
func dialClients(b testing.TB, path string, n int, warm benchCall) []*grpc.ClientConn {
	b.Helper()
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		conns[i] = conn
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for _, conn := range conns {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := warm(conn); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return conns
}

// runClients makes b.N calls from one goroutine per connection, each
// calling again as soon as its last call returns (a closed loop), and
// reports, besides ns/op, the throughput (ops/s), the CPU time of the whole
// process per call (cpu-ns/op: server and clients, as they share the CPUs),
// and the median and 99th percentile of the calls' latencies (p50-µs,
// p99-µs).
func runClients(b *testing.B, conns []*grpc.ClientConn, call benchCall) {
	b.Helper()
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, conn := range conns {
		wg.Go(func() {
			<-start
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t := time.Now()
				if err := call(conn); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	b.ReportAllocs()
	cpu := processCPU(b)
	b.ResetTimer()
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	b.StopTimer()
	cpu = processCPU(b) - cpu

	reportLatencies(b, lat, elapsed, cpu)
}

// reportLatencies reports the throughput of b.N calls in elapsed, the CPU
// time per call and the median and 99th percentile of their latencies.
func reportLatencies(b *testing.B, lat []time.Duration, elapsed, cpu time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(percentile(lat, 50))/1e3, "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99))/1e3, "p99-µs")
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (len(sorted)*p + 99) / 100 // ceil(len·p/100), 1-based
	return sorted[max(rank, 1)-1]
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// requireFiles fails the benchmark unless the process may open need files.
// (Go raises the soft RLIMIT_NOFILE to the hard limit at start; this only
// raises it again in case something lowered it.)
func requireFiles(b *testing.B, need uint64) {
	b.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	if rl.Cur >= need {
		return
	}
	if rl.Max < need {
		b.Fatalf("the benchmark needs %d open files and the hard limit is %d; raise it (ulimit -Hn %d, as root)", need, rl.Max, need)
	}
	rl.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatalf("raising the open files limit to %d: %v", need, err)
	}
}

// BenchmarkWorkloadAPI measures, with 1, 100 and 1000 clients each on its
// own connection calling in a closed loop:
//
//   - fetch-x509svid: FetchX509SVID, from opening the stream to its first
//     response (the SVID, its key, the bundle and west's), then closed;
//   - ceiling-stream: Health/Watch the same way on the bare server;
//   - ceiling-stream+attest: the same with attest.AttestPeer per stream;
//   - validate-jwtsvid: ValidateJWTSVID of one ES256 JWT-SVID of east, the
//     same token every call, as a workload validates the bearer token of a
//     peer again and again: after the first call the server's
//     verified-token cache answers (no signature check);
//   - validate-jwtsvid-distinct: ValidateJWTSVID of a different ES256
//     JWT-SVID each call, from a pool of benchDistinctTokens, more than the
//     cache keeps: every call verifies a signature (and pays for putting
//     the token in the cache), as the first validation of a token does;
//   - ceiling-unary: Health/Check on the bare server;
//   - ceiling-unary+attest: the same with attest.AttestPeer per call.
func BenchmarkWorkloadAPI(b *testing.B) {
	// Three sets of connections, each with a descriptor at both ends.
	requireFiles(b, uint64(6*slices.Max(benchClients)+256))
	e := newBenchEnv(b)
	for _, n := range benchClients {
		b.Run("clients="+strconv.Itoa(n), func(b *testing.B) {
			wl := dialClients(b, e.wl, n, e.fetchX509SVID)
			bare := dialClients(b, e.bare, n, healthCheck)
			attested := dialClients(b, e.attested, n, healthCheck)
			for _, bc := range []struct {
				name  string
				conns []*grpc.ClientConn
				call  benchCall
			}{
				{"fetch-x509svid", wl, e.fetchX509SVID},
				{"ceiling-stream", bare, healthWatch},
				{"ceiling-stream+attest", attested, healthWatch},
				{"validate-jwtsvid", wl, e.validateJWTSVID},
				{"validate-jwtsvid-distinct", wl, e.validateDistinct},
				{"ceiling-unary", bare, healthCheck},
				{"ceiling-unary+attest", attested, healthCheck},
			} {
				b.Run(bc.name, func(b *testing.B) { runClients(b, bc.conns, bc.call) })
			}
		})
	}
}

// benchRate is the pace of BenchmarkWorkloadAPIPaced: calls per second
// from all its clients together.
const benchRate = 1000

// BenchmarkWorkloadAPIPaced makes the calls of BenchmarkWorkloadAPI (the
// same variants, measuring the same things) from 100 clients at benchRate
// calls per second in all (10 per client), each call on its schedule
// whether or not earlier ones have returned (an open loop), so that its
// latencies are those of a server under a known load rather than of one
// kept saturated. ns/op is the pace, not a figure; the CPU time per call
// and the latencies are. The turns/ variants make a call and its ceiling in
// turns (runPacedTurns).
func BenchmarkWorkloadAPIPaced(b *testing.B) {
	const n = 100
	requireFiles(b, 8*n+256)
	e := newBenchEnv(b)
	wl := dialClients(b, e.wl, n, e.fetchX509SVID)
	bare := dialClients(b, e.bare, n, healthCheck)
	attested := dialClients(b, e.attested, n, healthCheck)
	verified := dialClients(b, e.verified, n, healthCheck)
	name := fmt.Sprintf("clients=%d/rate=%d", n, benchRate)
	for _, bc := range []struct {
		name  string
		conns []*grpc.ClientConn
		call  benchCall
	}{
		{"fetch-x509svid", wl, e.fetchX509SVID},
		{"ceiling-stream", bare, healthWatch},
		{"ceiling-stream+attest", attested, healthWatch},
		{"validate-jwtsvid", wl, e.validateJWTSVID},
		{"validate-jwtsvid-distinct", wl, e.validateDistinct},
		{"ceiling-unary", bare, healthCheck},
		{"ceiling-unary+attest", attested, healthCheck},
		{"ceiling-unary+verify", verified, healthCheck},
	} {
		b.Run(name+"/"+bc.name, func(b *testing.B) { runPaced(b, bc.conns, bc.call, benchRate) })
	}
	for _, bc := range []struct {
		name          string
		call, ceiling benchCall
	}{
		{"fetch-x509svid/ceiling-stream", e.fetchX509SVID, healthWatch},
		{"validate-jwtsvid-distinct/ceiling-unary", e.validateDistinct, healthCheck},
	} {
		b.Run(name+"/turns/"+bc.name, func(b *testing.B) { runPacedTurns(b, e, wl, bc.call, bare, bc.ceiling) })
	}
	b.Run(name+"/turns/validate-jwtsvid-distinct/ceiling-unary+verify", func(b *testing.B) {
		runPacedTurns(b, e, wl, e.validateDistinct, verified, healthCheck)
	})
}

// runPaced makes b.N calls, call i on conns[i mod len(conns)] at i/rate
// seconds from the start, each in a goroutine of its own, and reports as
// runClients does; a call's latency runs from the moment it is made.
func runPaced(b *testing.B, conns []*grpc.ClientConn, call benchCall, rate int) {
	b.Helper()
	b.ReportAllocs()
	cpu := processCPU(b)
	b.ResetTimer()
	began := time.Now()
	lat := paced(b, conns, call, rate, b.N)
	elapsed := time.Since(began)
	b.StopTimer()
	cpu = processCPU(b) - cpu
	reportLatencies(b, lat, elapsed, cpu)
}

// paced makes n calls as runPaced does and returns their latencies.
func paced(b testing.TB, conns []*grpc.ClientConn, call benchCall, rate, n int) []time.Duration {
	lat := make([]time.Duration, n)
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range n {
		if d := time.Until(began.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			t := time.Now()
			if err := call(conns[i%len(conns)]); err != nil {
				b.Error(err)
				return
			}
			lat[i] = time.Since(t)
		})
	}
	wg.Wait()
	return lat
}

// benchTurn is how many calls runPacedTurns makes of one kind before the
// other's turn: half a second at benchRate.
const benchTurn = benchRate / 2

// runPacedTurns makes the paced calls of runPaced (benchRate calls per
// second) of call on conns and of its ceiling on ceilingConns in turns of
// benchTurn calls, b.N of each, so that both see the same seconds of a
// shared machine, whose speed moves from one second to the next, instead of
// the call and its ceiling running seconds apart. It reports each one's p50
// and p99 and p99/ceiling-p99; ns/op is the pace of a call and its
// ceiling's, not a figure.
func runPacedTurns(b *testing.B, e *benchEnv, conns []*grpc.ClientConn, call benchCall, ceilingConns []*grpc.ClientConn, ceiling benchCall) {
	before := e.agentTimes(b)
	got, ceil := pacedTurns(b, conns, call, ceilingConns, ceiling, b.N)
	b.StopTimer()
	b.ReportMetric(float64(percentile(got, 50))/1e3, "p50-µs")
	b.ReportMetric(float64(percentile(got, 99))/1e3, "p99-µs")
	b.ReportMetric(float64(percentile(ceil, 50))/1e3, "ceiling-p50-µs")
	b.ReportMetric(float64(percentile(ceil, 99))/1e3, "ceiling-p99-µs")
	b.ReportMetric(float64(percentile(got, 99))/float64(percentile(ceil, 99)), "p99/ceiling")
	e.agentTimes(b).since(before).report(b)
}

// pacedTurns makes n paced calls of call and n of ceiling in turns, as
// runPacedTurns does, and returns the latencies of each, sorted.
func pacedTurns(tb testing.TB, conns []*grpc.ClientConn, call benchCall, ceilingConns []*grpc.ClientConn, ceiling benchCall, n int) (got, ceil []time.Duration) {
	for done := 0; done < n; done += benchTurn {
		k := min(benchTurn, n-done)
		got = append(got, paced(tb, conns, call, benchRate, k)...)
		ceil = append(ceil, paced(tb, ceilingConns, ceiling, benchRate, k)...)
	}
	slices.Sort(got)
	slices.Sort(ceil)
	return got, ceil
}

// agentTimes are the Workload API calls the agent timed to their first
// response (meshfed_agent_call_first_response_seconds, every method
// together): how many took at most each bucket's bound, in seconds.
type agentTimes struct {
	calls  uint64
	atMost map[float64]uint64
}

func (e *benchEnv) agentTimes(b *testing.B) agentTimes {
	b.Helper()
	families, err := e.agent.Gather()
	if err != nil {
		b.Fatal(err)
	}
	t := agentTimes{atMost: map[float64]uint64{}}
	for _, f := range families {
		if f.GetName() != "meshfed_agent_call_first_response_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			t.calls += m.GetHistogram().GetSampleCount()
			for _, bk := range m.GetHistogram().GetBucket() {
				t.atMost[bk.GetUpperBound()] += bk.GetCumulativeCount()
			}
		}
	}
	return t
}

// since is what was timed after before.
func (t agentTimes) since(before agentTimes) agentTimes {
	d := agentTimes{calls: t.calls - before.calls, atMost: map[float64]uint64{}}
	for le, n := range t.atMost {
		d.atMost[le] = n - before.atMost[le]
	}
	return d
}

// report reports, of the calls timed, the share whose first response took
// the agent over 1 ms (agent>1ms-%) and the least bucket bound under which
// 99% of them fell (agent-p99-le-µs): the agent's own part of a call, from
// its arrival at the gate's interceptor to the response handed to gRPC,
// which the round trip's p99 contains. The agent must have timed every one
// of the b.N calls made.
func (t agentTimes) report(b *testing.B) {
	if t.calls != uint64(b.N) {
		b.Fatalf("the agent timed %d calls of the %d made", t.calls, b.N)
	}
	bounds := slices.Sorted(maps.Keys(t.atMost))
	for _, le := range bounds {
		if t.atMost[le]*100 >= t.calls*99 {
			b.ReportMetric(le*1e6, "agent-p99-le-µs")
			break
		}
	}
	b.ReportMetric(100*float64(t.calls-t.atMost[0.001])/float64(t.calls), "agent>1ms-%")
}

// BenchmarkWorkloadAPIPacedApart is the turns/ variants of
// BenchmarkWorkloadAPIPaced with the workloads where they are in use: in
// another process (this test binary re-run as TestBenchPacedWorkloads),
// whose goroutines do not share this process's scheduler with the servers'.
// That process dials 100 connections to each socket, makes the paced calls
// in turns as runPacedTurns does, and writes their latencies back; they are
// reported as there. ns/op is the pace plus the process's start, not a
// figure.
func BenchmarkWorkloadAPIPacedApart(b *testing.B) {
	const n = 100
	requireFiles(b, 8*n+256)
	e := newBenchEnv(b)
	tokens := filepath.Join(b.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(strings.Join(e.distinct, "\n")), 0o600); err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("clients=%d/rate=%d/turns", n, benchRate)
	for _, bc := range []struct {
		name, call, ceiling, ceilingSocket string
	}{
		{"fetch-x509svid/ceiling-stream", "fetch-x509svid", "health-watch", e.bare},
		{"validate-jwtsvid-distinct/ceiling-unary", "validate-jwtsvid-distinct", "health-check", e.bare},
		{"validate-jwtsvid-distinct/ceiling-unary+verify", "validate-jwtsvid-distinct", "health-check", e.verified},
	} {
		b.Run(name+"/"+bc.name, func(b *testing.B) {
			spec := pacedSpec{
				Clients: n, Calls: b.N,
				Call: bc.call, Socket: e.wl, Ceiling: bc.ceiling, CeilingSocket: bc.ceilingSocket,
				Tokens: tokens, Want: e.want.String(), FirstToken: e.nextDistinct.Add(uint64(b.N)) - uint64(b.N),
			}
			got, agent := runPacedWorkloads(b, e, spec)
			agent.report(b)
			b.ReportMetric(float64(got.P50)/1e3, "p50-µs")
			b.ReportMetric(float64(got.P99)/1e3, "p99-µs")
			b.ReportMetric(float64(got.CeilingP50)/1e3, "ceiling-p50-µs")
			b.ReportMetric(float64(got.CeilingP99)/1e3, "ceiling-p99-µs")
			b.ReportMetric(float64(got.P99)/float64(got.CeilingP99), "p99/ceiling")
		})
	}
}

// pacedSpec is what BenchmarkWorkloadAPIPacedApart asks of the process
// running TestBenchPacedWorkloads (in MESHFED_BENCH_PACED, as JSON).
type pacedSpec struct {
	Clients, Calls         int    // connections to each socket; calls of each kind
	Call, Socket           string // fetch-x509svid or validate-jwtsvid-distinct
	Ceiling, CeilingSocket string // health-watch or health-check
	Tokens                 string // a file of JWT-SVIDs, one a line
	FirstToken             uint64 // the first of them to validate
	Want                   string // the SPIFFE ID every answer must carry
}

// pacedResult is its answer, on one line of its stdout, in nanoseconds.
type pacedResult struct {
	P50, P99, CeilingP50, CeilingP99 time.Duration
}

// runPacedWorkloads runs the test binary as TestBenchPacedWorkloads with
// spec and returns what it measured, with the calls the agent timed while
// it made its paced calls (after its connections were made ready).
func runPacedWorkloads(b *testing.B, e *benchEnv, spec pacedSpec) (pacedResult, agentTimes) {
	b.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	cmd, stdin, out := startSelf(b, "TestBenchPacedWorkloads", "MESHFED_BENCH_PACED="+string(raw))
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("the workloads' process: %v", err)
		}
	}()
	if line, err := out.ReadString('\n'); line != "ready\n" {
		b.Fatalf("the workloads' process said %q (%v) instead of ready", line, err)
	}
	before := e.agentTimes(b)
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	for {
		line, err := out.ReadString('\n')
		if rest, ok := strings.CutPrefix(line, "result "); ok {
			var r pacedResult
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				b.Fatalf("the workloads' process said %q: %v", line, err)
			}
			go io.Copy(io.Discard, out) // the test framework's PASS
			return r, e.agentTimes(b).since(before)
		}
		if err != nil {
			b.Fatalf("the workloads' process gave no result: %v", err)
		}
	}
}

// TestBenchPacedWorkloads is not a test: BenchmarkWorkloadAPIPacedApart runs
// the test binary with MESHFED_BENCH_PACED set to be its workloads.
func TestBenchPacedWorkloads(t *testing.T) {
	raw := os.Getenv("MESHFED_BENCH_PACED")
	if raw == "" {
		t.Skip("run by BenchmarkWorkloadAPIPacedApart")
	}
	var spec pacedSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatalf("MESHFED_BENCH_PACED: %v", err)
	}
	tokens, err := os.ReadFile(spec.Tokens)
	if err != nil {
		t.Fatal(err)
	}
	want, err := spiffeid.FromString(spec.Want)
	if err != nil {
		t.Fatal(err)
	}
	e := &benchEnv{distinct: strings.Split(string(tokens), "\n"), want: want}
	e.nextDistinct.Store(spec.FirstToken)
	calls := map[string]benchCall{
		"fetch-x509svid":            e.fetchX509SVID,
		"validate-jwtsvid-distinct": e.validateDistinct,
		"health-watch":              healthWatch,
		"health-check":              healthCheck,
	}
	call, ceiling := calls[spec.Call], calls[spec.Ceiling]
	if call == nil || ceiling == nil {
		t.Fatalf("MESHFED_BENCH_PACED: unknown call %q or %q", spec.Call, spec.Ceiling)
	}
	warm := call
	if spec.Call == "validate-jwtsvid-distinct" {
		warm = e.fetchX509SVID // so that no token is used up
	}
	conns := dialClients(t, spec.Socket, spec.Clients, warm)
	ceilingConns := dialClients(t, spec.CeilingSocket, spec.Clients, ceiling)
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for the benchmark to begin: %v", err)
	}
	got, ceil := pacedTurns(t, conns, call, ceilingConns, ceiling, spec.Calls)
	r, err := json.Marshal(pacedResult{
		P50: percentile(got, 50), P99: percentile(got, 99),
		CeilingP50: percentile(ceil, 50), CeilingP99: percentile(ceil, 99),
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("result %s\n", r)
}

// benchHolders is how many workloads BenchmarkConnectedWorkloads connects.
const benchHolders = 1000

// BenchmarkConnectedWorkloads measures the memory a connected workload
// costs the server: another process (this test binary, running
// TestBenchHoldStreams) opens benchHolders connections with one stream each
// and keeps them open once each has had its first response; the growth of
// this process's live heap and goroutine stacks (after a GC), divided by
// benchHolders, is reported as heap-B/stream, stack-B/stream and
// bytes/stream (their sum), with goroutines/stream. The clients being in
// another process, none of it is theirs.
//
//   - fetch-x509svid: FetchX509SVID streams to the Workload API;
//   - ceiling-stream: Health/Watch streams to the bare server (what a
//     gRPC connection with one open stream costs at the least).
//
// One op is a whole cycle (start the process, connect, measure, stop); its
// ns/op is not a figure. connect-ms is the time the other process took
// from its first dial to the last first response.
func BenchmarkConnectedWorkloads(b *testing.B) {
	requireFiles(b, 2*benchHolders+256)
	e := newBenchEnv(b)
	for _, bc := range []struct{ name, path, call string }{
		{"fetch-x509svid", e.wl, "fetch-x509svid"},
		{"ceiling-stream", e.bare, "health-watch"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var heap, stack, goroutines, connect float64
			for range b.N {
				b.StopTimer()
				before := settled(b, 0)
				b.StartTimer()
				h := startHolder(b, bc.path, bc.call, benchHolders)
				b.StopTimer()
				after := settled(b, 0)
				h.stop(b)
				settled(b, before.goroutines) // the server let them all go
				b.StartTimer()

				heap += float64(after.heap) - float64(before.heap)
				stack += float64(after.stack) - float64(before.stack)
				goroutines += float64(after.goroutines - before.goroutines)
				connect += float64(h.connect.Milliseconds())
			}
			per := float64(b.N * benchHolders)
			b.ReportMetric(heap/per, "heap-B/stream")
			b.ReportMetric(stack/per, "stack-B/stream")
			b.ReportMetric((heap+stack)/per, "bytes/stream")
			b.ReportMetric(goroutines/per, "goroutines/stream")
			b.ReportMetric(connect/float64(b.N), "connect-ms")
		})
	}
}

// memory is what this process holds after a GC.
type memory struct {
	heap, stack uint64
	goroutines  int
}

// settled collects garbage until the goroutines are at most want (if
// nonzero; closed connections take a moment to wind down) and returns what
// is held.
func settled(b *testing.B, want int) memory {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for want > 0 && runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			b.Fatalf("%d goroutines are still running 10s after the workloads left, %d before they came", runtime.NumGoroutine(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Two cycles: the first leaves sync.Pool's victim caches to the second.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heap: ms.HeapAlloc, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// startSelf starts this test binary running only the test named, with env
// (NAME=value) added to its environment, and returns its stdin and stdout.
func startSelf(b *testing.B, test, env string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^"+test+"$")
	cmd.Env = append(os.Environ(), env)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, stdin, bufio.NewReader(stdout)
}

// holder is a process holding streams open: see TestBenchHoldStreams.
type holder struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	connect time.Duration
}

// startHolder starts a process that opens n streams of call to the socket
// at path and returns once all have had their first response.
func startHolder(b *testing.B, path, call string, n int) *holder {
	b.Helper()
	cmd, stdin, stdout := startSelf(b, "TestBenchHoldStreams", "MESHFED_BENCH_HOLD="+call+","+strconv.Itoa(n)+","+path)
	h := &holder{cmd: cmd, stdin: stdin}
	line, err := stdout.ReadString('\n')
	ns, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	d, convErr := strconv.ParseInt(ns, 10, 64)
	if err != nil || !ok || convErr != nil {
		h.stop(b)
		b.Fatalf("the holder process said %q (%v) instead of ready", line, err)
	}
	go io.Copy(io.Discard, stdout) // the test framework's PASS
	h.connect = time.Duration(d)
	return h
}

// stop lets the holder process go and waits for it.
func (h *holder) stop(b *testing.B) {
	b.Helper()
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		b.Fatalf("the holder process: %v", err)
	}
}

// TestBenchHoldStreams is not a test: BenchmarkConnectedWorkloads runs the
// test binary with MESHFED_BENCH_HOLD=call,n,socket to be its workloads. It
// opens n connections to the socket, one stream of call on each
// (fetch-x509svid or health-watch), writes "ready <ns>" to stdout once each
// has had its first response, and holds them until stdin closes.
func TestBenchHoldStreams(t *testing.T) {
	spec := os.Getenv("MESHFED_BENCH_HOLD")
	if spec == "" {
		t.Skip("run by BenchmarkConnectedWorkloads")
	}
	parts := strings.SplitN(spec, ",", 3)
	if len(parts) != 3 {
		t.Fatalf("MESHFED_BENCH_HOLD=%q: want call,n,socket", spec)
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	call, path := parts[0], parts[2]
	ctx, cancel := context.WithCancel(benchCtx)
	defer cancel()
	open := func(conn *grpc.ClientConn) (func() error, error) {
		switch call {
		case "fetch-x509svid":
			s, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err != nil {
				return nil, err
			}
			return func() error { _, err := s.Recv(); return err }, nil
		case "health-watch":
			s, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return nil, err
			}
			return func() error { _, err := s.Recv(); return err }, nil
		}
		return nil, fmt.Errorf("unknown call %q", call)
	}

	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for range n {
		conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			recv, err := open(conn)
			if err == nil {
				err = recv()
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ready %d\n", time.Since(began).Nanoseconds())
	io.Copy(io.Discard, os.Stdin)
}

// BenchmarkMachineStalls measures the floor under every tail latency of
// this file: one goroutine reads the clock in a loop (an op is one read),
// and a gap of over 1 ms between two reads is time the machine (the
// hypervisor of a VM, the kernel) took the CPU away. It reports such gaps
// per second (stalls/s) and the longest (max-stall-µs). A call caught in a
// stall takes at least as long, whatever the server does.
func BenchmarkMachineStalls(b *testing.B) {
	var stalls int
	var longest time.Duration
	began := time.Now()
	last := began
	for range b.N {
		now := time.Now()
		if d := now.Sub(last); d > time.Millisecond {
			stalls++
			longest = max(longest, d)
		}
		last = now
	}
	b.ReportMetric(float64(stalls)/time.Since(began).Seconds(), "stalls/s")
	b.ReportMetric(float64(longest.Microseconds()), "max-stall-µs")
}
