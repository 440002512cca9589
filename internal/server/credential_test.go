package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/meshfed/meshfed/internal/testjwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	istioca "istio.io/api/security/v1alpha1"
)

// handJWT builds a compact JWS by hand, for tokens no library would make.
func handJWT(header, claims map[string]any, sign func(input []byte) []byte) string {
	enc := func(v any) string {
		raw, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(raw)
	}
	input := enc(header) + "." + enc(claims)
	return input + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(input)))
}

// Every credential failure the issue lists, through the Istio API, with the
// exact status code and the verifier's reason.
func TestIstioCredentialTable(t *testing.T) {
	h := start(t, nil)
	client := istioca.NewIstioCertificateServiceClient(h.dial(t, nil))
	_, csrDER := newCSR(t)
	csrPEM := string(pemfile.EncodeCSR(csrDER))
	now := time.Now()
	valid := func(mut func(map[string]any)) map[string]any {
		c := saClaims("default", "reviews", "istio-ca", now.Add(time.Hour))
		if mut != nil {
			mut(c)
		}
		return c
	}
	otherKey, _ := pki.GenerateKey(pki.ECP256)
	sign := func(key any, kid string, claims map[string]any) string {
		return testjwt.Sign(t, jose.ES256, key, kid, "", claims)
	}
	good := sign(h.jwtKey, "k1", valid(nil))
	parts := strings.Split(good, ".")
	sigBytes, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sigBytes[0] ^= 1
	tampered := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sigBytes)
	pubDER, _ := x509.MarshalPKIXPublicKey(h.jwtKey.Public())

	cases := []struct {
		name, token, msg string
	}{
		{"expired", sign(h.jwtKey, "k1", valid(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() })), "credential: JWT expired at"},
		{"not yet valid", sign(h.jwtKey, "k1", valid(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })), "credential: JWT is not valid before"},
		{"wrong audience", sign(h.jwtKey, "k1", valid(func(c map[string]any) { c["aud"] = []string{"other"} })), `credential: JWT audience ["other"] does not include`},
		{"wrong issuer", sign(h.jwtKey, "k1", valid(func(c map[string]any) { c["iss"] = "https://evil.example" })), `credential: JWT issuer "https://evil.example" is not a configured issuer`},
		{"unknown kid", sign(h.jwtKey, "k9", valid(nil)), `credential: no key "k9" from issuer "https://kubernetes.default.svc"`},
		{"alg none", handJWT(map[string]any{"alg": "none", "kid": "k1"}, valid(nil), func([]byte) []byte { return nil }), `credential: JWT signed with alg "none"`},
		{"HMAC keyed with the public key", handJWT(map[string]any{"alg": "HS256", "kid": "k1"}, valid(nil), func(in []byte) []byte {
			m := hmac.New(sha256.New, pubDER)
			m.Write(in)
			return m.Sum(nil)
		}), `credential: JWT signed with alg "HS256"`},
		{"tampered signature", tampered, `credential: JWT signature does not verify with key "k1"`},
		{"signed by another key", sign(otherKey, "k1", valid(nil)), `credential: JWT signature does not verify with key "k1"`},
		{"oversized token", strings.Repeat("a", 20000), "credential: JWT is 20000 bytes; the limit is"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tc.token)
			_, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csrPEM})
			wantStatus(t, err, codes.Unauthenticated, tc.msg)
		})
	}

	t.Run("CSR with a bad signature", func(t *testing.T) {
		csr, _ := pemfile.ParseCSR([]byte(csrPEM))
		raw := append([]byte(nil), csr.Raw...)
		raw[len(raw)-3] ^= 1
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+good)
		_, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(raw))})
		wantStatus(t, err, codes.InvalidArgument, "pki: CSR signature does not verify")
	})
	t.Run("not a Bearer header", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic "+good)
		_, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csrPEM})
		wantStatus(t, err, codes.Unauthenticated, `the authorization metadata must be "Bearer <service-account token>"`)
	})
	t.Run("TTL above the maximum is cut to it", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+good)
		resp, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: csrPEM, ValidityDuration: int64((72 * time.Hour).Seconds())})
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := pemfile.ParseCertificates([]byte(resp.CertChain[0]))
		if life := leaf[0].NotAfter.Sub(leaf[0].NotBefore); life != DefaultMaxSVIDTTL+pki.Backdate {
			t.Errorf("lifetime %s, want svid.max_ttl %s (+%s backdating)", life, DefaultMaxSVIDTTL, pki.Backdate)
		}
	})
	t.Run("SVID of another trust domain is refused at the handshake", func(t *testing.T) {
		other := spiffeid.RequireTrustDomainFromString("west.example")
		key, _ := pki.GenerateKey(pki.ECP256)
		root, _ := pki.CreateRoot(pki.RootRequest{Signer: key, TrustDomain: other})
		ca, _ := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{root}})
		wkey, _ := pki.GenerateKey(pki.ECP256)
		chain, err := ca.SignX509SVID(pki.SVIDRequest{ID: spiffeid.RequireFromPath(other, "/ns/default/sa/reviews"), PublicKey: wkey.Public()})
		if err != nil {
			t.Fatal(err)
		}
		cert := &tls.Certificate{Certificate: [][]byte{chain[0].Raw}, PrivateKey: wkey}
		c := istioca.NewIstioCertificateServiceClient(h.dial(t, cert))
		_, err = c.CreateCertificate(context.Background(), &istioca.IstioCertificateRequest{Csr: csrPEM})
		wantStatus(t, err, codes.Unavailable, "")
		// On the wire: the server ends the handshake with a bad_certificate
		// alert (with TLS 1.3 the client sees it at its first read).
		roots := x509.NewCertPool()
		roots.AddCert(h.bundle.X509Authorities()[0])
		conn, err := tls.Dial("tcp", h.srv.Addrs().Listen.String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}})
		if err == nil {
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "remote error: tls: bad certificate") {
			t.Errorf("handshake with a foreign SVID: %v, want a bad_certificate alert", err)
		}
	})

	// The metrics count what happened, by credential kind and result.
	body := h.metricsText(t)
	for _, want := range []string{
		`meshfed_server_issuance_total{credential="k8s-sat",result="ok"} 1`,
		`meshfed_server_issuance_total{credential="k8s-sat",result="unauthenticated"} 11`,
		`meshfed_server_issuance_total{credential="k8s-sat",result="invalid"} 1`,
		"meshfed_server_ca_expiry_timestamp_seconds",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every audit row went through a commit the metrics saw.
	rows, err := h.srv.store.ListIssued(context.Background(), store.AuditFilter{Limit: store.MaxAuditLimit})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("meshfed_server_audit_commit_rows_sum %d\n", len(rows)); len(rows) == 0 || !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %q (the audit log has %d rows)", want, len(rows))
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + h.srv.Addrs().Metrics.String() + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, resp.StatusCode, err)
		}
		resp.Body.Close()
	}
}
