package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

var east = spiffeid.RequireTrustDomainFromString("east.example")

// harness is a running server plus what a test needs to call it.
type harness struct {
	srv     *Server
	dir     string
	jwtKey  crypto.Signer
	bundle  *spiffebundle.Bundle
	cancel  context.CancelFunc
	stopped chan error
}

func start(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	return startWith(t, Options{}, mutate)
}

// startWith starts a server with opts (a test clock, say).
func startWith(t *testing.T, opts Options, mutate func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	jwtKey, _ := pki.GenerateKey(pki.ECP256)
	jwks := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: jwtKey.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
	raw, _ := json.Marshal(jwks)
	jwksPath := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		TrustDomain:   "east.example",
		DataDir:       filepath.Join(dir, "data"),
		Listen:        "127.0.0.1:0",
		BundleListen:  "127.0.0.1:0",
		MetricsListen: "127.0.0.1:0",
		AdminSocket:   filepath.Join(dir, "admin.sock"),
		Credentials: CredentialsConfig{KubernetesJWT: []JWTIssuerConfig{{
			Issuer: "https://kubernetes.default.svc", JWKSFile: jwksPath, Audiences: []string{"istio-ca"},
		}}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	h := &harness{srv: srv, dir: dir, jwtKey: jwtKey, cancel: cancel, stopped: make(chan error, 1)}
	go func() { h.stopped <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.stopped; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	h.bundle = srv.bundle.Load()
	return h
}

// admin dials the admin socket.
func (h *harness) admin(t *testing.T) pb.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+h.srv.set.adminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewAdminClient(conn)
}

// dial opens the signing API, presenting client (if any) and verifying the
// server against the trust domain's bundle and its SPIFFE ID.
func (h *harness) dial(t *testing.T, client *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range h.bundle.X509Authorities() {
		roots.AddCert(c)
	}
	conf := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if client != nil {
		conf.Certificates = []tls.Certificate{*client}
	}
	conn, err := grpc.NewClient(h.srv.Addrs().Listen.String(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// metricsText is the server's /metrics.
func (h *harness) metricsText(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + h.srv.Addrs().Metrics.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func (h *harness) jwt(t *testing.T, claims map[string]any) string {
	t.Helper()
	return testjwt.Sign(t, jose.ES256, h.jwtKey, "k1", "", claims)
}

func saClaims(ns, sa string, aud string, exp time.Time) map[string]any {
	return map[string]any{
		"iss": "https://kubernetes.default.svc", "aud": []string{aud},
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"exp": exp.Unix(), "iat": time.Now().Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa, "uid": "u-1"}},
	}
}

func newCSR(t *testing.T, uris ...string) (crypto.Signer, []byte) {
	t.Helper()
	key, _ := pki.GenerateKey(pki.ECP256)
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		p, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msg)
	}
}

func verify(t *testing.T, h *harness, der [][]byte) spiffeid.ID {
	t.Helper()
	var chain []*x509.Certificate
	for _, d := range der {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	id, _, err := pki.VerifyX509SVID(chain, x509bundle.FromX509Authorities(east, h.bundle.X509Authorities()), time.Now())
	if err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	return id
}

func TestIstioCreateCertificate(t *testing.T) {
	h := start(t, nil)
	client := istioca.NewIstioCertificateServiceClient(h.dial(t, nil))
	_, csrDER := newCSR(t, "spiffe://east.example/ns/default/sa/reviews")
	csrPEM := string(pemfile.EncodeCSR(csrDER))
	call := func(token string, csr string) (*istioca.IstioCertificateResponse, error) {
		ctx := context.Background()
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		return client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csr, ValidityDuration: 7200})
	}

	good := h.jwt(t, saClaims("default", "reviews", "istio-ca", time.Now().Add(time.Hour)))
	resp, err := call(good, csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CertChain) != 2 {
		t.Fatalf("chain of %d, want leaf and root", len(resp.CertChain))
	}
	leaf, _ := pemfile.ParseCertificates([]byte(resp.CertChain[0]))
	root, _ := pemfile.ParseCertificates([]byte(resp.CertChain[1]))
	if !root[0].Equal(h.bundle.X509Authorities()[0]) {
		t.Error("last element is not the trust domain's root")
	}
	if id := verify(t, h, [][]byte{leaf[0].Raw}); id.String() != "spiffe://east.example/ns/default/sa/reviews" {
		t.Errorf("issued %s", id)
	}
	if life := leaf[0].NotAfter.Sub(leaf[0].NotBefore); life < 2*time.Hour || life > 2*time.Hour+time.Minute {
		t.Errorf("lifetime %s, want the 2h asked for", life)
	}

	cases := []struct {
		name  string
		token string
		csr   string
		code  codes.Code
		msg   string
	}{
		{"no credential", "", csrPEM, codes.Unauthenticated, "no credential"},
		{"expired", h.jwt(t, saClaims("default", "reviews", "istio-ca", time.Now().Add(-time.Hour))), csrPEM, codes.Unauthenticated, "expired"},
		{"wrong audience", h.jwt(t, saClaims("default", "reviews", "other", time.Now().Add(time.Hour))), csrPEM, codes.Unauthenticated, "audience"},
		{"CSR claims another identity", h.jwt(t, saClaims("default", "ratings", "istio-ca", time.Now().Add(time.Hour))), csrPEM, codes.PermissionDenied,
			"CSR asks for spiffe://east.example/ns/default/sa/reviews, but the verified identity is spiffe://east.example/ns/default/sa/ratings"},
		{"malformed CSR", good, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", codes.InvalidArgument, "CSR"},
		{"oversized request", good, strings.Repeat("A", MaxRequestBytes+1), codes.ResourceExhausted, "larger than max"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := call(tc.token, tc.csr)
			wantStatus(t, err, tc.code, tc.msg)
		})
	}
}

