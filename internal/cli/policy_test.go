package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/testjwt"
)

func runMeshfed(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Main(args, nil, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestPolicyExplain(t *testing.T) {
	const dir = "../policy/testdata/mesh"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"allowed", []string{"--namespace", "foo", "--labels", "app=httpbin", "--port", "8000", "--principal", "cluster.local/ns/default/sa/sleep", "--method", "GET", "--path", "/info/x"},
			"mTLS:           STRICT (set by foo/example-policy: namespace-wide policy)\nJWT rules:      none (no RequestAuthentication applies)\nAuthorization:  ALLOWED by ALLOW foo/httpbin rule 0\n" +
				"  DENY foo/deny-dev-post:\n    rule 0: no match: from: namespaces [\"dev\"] does not match \"default\"\n  ALLOW foo/httpbin:\n    rule 0: matches\n"},
		{"denied", []string{"--namespace", "foo", "--labels", "app=httpbin", "--port", "8000", "--principal", "cluster.local/ns/dev/sa/x", "--method", "POST", "--path", "/data"},
			"mTLS:           STRICT (set by foo/example-policy: namespace-wide policy)\nJWT rules:      none (no RequestAuthentication applies)\nAuthorization:  DENIED by DENY foo/deny-dev-post rule 0\n" +
				"  DENY foo/deny-dev-post:\n    rule 0: matches\n  ALLOW foo/httpbin:\n    rule 0: no match: from: none of 2 sources matches (from[0]: principals [\"cluster.local/ns/default/sa/sleep\"] does not match \"cluster.local/ns/dev/sa/x\")\n"},
		{"port-level DISABLE", []string{"--namespace", "foo", "--labels", "app=example-app,tier=x", "--port", "80", "--principal", "cluster.local/ns/a/sa/b"},
			"mTLS:           DISABLE (set by foo/example-workload-policy: workload policy, portLevelMtls for port 80)\n                mTLS is DISABLE on this port: the connection is plaintext and has no peer principal\nJWT rules:      none (no RequestAuthentication applies)\nAuthorization:  ALLOWED: no ALLOW policy applies to the workload: allowed\n" +
				"  DENY foo/deny-dev-post:\n    rule 0: no match: from: namespaces [\"dev\"] does not match \"\"\n"},
		{"mesh default", []string{"--namespace", "baz", "--port", "80"},
			"mTLS:           PERMISSIVE (set by istio-system/default: mesh-wide policy)\nJWT rules:      none (no RequestAuthentication applies)\nAuthorization:  ALLOWED: no ALLOW policy applies to the workload: allowed\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runMeshfed(append([]string{"policy", "explain", "--policies", dir}, tc.args...)...)
			if code != 0 || out != tc.want {
				t.Errorf("exit %d, stderr %q\ngot:\n%s\nwant:\n%s", code, errOut, out, tc.want)
			}
		})
	}
}

