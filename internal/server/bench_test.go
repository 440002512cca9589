package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/meshfed/meshfed/internal/testpg"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	istioca "istio.io/api/security/v1alpha1"
)

// The issuance benchmarks run a real server (New and Run on loopback, TLS
// with its own SVID, the store on SQLite or Postgres) and call it through
// gRPC from clients in the same process; beside each, in the same run, the
// ceiling is the signing alone: pki.CA.SignX509SVIDFromCSR with the same CA
// and the same CSR, no API, credential or store around it. Both use every
// core (RunParallel), so ns/op are comparable and ceiling/issuance is the
// share of the ceiling reached. docs/performance.md records the figures;
// bench/run reproduces them, with a durable Postgres (plain `go test
// -bench` uses testpg's throwaway cluster, which runs without fsync).

// benchParallelism is how many calls are in flight per GOMAXPROCS: a server
// serves many agents at once, and callers that each wait for their own
// round trip would leave the cores idle between calls.
const benchParallelism = 16

// benchNodeID is the node that renews its SVID in the benchmarks.
var benchNodeID = spiffeid.RequireFromString("spiffe://east.example/node/bench")

// benchServer is a running server and what its clients need.
type benchServer struct {
	srv    *Server
	roots  *x509.CertPool
	jwtKey crypto.Signer
}

// startBenchServer starts a server on backend ("sqlite" in a temporary
// directory, or "postgres" on a new testpg database) that logs as the
// binary does (text, info: a line per issuance) into io.Discard.
func startBenchServer(b *testing.B, backend string) *benchServer {
	b.Helper()
	dir := b.TempDir()
	jwtKey, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		b.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: jwtKey.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwksPath := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksPath, jwks, 0o644); err != nil {
		b.Fatal(err)
	}
	cfg := Config{
		TrustDomain:   "east.example",
		DataDir:       filepath.Join(dir, "data"),
		Listen:        "127.0.0.1:0",
		BundleListen:  "127.0.0.1:0",
		MetricsListen: "off",
		AdminSocket:   filepath.Join(dir, "admin.sock"),
		Credentials: CredentialsConfig{KubernetesJWT: []JWTIssuerConfig{{
			Issuer: "https://kubernetes.default.svc", JWKSFile: jwksPath, Audiences: []string{"istio-ca"},
		}}},
	}
	if backend == "postgres" {
		cfg.Datastore = testpg.Start(b)
		logPostgresDurability(b, cfg.Datastore)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := New(ctx, cfg, Options{Logger: logger})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			b.Errorf("Run: %v", err)
		}
	})
	roots := x509.NewCertPool()
	for _, c := range srv.bundle.Load().X509Authorities() {
		roots.AddCert(c)
	}
	return &benchServer{srv: srv, roots: roots, jwtKey: jwtKey}
}

// logPostgresDurability says whether the Postgres measured makes commits
// durable, since testpg's throwaway cluster does not.
func logPostgresDurability(b *testing.B, dsn string) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var fsync, syncCommit string
	if err := db.QueryRow(`SELECT current_setting('fsync'), current_setting('synchronous_commit')`).Scan(&fsync, &syncCommit); err != nil {
		b.Fatal(err)
	}
	b.Logf("postgres: fsync=%s synchronous_commit=%s", fsync, syncCommit)
}

