package server

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
)

// attestNode makes a join token for nodeID, attests with it and returns a
// Node client that presents the node SVID.
func attestNode(t *testing.T, h *harness, nodeID string) pb.NodeClient {
	t.Helper()
	c, _ := attestNodeUntil(t, h, nodeID)
	return c
}

// attestNodeUntil is attestNode, also returning when the node SVID expires.
func attestNodeUntil(t *testing.T, h *harness, nodeID string) (pb.NodeClient, time.Time) {
	t.Helper()
	cert := attestNodeCert(t, h, nodeID)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return pb.NewNodeClient(h.dial(t, &cert)), leaf.NotAfter
}

// publishedBundle is the bundle as the admin API (and `meshfed bundle show`)
// returns it.
func publishedBundle(t *testing.T, h *harness) (*spiffebundle.Bundle, []byte) {
	t.Helper()
	m, err := h.admin(t).GetBundle(context.Background(), &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Parse(east, m.GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}
	return b, m.GetSpiffeBundle()
}

func TestSignJWTSVID(t *testing.T) {
	h := start(t, nil)
	ctx := context.Background()
	const nodeID = "spiffe://east.example/node/host-1"
	node := attestNode(t, h, nodeID)
	admin := h.admin(t)
	entry, err := admin.CreateEntry(ctx, &pb.CreateEntryRequest{Entry: &pb.Entry{
		ParentId: nodeID, SpiffeId: "spiffe://east.example/ns/default/sa/reviews",
		Selectors: []*pb.Selector{{Type: "unix", Value: "uid:1000"}},
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

	// The bundle carries the server's JWT key, as a jwt-svid JWK.
	b, raw := publishedBundle(t, h)
	if len(b.JWTAuthorities()) != 1 || !strings.Contains(string(raw), `"use":"jwt-svid"`) {
		t.Fatalf("bundle JWT authorities %v; JSON %s", b.JWTAuthorities(), raw)
	}
	if _, ok := b.FindJWTAuthority(h.srv.jwtKey.id); !ok {
		t.Fatalf("the bundle lacks the server's key %s", h.srv.jwtKey.id)
	}
	if st, err := os.Stat(filepath.Join(h.srv.set.dataDir, "jwt", "jwt.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("JWT key file: %v, %v; want 0600", st, err)
	}

	aud := []string{"spiffe://west.example/api"}
	before := time.Now().Truncate(time.Second)
	resp, err := node.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), b, aud)
	if err != nil {
		t.Fatalf("the JWT-SVID does not validate with the bundle: %v", err)
	}
	if svid.ID.String() != entry.GetSpiffeId() || resp.GetSpiffeId() != entry.GetSpiffeId() || !slices.Equal(svid.Audience, aud) {
		t.Errorf("JWT-SVID for %s (message %s), aud %q", svid.ID, resp.GetSpiffeId(), svid.Audience)
	}
	if life := svid.Expiry.Sub(before); life < DefaultJWTSVIDTTL || life > DefaultJWTSVIDTTL+2*time.Second || svid.Expiry.Unix() != resp.GetExpiresAt() {
		t.Errorf("expires %s (message %d), want %s after issue", svid.Expiry, resp.GetExpiresAt(), DefaultJWTSVIDTTL)
	}
	tok, err := jwt.ParseSigned(resp.GetToken(), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if hd := tok.Headers[0]; hd.Algorithm != "ES256" || hd.KeyID != h.srv.jwtKey.id || hd.ExtraHeaders[jose.HeaderType] != "JWT" || len(hd.ExtraHeaders) != 1 {
		t.Errorf("header alg %s kid %s extra %v; want ES256, the server's kid and typ JWT only", hd.Algorithm, hd.KeyID, hd.ExtraHeaders)
	}
	var names []string
	for k := range svid.Claims {
		names = append(names, k)
	}
	slices.Sort(names)
	if want := []string{"aud", "exp", "iat", "jti", "sub"}; !slices.Equal(names, want) {
		t.Errorf("claims %q, want %q", names, want)
	}

	// Lifetimes: asked for, clipped to svid.max_ttl.
	for _, tc := range []struct{ ask, want time.Duration }{{time.Hour, time.Hour}, {48 * time.Hour, DefaultMaxSVIDTTL}} {
		r, err := node.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: aud, TtlSeconds: int64(tc.ask / time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if life := time.Unix(r.GetExpiresAt(), 0).Sub(before); life < tc.want || life > tc.want+2*time.Second {
			t.Errorf("asked for %s: lifetime %s, want %s", tc.ask, life, tc.want)
		}
	}

	// With no entry, the node's own identity.
	own, err := node.SignJWTSVID(ctx, &pb.SignJWTSVIDRequest{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := jwtsvid.ParseAndValidate(own.GetToken(), b, aud); err != nil || s.ID.String() != nodeID {
		t.Errorf("own JWT-SVID: %v, %v", s, err)
	}

	long := strings.Repeat("a", MaxJWTAudienceBytes+1)
	for _, tc := range []struct {
		name   string
		client pb.NodeClient
		req    *pb.SignJWTSVIDRequest
		code   codes.Code
		msg    string
	}{
		{"another node's entry", node, &pb.SignJWTSVIDRequest{EntryId: other.GetId(), Audience: aud}, codes.PermissionDenied,
			"belongs to spiffe://east.example/node/host-2, not to " + nodeID},
		{"no audience", node, &pb.SignJWTSVIDRequest{EntryId: entry.GetId()}, codes.InvalidArgument, "server: a JWT-SVID needs 1 to 16 audiences, not 0"},
		{"17 audiences", node, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: make([]string, 17)}, codes.InvalidArgument, "needs 1 to 16 audiences, not 17"},
		{"empty audience", node, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: []string{"a", ""}}, codes.InvalidArgument, "audience 2 is empty or longer than 2048 bytes"},
		{"long audience", node, &pb.SignJWTSVIDRequest{EntryId: entry.GetId(), Audience: []string{long}}, codes.InvalidArgument, "audience 1 is empty or longer than 2048 bytes"},
		{"unknown entry", node, &pb.SignJWTSVIDRequest{EntryId: "nope", Audience: aud}, codes.NotFound, `no entry "nope"`},
		{"no SVID", pb.NewNodeClient(h.dial(t, nil)), &pb.SignJWTSVIDRequest{Audience: aud}, codes.Unauthenticated, "present this trust domain's SVID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.SignJWTSVID(ctx, tc.req)
			wantStatus(t, err, tc.code, tc.msg)
		})
	}

	// Every JWT-SVID issued has its audit row: the jti as serial, the
	// credential the node presented, the exp.
	audit, err := admin.ListIssued(ctx, &pb.ListIssuedRequest{SpiffeId: entry.GetSpiffeId()})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(audit.GetIssued()); n != 3 {
		t.Fatalf("%d audit rows for the entry, want 3", n)
	}
	var row *pb.Issued
	for _, r := range audit.GetIssued() {
		if r.GetSerial() == svid.Claims["jti"] {
			row = r
		}
	}
	if row == nil || row.GetCredentialKind() != "x509-svid" || row.GetCaller() != "node "+nodeID+" entry "+entry.GetId()+" jwt-svid" ||
		row.GetNotAfter() != resp.GetExpiresAt() || row.GetServerId() != h.srv.set.serverID {
		t.Errorf("audit row of the first JWT-SVID (jti %v): %v", svid.Claims["jti"], row)
	}
}

// Servers sharing a store publish each other's JWT keys, so a JWT-SVID
// from one validates with the bundle of the other; a restart keeps the key.
func TestJWTKeysAcrossServers(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "shared.db")
	a := start(t, func(c *Config) { c.Datastore = db; c.ServerID = "a" })
	dirB := t.TempDir()
	mkB := func() *harness {
		return start(t, func(c *Config) {
			c.Datastore, c.ServerID = db, "b"
			c.DataDir, c.AdminSocket = filepath.Join(dirB, "data"), filepath.Join(dirB, "admin.sock")
		})
	}
	b := mkB()
	if a.srv.jwtKey.id == b.srv.jwtKey.id {
		t.Fatal("two servers made the same JWT key")
	}
	a.srv.tick(context.Background()) // notice b's key now rather than at the next poll
	bundleA, _ := publishedBundle(t, a)
	for _, kid := range []string{a.srv.jwtKey.id, b.srv.jwtKey.id} {
		if _, ok := bundleA.FindJWTAuthority(kid); !ok {
			t.Errorf("server a's bundle lacks key %s", kid)
		}
	}
	aud := []string{"reports"}
	tok, err := attestNode(t, b, "spiffe://east.example/node/host-1").SignJWTSVID(context.Background(), &pb.SignJWTSVIDRequest{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok.GetToken(), bundleA, aud); err != nil {
		t.Fatalf("server b's JWT-SVID against server a's bundle: %v", err)
	}

	kid := b.srv.jwtKey.id
	b.cancel()
	if err := <-b.stopped; err != nil {
		t.Fatal(err)
	}
	b.stopped <- nil // for the cleanup
	if again := mkB(); again.srv.jwtKey.id != kid {
		t.Errorf("key %s after a restart, want %s", again.srv.jwtKey.id, kid)
	}
}