func TestJoinTokenAttestEntriesAndRenewal(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx := context.Background()
	nodeID := "spiffe://east.example/node/host-1"
	tok, err := admin.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{SpiffeId: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	node := pb.NewNodeClient(h.dial(t, nil))
	key, csr := newCSR(t)
	resp, err := node.AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	if got := verify(t, h, resp.GetSvid().GetCertChain()); got.String() != nodeID {
		t.Fatalf("node SVID for %s, want %s", got, nodeID)
	}
	// A join token works once.
	_, csr2 := newCSR(t)
	_, err = node.AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: tok.GetToken()}, Csr: csr2})
	wantStatus(t, err, codes.Unauthenticated, "is unknown, expired or already used")

	// With its node SVID the agent gets its workloads' SVIDs.
	entry, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: nodeID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}, DnsNames: []string{"reviews.default.svc"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: "spiffe://east.example/node/host-2", SpiffeId: "spiffe://east.example/ns/default/sa/ratings",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1001"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	nodeCert := tls.Certificate{Certificate: resp.GetSvid().GetCertChain(), PrivateKey: key}
	authed := pb.NewNodeClient(h.dial(t, &nodeCert))
	_, wcsr := newCSR(t)
	signed, err := authed.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{EntryId: entry.GetId(), Csr: wcsr}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := verify(t, h, signed.GetSvids()[0].GetCertChain()); got.String() != "spiffe://east.example/ns/default/sa/reviews" {
		t.Errorf("workload SVID for %s", got)
	}
	leaf, _ := x509.ParseCertificate(signed.GetSvids()[0].GetCertChain()[0])
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "reviews.default.svc" {
		t.Errorf("entry DNS names not in the SVID: %v", leaf.DNSNames)
	}
	// An entry of another node is refused.
	_, err = authed.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{EntryId: other.GetId(), Csr: wcsr}}})
	wantStatus(t, err, codes.PermissionDenied, "belongs to spiffe://east.example/node/host-2, not to "+nodeID)
	// Renewal of the node's own identity with its SVID.
	_, rcsr := newCSR(t)
	renewed, err := authed.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: rcsr}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := verify(t, h, renewed.GetSvids()[0].GetCertChain()); got.String() != nodeID {
		t.Errorf("renewed %s, want %s", got, nodeID)
	}
	// A node's renewal lasts svid.node_ttl (24h by default), not the
	// workloads' default_ttl.
	if life := time.Until(time.Unix(renewed.GetSvids()[0].GetExpiresAt(), 0)); life < 23*time.Hour || life > 24*time.Hour+time.Minute {
		t.Errorf("renewed node SVID lasts %s, want svid.node_ttl (24h)", life)
	}
	// Without an SVID, SignX509SVID is refused.
	_, err = node.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: rcsr}}})
	wantStatus(t, err, codes.Unauthenticated, "present this trust domain's SVID")

	// The audit log has one row per issued certificate.
	audit, err := admin.ListIssued(ctx, &pb.ListIssuedRequest{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range audit.GetIssued() {
		kinds[r.GetCredentialKind()]++
	}
	// The server's own SVID is not issued through the API, so not audited.
	if kinds["join-token"] != 1 || kinds["x509-svid"] != 2 || len(audit.GetIssued()) != 3 {
		t.Errorf("audit rows by kind: %v", kinds)
	}
}

func TestWatchPushesChanges(t *testing.T) {
	h := start(t, nil)
	admin := h.admin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodeID := "spiffe://east.example/node/host-1"
	cert := attestNodeCert(t, h, nodeID)
	stream, err := pb.NewNodeClient(h.dial(t, &cert)).Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetBundle().GetTrustDomain() != "east.example" || len(first.GetEntries()) != 0 {
		t.Fatalf("first snapshot: %v", first)
	}
	if _, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: nodeID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}, FederatesWith: []string{"west.example"},
	}}); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.GetEntries()) != 1 || next.GetEntries()[0].GetSpiffeId() != "spiffe://east.example/ns/default/sa/reviews" || next.GetRevision() <= first.GetRevision() {
		t.Fatalf("pushed snapshot: %v", next)
	}
}