// dial opens a connection to the signing API, presenting client if given.
func (bs *benchServer) dial(b *testing.B, client *tls.Certificate) *grpc.ClientConn {
	b.Helper()
	conf := &tls.Config{RootCAs: bs.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if client != nil {
		conf.Certificates = []tls.Certificate{*client}
	}
	// As an agent dials: fixed windows (grpcflow).
	conn, err := grpc.NewClient(bs.srv.Addrs().Listen.String(), append(grpcflow.DialOptions(grpcflow.SigningAPIWindow),
		grpc.WithTransportCredentials(credentials.NewTLS(conf)))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// nodeSVID attests benchNodeID with a join token, as an agent does, and
// returns its node SVID.
func (bs *benchServer) nodeSVID(b *testing.B) *tls.Certificate {
	b.Helper()
	ctx := context.Background()
	adminConn, err := grpc.NewClient("unix://"+bs.srv.set.adminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer adminConn.Close()
	tok, err := pb.NewAdminClient(adminConn).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: benchNodeID.String()})
	if err != nil {
		b.Fatal(err)
	}
	key, csr := benchCSR(b)
	resp, err := pb.NewNodeClient(bs.dial(b, nil)).AttestNode(ctx, &pb.AttestNodeRequest{
		Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr.Raw,
	})
	if err != nil {
		b.Fatal(err)
	}
	return &tls.Certificate{Certificate: resp.GetSvid().GetCertChain(), PrivateKey: key}
}

// jwt is a service-account token for ns/default/sa/bench, valid for a day.
func (bs *benchServer) jwt(b *testing.B) string {
	b.Helper()
	return testjwt.Sign(b, jose.ES256, bs.jwtKey, "k1", "", map[string]any{
		"iss": "https://kubernetes.default.svc", "aud": []string{"istio-ca"},
		"sub": "system:serviceaccount:default:bench",
		"exp": time.Now().Add(24 * time.Hour).Unix(), "iat": time.Now().Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": "default", "serviceaccount": map[string]any{"name": "bench", "uid": "u-1"}},
	})
}

// reportCommits returns a function that reports, as rows/commit, the
// audit rows per commit of the group commit since reportCommits was
// called (from the server's meshfed_server_audit_commit_rows).
func (bs *benchServer) reportCommits(b *testing.B) func() {
	b.Helper()
	read := func() (commits uint64, rows float64) {
		var m dto.Metric
		if err := bs.srv.metrics.commitRows.Write(&m); err != nil {
			b.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
	}
	commits0, rows0 := read()
	return func() {
		if commits, rows := read(); commits > commits0 {
			b.ReportMetric((rows-rows0)/float64(commits-commits0), "rows/commit")
		}
	}
}

// benchCSR makes a P-256 key (the server's default key type) and a CSR for
// it that names no identity, as agents send.
func benchCSR(b *testing.B) (crypto.Signer, *x509.CertificateRequest) {
	b.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		b.Fatal(err)
	}
	return key, csr
}

// runParallel runs call on benchParallelism×GOMAXPROCS goroutines, each
// with a connection of its own made (and warmed by one call) before the
// clock starts, as many agents each with their connection would.
func runParallel(b *testing.B, dial func() *grpc.ClientConn, call func(*grpc.ClientConn) error) {
	b.Helper()
	b.SetParallelism(benchParallelism)
	conns := make([]*grpc.ClientConn, benchParallelism*runtime.GOMAXPROCS(0))
	for i := range conns {
		conns[i] = dial()
		if err := call(conns[i]); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.ResetTimer()
	measureCPU(b, func() {
		b.RunParallel(func(p *testing.PB) {
			conn := conns[int(next.Add(1)-1)%len(conns)]
			for p.Next() {
				if err := call(conn); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// measureCPU runs f and reports the CPU time this process spent in it
// (user and system, every thread) per op, as cpu-ns/op. Unlike ns/op, it
// does not count what other processes on the machine take from it, nor
// cores left idle while calls wait.
func measureCPU(b *testing.B, f func()) {
	before := processCPU(b)
	f()
	b.ReportMetric(float64(processCPU(b)-before)/float64(b.N), "cpu-ns/op")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIssuance measures X.509-SVID issuance through the gRPC API on
// each store back end, and the ceilings beside it:
//
//   - ceiling: pki.CA.SignX509SVIDFromCSR with the server's CA and the same
//     CSR (check the CSR, sign, re-verify), nothing else;
//   - node: Node.SignX509SVID renewing the caller's own node SVID over mTLS
//     (verify the client SVID, parse and check the CSR, sign, re-verify,
//     write the audit row, return the chain), one CSR per call;
//   - istio: IstioCertificateService.CreateCertificate with a
//     service-account JWT (verify the JWT instead of the SVID; a PEM CSR and
//     PEM chain back);
//   - ceiling+svid, ceiling+jwt: the ceiling plus the verification of the
//     caller's credential that node and istio do per call, the server's own
//     verifiers called directly: all the cryptography an issuance through
//     the API does, without the API, the network or the store.
//
// The CSR is made once, outside the timed loop; each call signs a new
// certificate with a new serial and writes a new audit row.
func BenchmarkIssuance(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			bs := startBenchServer(b, backend)
			_, csr := benchCSR(b)
			node := bs.nodeSVID(b)
			token := bs.jwt(b)
			ca := bs.srv.auth.CA()
			sign := func() error {
				_, err := ca.SignX509SVIDFromCSR(csr, pki.SVIDRequest{ID: benchNodeID})
				return err
			}

			b.Run("ceiling", func(b *testing.B) {
				runCeiling(b, sign)
			})

			b.Run("ceiling+svid", func(b *testing.B) {
				var chain []*x509.Certificate
				for _, der := range node.Certificate {
					c, err := x509.ParseCertificate(der)
					if err != nil {
						b.Fatal(err)
					}
					chain = append(chain, c)
				}
				v := credential.SVIDVerifier{TrustDomain: bs.srv.set.td, Bundle: bs.srv.localBundleSource(), Clock: time.Now}
				runCeiling(b, func() error {
					if _, err := v.Verify(chain); err != nil {
						return err
					}
					return sign()
				})
			})

			b.Run("ceiling+jwt", func(b *testing.B) {
				runCeiling(b, func() error {
					if _, err := bs.srv.jwt.Verify(context.Background(), token); err != nil {
						return err
					}
					return sign()
				})
			})

			b.Run("node", func(b *testing.B) {
				req := &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: csr.Raw}}}
				b.ReportAllocs()
				defer bs.reportCommits(b)()
				runParallel(b, func() *grpc.ClientConn { return bs.dial(b, node) }, func(conn *grpc.ClientConn) error {
					resp, err := pb.NewNodeClient(conn).SignX509SVID(context.Background(), req)
					if err == nil && len(resp.GetSvids()) != 1 {
						err = fmt.Errorf("%d SVIDs back, want 1", len(resp.GetSvids()))
					}
					return err
				})
			})

			b.Run("istio", func(b *testing.B) {
				ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
				req := &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(csr.Raw)), ValidityDuration: 3600}
				b.ReportAllocs()
				defer bs.reportCommits(b)()
				runParallel(b, func() *grpc.ClientConn { return bs.dial(b, nil) }, func(conn *grpc.ClientConn) error {
					resp, err := istioca.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
					if err == nil && len(resp.GetCertChain()) != 2 {
						err = fmt.Errorf("chain of %d back, want leaf and root", len(resp.GetCertChain()))
					}
					return err
				})
			})
		})
	}
}

// runCeiling runs f in a RunParallel loop with the parallelism of the API
// benchmarks.
func runCeiling(b *testing.B, f func() error) {
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	measureCPU(b, func() {
		b.RunParallel(func(p *testing.PB) {
			for p.Next() {
				if err := f(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
