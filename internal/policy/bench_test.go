package policy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshfed/meshfed/internal/policy"
)

// benchNamespaces is how many application namespaces the benchmark mesh
// has, each with the same three AuthorizationPolicies.
const benchNamespaces = 10

const benchIssuer = "https://issuer.bench.example"

// benchMesh is a mesh-sized policy set: in the root namespace a mesh-wide
// STRICT PeerAuthentication, a mesh-wide DENY of a quarantined namespace
// and a RequestAuthentication with an inline ES256 key set; in each of
// benchNamespaces namespaces a namespace-wide STRICT PeerAuthentication,
// two workload ones (one with a port-level exception), an ALLOW for the api workload
// (principals, methods, paths, a claim condition), a DENY of admin paths
// to anyone but the ops service account, and an ALLOW of health checks.
// It returns the set and a key that signs tokens it accepts.
func benchMesh(b *testing.B) (*policy.Set, *ecdsa.PrivateKey) {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		b.Fatal(err)
	}
	var y strings.Builder
	fmt.Fprintf(&y, `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-quarantine, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: [quarantine]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules:
  - issuer: %s
    audiences: [api]
    jwks: '%s'
`, benchIssuer, jwks)
	for i := range benchNamespaces {
		fmt.Fprintf(&y, `---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: ns-wide, namespace: ns%[1]d}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: api-metrics, namespace: ns%[1]d}
spec:
  selector: {matchLabels: {app: api}}
  portLevelMtls:
    9090: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: legacy, namespace: ns%[1]d}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: ns%[1]d}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: [cluster.local/ns/ns%[1]d/sa/ops]}
    to:
    - operation: {paths: [/admin, /admin/*]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-health, namespace: ns%[1]d}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET], paths: [/healthz, /readyz]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: ns%[1]d}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ns%[1]d/sa/batch]}
    to:
    - operation: {methods: [POST], paths: [/api/v1/jobs/*]}
  - from:
    - source: {principals: [cluster.local/ns/ns%[1]d/sa/frontend, cluster.local/ns/ns%[1]d/sa/mobile]}
    to:
    - operation: {methods: [GET, POST], paths: [/api/v1/*], ports: ["8080"]}
    when:
    - key: request.auth.claims[groups]
      values: [readers, writers]
`, i)
	}
	docs, err := policy.Parse("bench.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	set, err := policy.NewSet(docs)
	if err != nil {
		b.Fatal(err)
	}
	return set, key
}

// BenchmarkMTLSMesh is the effective mTLS mode of a workload's port in the
// benchmark mesh (mesh, namespace and workload policies, the port-level
// exception deciding): what a sidecar decides per inbound connection.
func BenchmarkMTLSMesh(b *testing.B) {
	set, _ := benchMesh(b)
	labels := map[string]string{"app": "api", "version": "v2"}
	b.ReportAllocs()
	for b.Loop() {
		if set.MTLS("ns7", labels, 9090).Mode != policy.ModePermissive {
			b.Fatal("mode")
		}
	}
}

// BenchmarkAuthorizeMesh is one authorization decision in the benchmark
// mesh for an HTTP request to the api workload of ns7: allowed by the
// second rule of its ALLOW policy after every DENY was checked, and denied
// by the namespace's DENY of admin paths.
func BenchmarkAuthorizeMesh(b *testing.B) {
	set, _ := benchMesh(b)
	labels := map[string]string{"app": "api", "version": "v2"}
	auth := &policy.AuthnResult{Principal: benchIssuer + "/alice", Claims: map[string]any{"groups": []any{"readers"}}}
	for _, tc := range []struct {
		name    string
		path    string
		allowed bool
	}{
		{"allow", "/api/v1/items", true},
		{"deny", "/admin/users", false},
	} {
		req := policy.Request{Principal: "cluster.local/ns/ns7/sa/frontend", Method: "GET", Path: tc.path, Port: 8080, Host: "api.ns7", Auth: auth}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if set.Authorize("ns7", labels, req).Allowed != tc.allowed {
					b.Fatal("decision")
				}
			}
		})
	}
}

// BenchmarkAuthenticate validates an ES256 bearer token against the
// benchmark mesh's RequestAuthentication (find the rules in force and the
// token, parse, pick the key, verify, check iss, exp, nbf, aud). The
// ceiling, jose-verify, is go-jose's bare verification of the same token
// with the same key and the claims' decoding, nothing else.
func BenchmarkAuthenticate(b *testing.B) {
	set, key := benchMesh(b)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(sig).Claims(map[string]any{
		"iss": benchIssuer, "sub": "alice", "aud": []string{"api"}, "groups": []string{"readers"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).Serialize()
	if err != nil {
		b.Fatal(err)
	}
	headers := map[string][]string{"Authorization": {"Bearer " + tok}}
	labels := map[string]string{"app": "api"}
	b.Run("policy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := set.Authenticate("ns7", labels, headers, nil, now)
			if err != nil || res.Principal != benchIssuer+"/alice" {
				b.Fatal(res.Principal, err)
			}
		}
	})
	b.Run("jose-verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				b.Fatal(err)
			}
			var claims jwt.Claims
			var raw map[string]any
			if err := t.Claims(&key.PublicKey, &claims, &raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