func TestAdminIsNeverOpen(t *testing.T) {
	h := start(t, func(c *Config) { c.Admin.AllowedUIDs = []int{54321} })
	// Another uid is allowed, so the file is open to all: the kernel's
	// credentials are the gate, and this caller's uid is not in the list.
	if st, err := os.Stat(h.srv.set.adminSocket); err != nil || st.Mode().Perm() != 0o666 {
		t.Fatalf("admin socket: %v, mode %v", err, st.Mode().Perm())
	}
	_, err := h.admin(t).ListEntries(context.Background(), &pb.ListEntriesRequest{})
	wantStatus(t, err, codes.PermissionDenied, "may not use the admin socket")
	def := start(t, nil)
	if st, err := os.Stat(def.srv.set.adminSocket); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("default admin socket: %v, mode %v", err, st.Mode().Perm())
	}
	// Over TLS without an admin SVID.
	_, err = pb.NewAdminClient(h.dial(t, nil)).ListEntries(context.Background(), &pb.ListEntriesRequest{})
	wantStatus(t, err, codes.PermissionDenied, "needs an admin SVID")
}

func TestRestartLosesNothing(t *testing.T) {
	dir := t.TempDir()
	mk := func() *harness {
		return start(t, func(c *Config) {
			c.DataDir = filepath.Join(dir, "data")
			c.AdminSocket = filepath.Join(dir, "admin.sock")
		})
	}
	h := mk()
	ctx := context.Background()
	e, err := h.admin(t).CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: "spiffe://east.example/node/a", SpiffeId: "spiffe://east.example/w",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	root := h.srv.auth.CA().Certificate()
	h.cancel()
	if err := <-h.stopped; err != nil {
		t.Fatal(err)
	}
	h.stopped <- nil // for the cleanup
	h2 := mk()
	if !h2.srv.auth.CA().Certificate().Equal(root) {
		t.Error("the root changed across a restart")
	}
	got, err := h2.admin(t).GetEntry(ctx, &pb.GetEntryRequest{Id: e.GetId()})
	if err != nil || got.GetSpiffeId() != "spiffe://east.example/w" {
		t.Fatalf("entry after restart: %v, %v", got, err)
	}
}

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		yaml, want string
	}{
		{"data_dir: x\n", "trust_domain (--trust-domain) is required"},
		{"trust_domain: east.example\n", "data_dir (--data-dir) is required"},
		{"trust_domain: east.example\ndata_dir: x\nca:\n  mode: cacerts\n", "ca.mode cacerts needs ca.cacerts_dir"},
		{"trust_domain: east.example\ndata_dir: x\nbundle_endpoint:\n  profile: https_web\n", "https_web needs cert_file and key_file"},
		{"trust_domain: east.example\ndata_dir: x\nsvid:\n  default_ttl: 48h\n", "svid.default_ttl 48h0m0s exceeds svid.max_ttl 24h0m0s"},
		{"trust_domain: east.example\ndata_dir: x\ncredentials:\n  kubernetes_jwt:\n  - issuer: k8s\n    audiences: [istio-ca]\n", "give exactly one of jwks_file or jwks_url"},
		{"trust_domain: east.example\ndata_dir: x\nadmin:\n  admin_ids: [spiffe://west.example/admin]\n", "is not in trust domain east.example"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  federates_with:\n  - trust_domain: east.example\n", "federation.federates_with[0]: east.example is this server's own trust domain"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  federates_with:\n  - trust_domain: west.example\n    bundle_endpoint_url: http://w:1\n", "is not an https URL"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  federates_with:\n  - trust_domain: west.example\n    bundle_endpoint_url: https://w:1\n", "endpoint_spiffe_id"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  federates_with:\n  - {trust_domain: w.example, bundle_endpoint_url: 'https://w:1', bundle_endpoint_profile: https_web}\n  - {trust_domain: w.example, bundle_endpoint_url: 'https://w:1', bundle_endpoint_profile: https_web}\n", "w.example is listed twice"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  virtual_mesh:\n    controller_ca_file: r.pem\n", "federation.virtual_mesh.controller"},
		{"trust_domain: east.example\ndata_dir: x\nfederation:\n  virtual_mesh:\n    controller: c:1\n", "controller_ca_file is required"},
		{"trust_domain: east.example\ndata_dir: x\nca:\n  mode: cacerts\n  cacerts_dir: d\nfederation:\n  virtual_mesh:\n    controller: c:1\n    controller_ca_file: r.pem\n", "virtual_mesh needs ca.mode self-signed"},
		{"trust_domain: east.example\ndata_dir: x\naudit:\n  commit_delay: 1s\n", `audit.commit_delay "1s": use a duration up to 100ms, or off to commit at once`},
		{"trust_domain: east.example\ndata_dir: x\naudit:\n  commit_delay: -1ms\n", `audit.commit_delay "-1ms"`},
		{"trust_domain: east.example\ndata_dir: x\naudit:\n  retention: forever\n", `audit.retention "forever": use a positive duration such as 90d (how long a row outlives its certificate), or off to keep every row`},
		{"trust_domain: east.example\ndata_dir: x\naudit:\n  retention: 0s\n", `audit.retention "0s"`},
		{"trust_domain: east.example\ndata_dir: x\nruntime:\n  gc_percnt: 5\n", `unknown field "gc_percnt"`},
		{"trust_domain: east.example\ndata_dir: x\nlimits:\n  max_queue_wait: soon\n", `limits.max_queue_wait "soon": use a positive duration such as 5s, or off`},
		{"trust_domain: east.example\ndata_dir: x\nlimits:\n  max_signing_in_flight: many\n", "server: config test.yaml"},
	}
	for _, tc := range cases {
		c, err := ParseConfig("test.yaml", []byte(tc.yaml))
		if err == nil {
			_, err = c.validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	for _, tc := range []struct {
		yaml            string
		want, retention time.Duration
	}{
		{"", DefaultAuditCommitDelay, DefaultAuditRetention},
		{"audit:\n  commit_delay: off\n  retention: off\n", 0, 0},
		{"audit:\n  commit_delay: 5ms\n  retention: 30d\n", 5 * time.Millisecond, 30 * 24 * time.Hour},
	} {
		set := validated(t, tc.yaml)
		if set.metricsListen != DefaultMetricsListen {
			t.Errorf("metrics listen %q, want the default", set.metricsListen)
		}
		if set.commitDelay != tc.want || set.auditRetention != tc.retention {
			t.Errorf("%q: commit delay %v, retention %v; want %v, %v", tc.yaml, set.commitDelay, set.auditRetention, tc.want, tc.retention)
		}
	}
	// An unquoted off is YAML 1.1's false; it still means off.
	if c, err := ParseConfig("test.yaml", []byte("trust_domain: east.example\ndata_dir: x\nmetrics_listen: off\n")); err != nil {
		t.Fatal(err)
	} else if set, err := c.validate(); err != nil || set.metricsListen != "off" {
		t.Errorf("metrics_listen: off gave %v, %v", set, err)
	}
	if _, err := ParseConfig("test.yaml", []byte("trust_domian: east.example\n")); err == nil || !strings.Contains(err.Error(), `unknown field "trust_domian"`) {
		t.Errorf("misspelt key: %v", err)
	}
	if _, err := ParseConfig("test.yaml", []byte("svid:\n  max_ttl: forever\n")); err == nil || !strings.Contains(err.Error(), "invalid duration") {
		t.Errorf("bad duration: %v", err)
	}
}

// validated is the settings of a configuration of east.example in x with
// the keys of yaml besides.
func validated(t *testing.T, yaml string) *settings {
	t.Helper()
	c, err := ParseConfig("test.yaml", []byte("trust_domain: east.example\ndata_dir: x\n"+yaml))
	if err != nil {
		t.Fatal(err)
	}
	set, err := c.validate()
	if err != nil {
		t.Fatalf("%q: %v", yaml, err)
	}
	return set
}

// TestExpiredSVIDOnOpenConnection: a node's gRPC connection outlives the
// SVID it was opened with. Once that SVID has expired (by the server's
// clock), the connection may get nothing more signed for it, neither its
// own renewal nor its workloads' SVIDs and JWT-SVIDs, nor bundles; a Watch
// stream opened before ends at its next message. The node reconnects with a
// current SVID.
func TestExpiredSVIDOnOpenConnection(t *testing.T) {
	// Behind the real clock, so that what the server signs is valid for the
	// TLS client, which uses the real one.
	clock := &testClock{now: time.Now().Add(-5 * time.Minute)}
	h := startWith(t, Options{Clock: clock.Now, PollInterval: time.Hour}, nil)
	admin := h.admin(t)
	ctx := context.Background()
	nodeID := "spiffe://east.example/node/host-1"
	node, notAfter := attestNodeUntil(t, h, nodeID)
	entry, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{ParentId: nodeID,
		SpiffeId: "spiffe://east.example/ns/default/sa/reviews", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}}}})
	if err != nil {
		t.Fatal(err)
	}
	_, wcsr := newCSR(t)
	sign := func() error {
		_, err := node.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{EntryId: entry.GetId(), Csr: wcsr}}})
		return err
	}
	if err := sign(); err != nil {
		t.Fatalf("while the node SVID is valid: %v", err)
	}
	watch, err := node.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(notAfter.Sub(clock.Now()) + time.Second)
	expired := "credential: SVID " + nodeID + " expired at"
	wantStatus(t, sign(), codes.Unauthenticated, expired)
	_, err = node.SignX509SVID(ctx, &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: wcsr}}})
	wantStatus(t, err, codes.Unauthenticated, expired)
	_, err = node.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: []string{"spiffe://east.example/db"}})
	wantStatus(t, err, codes.Unauthenticated, expired)
	_, err = node.FetchBundles(ctx, &pb.FetchBundlesRequest{})
	wantStatus(t, err, codes.Unauthenticated, "reconnect with a current SVID")
	w, err := node.Watch(ctx, &pb.WatchRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	wantStatus(t, err, codes.Unauthenticated, "reconnect with a current SVID")
	// The open stream ends at its next message.
	if _, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{ParentId: nodeID,
		SpiffeId: "spiffe://east.example/ns/default/sa/ratings", Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1001"}}}}); err != nil {
		t.Fatal(err)
	}
	_, err = watch.Recv()
	wantStatus(t, err, codes.Unauthenticated, "the SVID this stream was opened with expired at "+notAfter.UTC().Format(time.RFC3339))
}
