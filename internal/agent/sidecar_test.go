package agent

import (
	"context"
	"crypto"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/server"
	"github.com/meshfed/meshfed/internal/testjwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// saToken signs a service-account token as a Kubernetes API server would.
func saToken(t *testing.T, key crypto.Signer, ns, sa string, exp time.Time) string {
	t.Helper()
	return testjwt.Sign(t, jose.ES256, key, "k1", "", map[string]any{
		"iss": "https://kubernetes.default.svc", "aud": []string{"istio-ca"}, "exp": exp.Unix(), "iat": time.Now().Add(-time.Minute).Unix(),
		"sub":           "system:serviceaccount:" + ns + ":" + sa,
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa, "uid": "u"}},
	})
}

func TestSidecarModeReReadsTheTokenFile(t *testing.T) {
	dir := t.TempDir()
	key, _ := pki.GenerateKey(pki.ECP256)
	raw, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	jwks := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwks, raw, 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{
		TrustDomain: "east.example", DataDir: filepath.Join(dir, "server"),
		Listen: "127.0.0.1:0", BundleListen: "127.0.0.1:0", MetricsListen: "off", AdminSocket: filepath.Join(dir, "admin.sock"),
		Credentials: server.CredentialsConfig{KubernetesJWT: []server.JWTIssuerConfig{{Issuer: "https://kubernetes.default.svc", JWKSFile: jwks, Audiences: []string{"istio-ca"}}}},
	}, server.Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { cancel(); <-done }) })

	tokenFile := filepath.Join(dir, "token")
	write := func(tok string) {
		if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(saToken(t, key, "default", "reviews", time.Now().Add(time.Hour)))
	clock := &fakeClock{now: time.Now()}
	a, err := New(Config{ServerAddr: srv.Addrs().Listen.String(), TrustBundle: filepath.Join(dir, "server", "ca", "ca.pem"),
		TokenFile: tokenFile, DataDir: filepath.Join(dir, "agent"), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "spiffe://east.example/ns/default/sa/reviews"
	if a.NodeID().String() != want {
		t.Fatalf("sidecar identity %s, want %s (derived by the server from the token)", a.NodeID(), want)
	}
	got := a.Cache.X509SVIDs([]Selector{{Type: "unix", Value: "uid:4242"}})
	if len(got) != 1 || got[0].SVID.ID.String() != want {
		t.Fatalf("a local caller gets %+v", got)
	}
	first := got[0].SVID.Certificates[0]
	half := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 61 / 100)

	// The token rotated to an expired one: the renewal reads it and fails.
	write(saToken(t, key, "default", "reviews", time.Now().Add(-time.Minute)))
	clock.Set(half)
	a.Sync(context.Background())
	if now := a.Cache.X509SVIDs(nil)[0].SVID.Certificates[0]; !now.Equal(first) {
		t.Fatal("renewed with an expired token")
	}
	// A fresh token: the next attempt succeeds.
	write(saToken(t, key, "default", "reviews", time.Now().Add(time.Hour)))
	clock.Set(half.Add(a.cfg.MaxBackoff))
	a.Sync(context.Background())
	if now := a.Cache.X509SVIDs(nil)[0].SVID.Certificates[0]; now.Equal(first) {
		t.Fatal("not renewed with the fresh token")
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, m := range []string{`meshfed_agent_renewals_total{kind="node",result="error"} 1`, `meshfed_agent_renewals_total{kind="node",result="ok"} 1`} {
		if !strings.Contains(rec.Body.String(), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
	// A second replica of the workload, with the same service account, is
	// the same node identity: its attestation does not shut out the first
	// (sidecar nodes are not held to one SVID lineage).
	replica, err := New(Config{ServerAddr: srv.Addrs().Listen.String(), TrustBundle: filepath.Join(dir, "server", "ca", "ca.pem"),
		TokenFile: tokenFile, DataDir: filepath.Join(dir, "replica"), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	if err := replica.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, ag := range map[string]*Agent{"first": a, "replica": replica} {
		client, _ := ag.nodeClient()
		if _, err := client.FetchBundles(context.Background(), &pb.FetchBundlesRequest{}); err != nil {
			t.Errorf("the %s sidecar after both attested: %v", name, err)
		}
	}

	// Evicted, a sidecar attests again with its token at once.
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewAdminClient(conn).EvictNode(context.Background(), &pb.EvictNodeRequest{SpiffeId: want}); err != nil {
		t.Fatal(err)
	}
	client, gen := a.nodeClient()
	a.noteRefusal(a.watchOnce(context.Background(), client), gen)
	if r := a.Refused(); r != pb.ReasonNodeNotAttested {
		t.Fatalf("Refused() = %q after the eviction", r)
	}
	before := a.node.Certificates[0]
	a.Sync(context.Background())
	if r := a.Refused(); r != "" || a.node.Certificates[0].Equal(before) {
		t.Fatalf("after a Sync: Refused() = %q, attested again: %v", r, !a.node.Certificates[0].Equal(before))
	}
	client, _ = a.nodeClient()
	if _, err := client.FetchBundles(context.Background(), &pb.FetchBundlesRequest{}); err != nil {
		t.Errorf("after attesting again: %v", err)
	}

	// A token for another service account is refused: a sidecar's identity
	// does not change under it.
	write(saToken(t, key, "default", "ratings", time.Now().Add(time.Hour)))
	if err := a.attest(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "restart it to change identity") {
		t.Fatalf("identity change: %v", err)
	}
}