func TestPolicyExplainJWT(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pol := filepath.Join(dir, "policies")
	if err := os.Mkdir(pol, 0o700); err != nil {
		t.Fatal(err)
	}
	write("policies/p.yaml", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: foo
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  rules:
  - from:
    - source:
        requestPrincipals: ["https://issuer.example/*"]
`)
	jwksFile := write("jwks.json", string(jwks))
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tok := testjwt.Sign(t, jose.ES256, key, "k1", "", map[string]any{"iss": "https://issuer.example", "sub": "alice", "exp": now.Add(time.Hour).Unix()})
	tokFile := write("token.jwt", tok+"\n")
	base := []string{"policy", "explain", "--policies", pol, "-n", "foo", "--port", "8080", "--principal", "td/ns/foo/sa/a", "--jwks", "https://issuer.example/jwks=" + jwksFile}
	rule := "JWT rules:\n  foo/jwt jwtRules[0]: issuer https://issuer.example, keys from jwksUri https://issuer.example/jwks, token from header Authorization (prefix \"Bearer \") or query parameter access_token\n"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"valid", []string{"--jwt", tokFile, "--now", "2025-06-01T12:00:00Z"},
			"mTLS:           PERMISSIVE (set by (default): no mesh-wide PeerAuthentication: PERMISSIVE by default)\n" + rule +
				"JWT:            valid: request principal https://issuer.example/alice (foo/jwt jwtRules[0])\nAuthorization:  ALLOWED by ALLOW foo/require-jwt rule 0\n" +
				"  ALLOW foo/require-jwt:\n    rule 0: matches\n"},
		{"expired", []string{"--jwt", tokFile, "--now", "2025-06-01T14:00:00Z"},
			"mTLS:           PERMISSIVE (set by (default): no mesh-wide PeerAuthentication: PERMISSIVE by default)\n" + rule +
				"JWT:            invalid: JWT in header Authorization (prefix \"Bearer \"): token is expired (401)\nAuthorization:  not evaluated: the request is rejected with 401 by request authentication before authorization\n"},
		{"no token", nil,
			"mTLS:           PERMISSIVE (set by (default): no mesh-wide PeerAuthentication: PERMISSIVE by default)\n" + rule +
				"Authorization:  DENIED: ALLOW policies apply to the workload and none matched: denied\n" +
				"  ALLOW foo/require-jwt:\n    rule 0: no match: from: requestPrincipals [\"https://issuer.example/*\"] does not match \"\"\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runMeshfed(append(base, tc.args...)...)
			if code != 0 || out != tc.want {
				t.Errorf("exit %d, stderr %q\ngot:\n%s\nwant:\n%s", code, errOut, out, tc.want)
			}
			if strings.Contains(out+errOut, tok) {
				t.Error("the token was printed")
			}
		})
	}
	code, out, _ := runMeshfed(append(base, "--jwt", tokFile, "--now", "2025-06-01T12:00:00Z", "-o", "json")...)
	var ex struct {
		MTLS          struct{ Mode string } `json:"mtls"`
		JWT           struct{ Principal string }
		Authorization struct {
			Allowed bool
			Policy  string
		}
	}
	if err := json.Unmarshal([]byte(out), &ex); code != 0 || err != nil || ex.MTLS.Mode != "PERMISSIVE" || ex.JWT.Principal != "https://issuer.example/alice" || !ex.Authorization.Allowed || ex.Authorization.Policy != "foo/require-jwt" {
		t.Errorf("json: exit %d, %v, %s", code, err, out)
	}
}

func TestPolicyLint(t *testing.T) {
	code, out, errOut := runMeshfed("policy", "lint", "--policies", "../policy/testdata/clean")
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("clean: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runMeshfed("policy", "lint", "--policies", "../policy/testdata/mesh")
	if code != 1 || strings.Count(out, "\n") != 4 || !strings.Contains(out, "00-mesh.yaml:12: PeerAuthentication istio-system/strict-everywhere: ignored: a second mesh-wide PeerAuthentication") ||
		errOut != "meshfed: policy lint: 4 finding(s) in ../policy/testdata/mesh\n" {
		t.Errorf("mesh: exit %d\nstdout %s\nstderr %q", code, out, errOut)
	}
	code, out, _ = runMeshfed("policy", "lint", "--policies", "../policy/testdata/mesh", "-o", "json")
	var findings []map[string]any
	if err := json.Unmarshal([]byte(out), &findings); code != 1 || err != nil || len(findings) != 4 {
		t.Errorf("json: exit %d, %v, %s", code, err, out)
	}
}

func TestPolicyErrors(t *testing.T) {
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "a.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\n  namespace: default\nspec:\n  action: NOPE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"policy", "explain", "--policies", bad, "-n", "x", "--port", "80"}, 1, "policy: " + filepath.Join(bad, "a.yaml") + `:7: AuthorizationPolicy default/deny: spec.action: unknown value "NOPE"`},
		{[]string{"policy", "explain", "--policies", bad, "-n", "x"}, 2, `required flag(s) "port" not set`},
		{[]string{"policy", "explain", "--policies", bad, "-n", "x", "--port", "80", "--labels", "app"}, 2, `--labels "app": give k=v`},
		{[]string{"policy", "explain", "--policies", bad, "-n", "x", "--port", "70000"}, 2, "give a port between 1 and 65535"},
		{[]string{"policy", "lint"}, 2, `required flag(s) "policies" not set`},
		{[]string{"policy", "lint", "--policies", bad}, 1, `spec.action: unknown value "NOPE"`},
	}
	for _, tc := range cases {
		code, _, errOut := runMeshfed(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// TestPolicyExplainDiscovery: a jwtRule with neither jwks nor jwksUri
// (OpenID discovery at a running proxy) takes its keys from --jwks
// ISSUER=FILE offline.
func TestPolicyExplainDiscovery(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256"}}})
	if err := os.Mkdir(filepath.Join(dir, "policies"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"policies/ra.yaml": "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: oidc\n  namespace: foo\nspec:\n  jwtRules:\n  - issuer: https://accounts.example\n",
		"jwks.json":        string(jwks),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tok := testjwt.Sign(t, jose.ES256, key, "k1", "", map[string]any{"iss": "https://accounts.example", "sub": "bob", "exp": time.Now().Add(time.Hour).Unix()})
	if err := os.WriteFile(filepath.Join(dir, "token.jwt"), []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"policy", "explain", "--policies", filepath.Join(dir, "policies"), "-n", "foo", "--port", "80", "--jwt", filepath.Join(dir, "token.jwt")}
	code, out, errOut := runMeshfed(append(args, "--jwks", "https://accounts.example="+filepath.Join(dir, "jwks.json"))...)
	if code != 0 || !strings.Contains(out, "keys from OpenID discovery of https://accounts.example,") ||
		!strings.Contains(out, "JWT:            valid: request principal https://accounts.example/bob (foo/oidc jwtRules[0])") {
		t.Fatalf("exit %d, stderr %q:\n%s", code, errOut, out)
	}
	code, out, _ = runMeshfed(args...)
	if code != 0 || !strings.Contains(out, "no --jwks file given for it") {
		t.Fatalf("without --jwks: exit %d:\n%s", code, out)
	}
}
