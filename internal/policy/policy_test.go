package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/meshfed/meshfed/internal/testjwt"
)

func mustSet(t testing.TB, yamls ...string) *Set {
	t.Helper()
	var docs []Document
	for i, y := range yamls {
		d, err := Parse(fmt.Sprintf("f%02d.yaml", i), []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d...)
	}
	s, err := NewSet(docs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pa(ns, name, created, body string) string {
	ts := ""
	if created != "" {
		ts = "\n  creationTimestamp: \"" + created + "\""
	}
	return fmt.Sprintf("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: %s\n  namespace: %s%s\nspec:\n%s\n", name, ns, ts, body)
}

func ap(ns, name, body string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s\n", name, ns, body)
}

func TestParseErrors(t *testing.T) {
	head := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\n  namespace: default\n"
	cases := []struct{ name, in, want string }{
		{"enum", head + "spec:\n  rules: []\n  action: NOPE\n", `policy: dir/a.yaml:8: AuthorizationPolicy default/deny: spec.action: unknown value "NOPE"`},
		{"unknown field", "---\n" + head + "spec:\n  rules:\n  - from:\n    - source:\n        principal: [x]\n", `policy: dir/a.yaml:11: AuthorizationPolicy default/deny: spec.rules[0].from[0].source.principal: unknown field`},
		{"other kind", "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n", `policy: dir/a.yaml:1: v1 Service: not a security.istio.io policy kind: give only PeerAuthentication, RequestAuthentication and AuthorizationPolicy (or skip other kinds)`},
		{"custom", head + "spec:\n  action: CUSTOM\n  provider:\n    name: ext\n", `policy: dir/a.yaml:7: AuthorizationPolicy default/deny: spec.action: CUSTOM is not supported: meshfed has no external authorizer to delegate to`},
		{"targetRefs", head + "spec:\n  targetRefs:\n  - kind: Service\n    name: x\n", `policy: dir/a.yaml:7: AuthorizationPolicy default/deny: spec.targetRefs: not supported: meshfed applies policy to workloads by selector; use spec.selector`},
		{"bad key", head + "spec:\n  rules:\n  - when:\n    - key: request.auth.claims[]\n      values: [x]\n", `policy: dir/a.yaml:9: AuthorizationPolicy default/deny: spec.rules[0].when[0].key: "request.auth.claims[]": empty []`},
		{"no values", head + "spec:\n  rules:\n  - when:\n    - key: source.ip\n", `policy: dir/a.yaml:8: AuthorizationPolicy default/deny: spec.rules[0].when[0]: at least one of values or notValues must be set`},
		{"bad port", head + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n", `policy: dir/a.yaml:10: AuthorizationPolicy default/deny: spec.rules[0].to[0].operation.ports: "http" is not a port number (0-65535)`},
		{"bad ip", head + "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\"]\n", `policy: dir/a.yaml:9: AuthorizationPolicy default/deny: spec.rules[0].from[0].source: "10.0.0.0/33" is not an IP address or CIDR block`},
		{"port 0", pa("foo", "p", "", "  selector:\n    matchLabels:\n      app: a\n  portLevelMtls:\n    0:\n      mode: DISABLE"), `policy: dir/a.yaml:11: PeerAuthentication foo/p: spec.portLevelMtls.0: port must be between 1 and 65535`},
		{"mode", pa("foo", "p", "", "  mtls:\n    mode: FOO"), `policy: dir/a.yaml:8: PeerAuthentication foo/p: spec.mtls.mode: unknown value "FOO"`},
		{"top-level", head + "spec: {}\nextra: 1\n", `policy: dir/a.yaml:1: not a Kubernetes object: unknown field "extra"`},
		{"no name", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: x\n", `policy: dir/a.yaml:1: AuthorizationPolicy: metadata.name: required`},
		{"jwt issuer", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: r\nspec:\n  jwtRules:\n  - jwksUri: https://x\n", `policy: dir/a.yaml:6: RequestAuthentication default/r: spec.jwtRules[0].issuer: required`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("dir/a.yaml", []byte(tc.in))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestParseBounds(t *testing.T) {
	big := make([]byte, MaxFileSize+1)
	if _, err := Parse("big.yaml", big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
	many := strings.Repeat(ap("ns", "x", "  {}")+"---\n", MaxDocumentsPerFile+1)
	if _, err := Parse("many.yaml", []byte(many)); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than %d documents", MaxDocumentsPerFile)) {
		t.Errorf("many documents: %v", err)
	}
	d, err := Parse("dup.yaml", []byte(ap("ns", "x", "  {}")+"---\n"+ap("ns", "x", "  {}")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSet(d); err == nil || err.Error() != "policy: dup.yaml:9: AuthorizationPolicy ns/x is also defined at dup.yaml:1" {
		t.Errorf("duplicate: %v", err)
	}
}

func TestLoadDirSkipOtherKinds(t *testing.T) {
	dir := t.TempDir()
	y := "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n---\n" + ap("foo", "a", "  {}")
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "v1 Service: not a security.istio.io policy kind") {
		t.Errorf("strict: %v", err)
	}
	s, err := LoadDir(dir, SkipOtherKinds(), WithRootNamespace("mesh-root"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.Documents()); n != 1 || s.RootNamespace() != "mesh-root" {
		t.Errorf("got %d documents, root %q", n, s.RootNamespace())
	}
}

func TestMTLS(t *testing.T) {
	mesh, err := LoadDir("testdata/mesh")
	if err != nil {
		t.Fatal(err)
	}
	// Two namespace-wide policies: the older (by creationTimestamp) counts
	// even though its file sorts later; two workload policies: the oldest
	// (no timestamps: file then position) wins.
	prec := mustSet(t,
		pa("istio-system", "mesh", "", "  mtls:\n    mode: UNSET"),
		pa("ns1", "newer", "2024-05-01T00:00:00Z", "  mtls:\n    mode: DISABLE"),
		pa("ns1", "older", "2024-01-01T00:00:00Z", "  mtls:\n    mode: STRICT"),
		pa("ns1", "wl-a", "", "  selector:\n    matchLabels:\n      app: a\n  mtls:\n    mode: PERMISSIVE")+"---\n"+
			pa("ns1", "wl-b", "", "  selector:\n    matchLabels:\n      app: a\n  mtls:\n    mode: DISABLE"),
		pa("ns1", "wl-unset", "", "  selector:\n    matchLabels:\n      app: u\n  mtls:\n    mode: DISABLE\n  portLevelMtls:\n    9000:\n      mode: UNSET\n    9001:\n      mode: STRICT"),
		pa("ns2", "inherit", "", "  mtls: {}"),
		pa("istio-system", "root-wl", "", "  selector:\n    matchLabels:\n      app: gw\n  mtls:\n    mode: DISABLE"),
	)
	none := mustSet(t)
	cases := []struct {
		name   string
		set    *Set
		ns     string
		labels map[string]string
		port   uint32
		want   Decision
	}{
		{"no policy", none, "foo", nil, 80, Decision{ModePermissive, "(default)", "no mesh-wide PeerAuthentication: PERMISSIVE by default"}},
		{"mesh oldest counts", mesh, "baz", nil, 80, Decision{ModePermissive, "istio-system/default", "mesh-wide policy"}},
		{"namespace STRICT", mesh, "foo", map[string]string{"app": "other"}, 80, Decision{ModeStrict, "foo/example-policy", "namespace-wide policy"}},
		{"seed port-level DISABLE", mesh, "foo", map[string]string{"app": "example-app"}, 80, Decision{ModeDisable, "foo/example-workload-policy", "workload policy, portLevelMtls for port 80"}},
		{"seed other port inherits namespace", mesh, "foo", map[string]string{"app": "example-app"}, 8000, Decision{ModeStrict, "foo/example-policy", "namespace-wide policy"}},
		{"portLevel without selector ignored", mesh, "bar", nil, 8080, Decision{ModeDisable, "bar/bar-wide", "namespace-wide policy"}},
		{"mesh UNSET is PERMISSIVE", prec, "ns9", nil, 80, Decision{ModePermissive, "istio-system/mesh", "mesh-wide policy leaves the mode UNSET: PERMISSIVE"}},
		{"older namespace-wide wins", prec, "ns1", nil, 80, Decision{ModeStrict, "ns1/older", "namespace-wide policy"}},
		{"oldest workload policy wins", prec, "ns1", map[string]string{"app": "a"}, 80, Decision{ModePermissive, "ns1/wl-a", "workload policy"}},
		{"port UNSET inherits workload", prec, "ns1", map[string]string{"app": "u"}, 9000, Decision{ModeDisable, "ns1/wl-unset", "workload policy"}},
		{"port STRICT", prec, "ns1", map[string]string{"app": "u"}, 9001, Decision{ModeStrict, "ns1/wl-unset", "workload policy, portLevelMtls for port 9001"}},
		{"namespace UNSET inherits mesh", prec, "ns2", nil, 80, Decision{ModePermissive, "istio-system/mesh", "mesh-wide policy leaves the mode UNSET: PERMISSIVE"}},
		{"root selector only in root", prec, "ns9", map[string]string{"app": "gw"}, 80, Decision{ModePermissive, "istio-system/mesh", "mesh-wide policy leaves the mode UNSET: PERMISSIVE"}},
		{"root selector in root", prec, "istio-system", map[string]string{"app": "gw"}, 80, Decision{ModeDisable, "istio-system/root-wl", "workload policy"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.set.MTLS(tc.ns, tc.labels, tc.port); got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	mesh, err := LoadDir("testdata/mesh")
	if err != nil {
		t.Fatal(err)
	}
	httpbin := map[string]string{"app": "httpbin"}
	sleep := "cluster.local/ns/default/sa/sleep"
	conds := mustSet(t, ap("c", "when", `  rules:
  - when:
    - key: request.auth.claims[groups]
      values: ["admin"]
    - key: request.auth.claims[realm][role]
      values: ["ops*"]
  - when:
    - key: request.headers[X-Env]
      values: ["prod-*"]
      notValues: ["prod-eu"]
    - key: source.ip
      values: ["10.1.0.0/16"]
  - to:
    - operation:
        ports: ["9000"]
    when:
    - key: destination.port
      values: ["9000"]
    - key: connection.sni
      values: ["*.example"]
  - from:
    - source:
        requestPrincipals: ["issuer.example/*"]
        notPrincipals: ["*/sa/bad"]
    when:
    - key: request.auth.audiences
      values: ["api"]
    - key: request.auth.presenter
      values: ["web"]
    - key: source.namespace
      values: ["front"]`))
	tcp := mustSet(t,
		ap("t", "deny-post", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"POST\"]\n        ports: [\"8080\"]"),
		ap("t", "allow-get", "  rules:\n  - to:\n    - operation:\n        methods: [\"GET\"]\n  - from:\n    - source:\n        principals: [\"td/ns/t/sa/db\"]"),
		ap("t", "audit", "  action: AUDIT\n  rules:\n  - to:\n    - operation:\n        paths: [\"/user/profile/*\"]"),
	)
	empties := mustSet(t,
		ap("e1", "allow-all", "  rules:\n  - {}"),
		ap("e2", "deny-empty", "  action: DENY"),
		ap("e3", "deny-all", "  action: DENY\n  rules:\n  - {}"),
		ap("istio-system", "mesh-v1", "  selector:\n    matchLabels:\n      version: v1"),
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: e4\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  action: DENY\n  rules:\n  - {}\n",
		ap("e5", "sa", "  rules:\n  - from:\n    - source:\n        serviceAccounts: [\"client\", \"other/x\"]"),
	)
	jwtAuth := &AuthnResult{Principal: "issuer.example/alice", Audiences: []string{"api"}, Presenter: "web",
		Claims: map[string]any{"groups": []any{"dev", "admin"}, "realm": map[string]any{"role": "ops-lead"}}}
	cases := []struct {
		name   string
		set    *Set
		ns     string
		labels map[string]string
		req    Request
		want   AuthzDecision
	}{
		{"allow by principal", mesh, "foo", httpbin, Request{Principal: sleep, Method: "GET", Path: "/info/x"}, AuthzDecision{Allowed: true, Policy: "foo/httpbin", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy foo/httpbin rule 0 matched"}},
		{"allow by namespace", mesh, "foo", httpbin, Request{Principal: "cluster.local/ns/test/sa/any", Method: "POST", Path: "/data"}, AuthzDecision{Allowed: true, Policy: "foo/httpbin", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy foo/httpbin rule 0 matched"}},
		{"allow no match", mesh, "foo", httpbin, Request{Principal: sleep, Method: "POST", Path: "/info"}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"plaintext never matches principals", mesh, "foo", httpbin, Request{Method: "GET", Path: "/info"}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"deny before allow", mesh, "foo", httpbin, Request{Principal: "cluster.local/ns/dev/sa/x", Method: "POST", Path: "/data"}, AuthzDecision{Policy: "foo/deny-dev-post", Rule: 0, Action: "DENY", Reason: "DENY policy foo/deny-dev-post rule 0 matched"}},
		{"no ALLOW policy", mesh, "foo", map[string]string{"app": "other"}, Request{Method: "GET"}, AuthzDecision{Allowed: true, Rule: -1, Action: "ALLOW", Reason: "no ALLOW policy applies to the workload: allowed"}},
		{"spec {} allows nothing", mesh, "bar", nil, Request{Principal: sleep, Method: "GET"}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"rule {} allows all", empties, "e1", nil, Request{}, AuthzDecision{Allowed: true, Policy: "e1/allow-all", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy e1/allow-all rule 0 matched"}},
		{"DENY without rules matches nothing", empties, "e2", nil, Request{}, AuthzDecision{Allowed: true, Rule: -1, Action: "ALLOW", Reason: "no ALLOW policy applies to the workload: allowed"}},
		{"DENY rule {} denies all", empties, "e3", nil, Request{}, AuthzDecision{Policy: "e3/deny-all", Rule: 0, Action: "DENY", Reason: "DENY policy e3/deny-all rule 0 matched"}},
		{"root selector mesh-wide", empties, "anyns", map[string]string{"version": "v1"}, Request{}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"dry-run not enforced", empties, "e4", nil, Request{}, AuthzDecision{Allowed: true, Rule: -1, Action: "ALLOW", Reason: "no ALLOW policy applies to the workload: allowed"}},
		{"serviceAccounts short form", empties, "e5", nil, Request{Principal: "td/ns/e5/sa/client"}, AuthzDecision{Allowed: true, Policy: "e5/sa", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy e5/sa rule 0 matched"}},
		{"serviceAccounts other ns", empties, "e5", nil, Request{Principal: "td/ns/e6/sa/client"}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"nested claims", conds, "c", nil, Request{Auth: jwtAuth}, AuthzDecision{Allowed: true, Policy: "c/when", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy c/when rule 0 matched"}},
		{"header and ip", conds, "c", nil, Request{Headers: map[string][]string{"x-env": {"prod-us"}}, SourceIP: netip.MustParseAddr("10.1.2.3")}, AuthzDecision{Allowed: true, Policy: "c/when", Rule: 1, Action: "ALLOW", Reason: "ALLOW policy c/when rule 1 matched"}},
		{"header notValues", conds, "c", nil, Request{Headers: map[string][]string{"X-Env": {"prod-eu"}}, SourceIP: netip.MustParseAddr("10.1.2.3")}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"port and sni", conds, "c", nil, Request{Port: 9000, SNI: "db.example"}, AuthzDecision{Allowed: true, Policy: "c/when", Rule: 2, Action: "ALLOW", Reason: "ALLOW policy c/when rule 2 matched"}},
		{"request principal, aud, azp, ns", conds, "c", nil, Request{Principal: "td/ns/front/sa/web", Auth: &AuthnResult{Principal: "issuer.example/bob", Audiences: []string{"api"}, Presenter: "web"}}, AuthzDecision{Allowed: true, Policy: "c/when", Rule: 3, Action: "ALLOW", Reason: "ALLOW policy c/when rule 3 matched"}},
		{"notPrincipals", conds, "c", nil, Request{Principal: "td/ns/front/sa/bad", Auth: &AuthnResult{Principal: "issuer.example/bob", Audiences: []string{"api"}, Presenter: "web"}}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		{"no JWT: requestPrincipals never match", conds, "c", nil, Request{Principal: "td/ns/front/sa/web"}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied"}},
		// TCP: DENY ignores methods (denies all TCP on 8080); ALLOW rules with
		// methods never match; the principal rule still does.
		{"TCP DENY ignores HTTP fields", tcp, "t", nil, Request{TCP: true, Port: 8080, Principal: "td/ns/t/sa/db"}, AuthzDecision{Policy: "t/deny-post", Rule: 0, Action: "DENY", Reason: "DENY policy t/deny-post rule 0 matched", Audit: true, AuditPolicy: "t/audit"}},
		{"TCP ALLOW skips HTTP rule", tcp, "t", nil, Request{TCP: true, Port: 9000}, AuthzDecision{Rule: -1, Action: "DENY", Reason: "ALLOW policies apply to the workload and none matched: denied", Audit: true, AuditPolicy: "t/audit"}},
		{"TCP ALLOW principal rule", tcp, "t", nil, Request{TCP: true, Port: 9000, Principal: "td/ns/t/sa/db"}, AuthzDecision{Allowed: true, Policy: "t/allow-get", Rule: 1, Action: "ALLOW", Reason: "ALLOW policy t/allow-get rule 1 matched", Audit: true, AuditPolicy: "t/audit"}},
		{"HTTP GET allowed", tcp, "t", nil, Request{Port: 8080, Method: "GET", Path: "/x"}, AuthzDecision{Allowed: true, Policy: "t/allow-get", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy t/allow-get rule 0 matched"}},
		{"HTTP audit", tcp, "t", nil, Request{Port: 8080, Method: "GET", Path: "/user/profile/1"}, AuthzDecision{Allowed: true, Policy: "t/allow-get", Rule: 0, Action: "ALLOW", Reason: "ALLOW policy t/allow-get rule 0 matched", Audit: true, AuditPolicy: "t/audit"}},
		{"HTTP POST 8080 denied", tcp, "t", nil, Request{Port: 8080, Method: "POST"}, AuthzDecision{Policy: "t/deny-post", Rule: 0, Action: "DENY", Reason: "DENY policy t/deny-post rule 0 matched"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.set.Authorize(tc.ns, tc.labels, tc.req); got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestMatchString(t *testing.T) {
	cases := []struct {
		p, v string
		want bool
	}{
		{"abc", "abc", true}, {"abc", "abcd", false}, {"abc*", "abcd", true}, {"*bcd", "abcd", true},
		{"*", "x", true}, {"*", "", false}, {"a*c", "abc", false}, {"a*c", "a*c", true},
	}
	for _, tc := range cases {
		if got := matchString(tc.p, tc.v); got != tc.want {
			t.Errorf("matchString(%q, %q) = %v", tc.p, tc.v, got)
		}
	}
}

func TestParseClaimPath(t *testing.T) {
	cases := []struct {
		in   string
		want string
		err  string
	}{
		{"[iss]", "iss", ""},
		{"[a][b]", "a/b", ""},
		{"[https://x.example/claim]", "https://x.example/claim", ""},
		{"", "", "no [name]"},
		{"[]", "", "empty []"},
		{"[a", "", "missing ]"},
		{"[a]b", "", "expected [ after a ]"},
		{"[a[b]", "", "[ inside []"},
		{strings.Repeat("[a]", MaxClaimDepth+1), "", "more than 10 nested names"},
	}
	for _, tc := range cases {
		got, err := ParseClaimPath(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: err %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(got, "/") != tc.want {
			t.Errorf("%q: %v %v", tc.in, got, err)
		}
	}
}

func TestLint(t *testing.T) {
	clean, err := LoadDir("testdata/clean")
	if err != nil {
		t.Fatal(err)
	}
	if f := clean.Lint(); len(f) != 0 {
		t.Errorf("clean: %v", f)
	}
	mesh, err := LoadDir("testdata/mesh")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range mesh.Lint() {
		got = append(got, f.String())
	}
	want := []string{
		"testdata/mesh/00-mesh.yaml:12: PeerAuthentication istio-system/strict-everywhere: ignored: a second mesh-wide PeerAuthentication; Istio keeps only the oldest, istio-system/default",
		"testdata/mesh/10-foo.yaml:47: AuthorizationPolicy foo/deny-dev-post: rule 0 uses HTTP-only fields and no ports: on TCP ports Istio ignores those fields and denies all traffic the rest matches; scope it with ports",
		"testdata/mesh/20-bar.yaml:1: PeerAuthentication bar/bar-wide: portLevelMtls is ignored on a policy without a selector (and Istio's validation refuses it)",
		"testdata/mesh/20-bar.yaml:13: AuthorizationPolicy bar/allow-nothing: ALLOW with no rules allows nothing: every request to the selected workloads is denied",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	more := mustSet(t,
		pa("istio-system", "root-sel", "", "  selector:\n    matchLabels:\n      app: a\n  mtls:\n    mode: STRICT"),
		pa("ns", "a", "", "  selector:\n    matchLabels:\n      app: a\n  mtls:\n    mode: STRICT")+"---\n"+pa("ns", "b", "", "  selector:\n    matchLabels:\n      app: a\n  mtls:\n    mode: DISABLE"),
		ap("ns", "allow-all", "  rules:\n  - {}")+"---\n"+ap("ns", "deny-all", "  action: DENY\n  rules:\n  - {}")+"---\n"+ap("ns", "deny-none", "  action: DENY"),
	)
	got = nil
	for _, f := range more.Lint() {
		got = append(got, f.String())
	}
	want = []string{
		"f00.yaml:1: PeerAuthentication istio-system/root-sel: a selector in the root namespace istio-system: applies only to workloads in istio-system, not mesh-wide",
		"f01.yaml:13: PeerAuthentication ns/b: never in force: the older ns/a has the same selector and wins",
		"f02.yaml:1: AuthorizationPolicy ns/allow-all: rule 0 is empty: allows every request",
		"f02.yaml:10: AuthorizationPolicy ns/deny-all: rule 0 is empty: denies every request",
		"f02.yaml:20: AuthorizationPolicy ns/deny-none: DENY with no rules matches nothing: has no effect",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// testIssuer signs tokens with a key made in the test.
type testIssuer struct {
	key  *ecdsa.PrivateKey
	kid  string
	jwks string
}

func newTestIssuer(t testing.TB, kid string) *testIssuer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{key: k, kid: kid, jwks: string(b)}
}

func (i *testIssuer) sign(t testing.TB, claims map[string]any) string {
	return testjwt.Sign(t, jose.ES256, i.key, i.kid, "JWT", claims)
}

func TestAuthenticate(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	a := newTestIssuer(t, "a1")
	b := newTestIssuer(t, "b1")
	other := newTestIssuer(t, "a1") // same kid, different key
	ra := func(ns, name, body string) string {
		return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s\n", name, ns, body)
	}
	jwksJSON, _ := json.Marshal(a.jwks)
	set := mustSet(t,
		ra("istio-system", "mesh", "  jwtRules:\n  - issuer: https://a.example\n    audiences: [api, web]\n    jwks: "+string(jwksJSON)+"\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-jwt-payload"),
		ra("foo", "b", "  selector:\n    matchLabels:\n      app: web\n  jwtRules:\n  - issuer: https://b.example\n    jwksUri: https://b.example/jwks\n    fromHeaders:\n    - name: x-token\n      prefix: \"Token \"\n    fromParams: [tok]"),
	).WithJWKSFetcher(JWKSFetcherFunc(func(uri string) ([]byte, error) {
		if uri != "https://b.example/jwks" {
			return nil, fmt.Errorf("unexpected %s", uri)
		}
		return []byte(b.jwks), nil
	}))
	good := map[string]any{"iss": "https://a.example", "sub": "alice", "aud": []string{"api"}, "azp": "cli", "exp": now.Add(time.Hour).Unix(), "groups": []string{"admin"}}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	bearer := func(tok string) map[string][]string { return map[string][]string{"Authorization": {"Bearer " + tok}} }
	web := map[string]string{"app": "web"}
	bTok := b.sign(t, map[string]any{"iss": "https://b.example", "sub": "bob", "nbf": now.Add(-time.Minute).Unix()})
	cases := []struct {
		name      string
		labels    map[string]string
		headers   map[string][]string
		query     url.Values
		principal string
		rule      string
		err       string
	}{
		{"no token passes", nil, nil, nil, "", "", ""},
		{"valid", nil, bearer(a.sign(t, good)), nil, "https://a.example/alice", "istio-system/mesh jwtRules[0]", ""},
		{"access_token param", nil, nil, url.Values{"access_token": {a.sign(t, good)}}, "https://a.example/alice", "istio-system/mesh jwtRules[0]", ""},
		{"expired", nil, bearer(a.sign(t, with("exp", now.Add(-2*time.Minute).Unix()))), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): token is expired"},
		{"within skew", nil, bearer(a.sign(t, with("exp", now.Add(-30*time.Second).Unix()))), nil, "https://a.example/alice", "istio-system/mesh jwtRules[0]", ""},
		{"not yet valid", nil, bearer(a.sign(t, with("nbf", now.Add(2*time.Minute).Unix()))), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): token is not valid yet (nbf)"},
		{"wrong audience", nil, bearer(a.sign(t, with("aud", "other"))), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): audience [other] is not one of [api web]"},
		{"forged", nil, bearer(other.sign(t, good)), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): signature does not verify with the keys of istio-system/mesh jwtRules[0]"},
		{"unknown issuer", nil, bearer(a.sign(t, with("iss", "https://evil.example"))), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): issuer \"https://evil.example\": no jwtRule for its issuer looks for a token here"},
		{"garbage", nil, bearer("not.a.jwt"), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): not a signed JWT with an accepted algorithm"},
		{"other scheme is missing", nil, map[string][]string{"Authorization": {"Basic abc"}}, nil, "", "", ""},
		{"b at its header via jwksUri", web, map[string][]string{"X-Token": {"Token " + bTok}}, nil, "https://b.example/bob", "foo/b jwtRules[0]", ""},
		{"b at its param", web, nil, url.Values{"tok": {bTok}}, "https://b.example/bob", "foo/b jwtRules[0]", ""},
		{"b in Authorization: not its location", web, bearer(bTok), nil, "", "", "policy: JWT in header Authorization (prefix \"Bearer \"): issuer \"https://b.example\": no jwtRule for its issuer looks for a token here"},
		{"b rule not for other workloads", nil, map[string][]string{"X-Token": {"Token " + bTok}}, nil, "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := "foo"
			res, err := set.Authenticate(ns, tc.labels, tc.headers, tc.query, now)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Principal != tc.principal || res.Rule != tc.rule {
				t.Errorf("got principal %q rule %q, want %q %q", res.Principal, res.Rule, tc.principal, tc.rule)
			}
		})
	}
	res, err := set.Authenticate("foo", nil, bearer(a.sign(t, good)), nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if !res.ForwardOriginalToken || res.OutputPayloadToHeader != "x-jwt-payload" || res.Presenter != "cli" || len(res.Rules) != 1 || strings.Join(res.Audiences, ",") != "api" {
		t.Errorf("result %+v", res)
	}
	// The result feeds authorization's request.auth.* conditions.
	authz := mustSet(t, ap("foo", "admins", "  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"https://a.example/*\"]\n    when:\n    - key: request.auth.claims[groups]\n      values: [admin]"))
	if d := authz.Authorize("foo", nil, Request{Auth: &res}); !d.Allowed || d.Policy != "foo/admins" {
		t.Errorf("authorize: %+v", d)
	}
}

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/mesh", "testdata/clean"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		s, err := NewSet(docs)
		if err != nil {
			return
		}
		s.MTLS("ns", map[string]string{"app": "a"}, 80)
		s.Authorize("ns", map[string]string{"app": "a"}, Request{Method: "GET", Path: "/", Port: 80})
		s.Authorize("ns", nil, Request{TCP: true, Port: 80})
		s.Lint()
	})
}

func FuzzParseClaimPath(f *testing.F) {
	for _, s := range []string{"[iss]", "[a][b]", "[]", "[a", "[a]b", "[[a]]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseClaimPath(s)
		if err != nil {
			return
		}
		if len(p) == 0 || len(p) > MaxClaimDepth || "["+strings.Join(p, "][")+"]" != s {
			t.Fatalf("%q parsed to %q", s, p)
		}
	})
}

func BenchmarkAuthorize(b *testing.B) {
	s, err := LoadDir("testdata/mesh")
	if err != nil {
		b.Fatal(err)
	}
	labels := map[string]string{"app": "httpbin"}
	req := Request{Principal: "cluster.local/ns/default/sa/sleep", Method: "POST", Path: "/data", Port: 8000}
	b.ReportAllocs()
	for b.Loop() {
		if !s.Authorize("foo", labels, req).Allowed {
			b.Fatal("denied")
		}
	}
}

func BenchmarkMTLS(b *testing.B) {
	s, err := LoadDir("testdata/mesh")
	if err != nil {
		b.Fatal(err)
	}
	labels := map[string]string{"app": "example-app"}
	b.ReportAllocs()
	for b.Loop() {
		if s.MTLS("foo", labels, 80).Mode != ModeDisable {
			b.Fatal("mode")
		}
	}
}

// FuzzAuthenticate: no token the fuzzer makes authenticates, except the
// one seeded token signed by the rule's key; none makes Authenticate panic.
func FuzzAuthenticate(f *testing.F) {
	iss := newTestIssuer(f, "k1")
	jwksJSON, _ := json.Marshal(iss.jwks)
	docs, err := Parse("fuzz.yaml", []byte("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: r\n  namespace: ns\nspec:\n  jwtRules:\n  - issuer: https://a.example\n    jwks: "+string(jwksJSON)+"\n"))
	if err != nil {
		f.Fatal(err)
	}
	set, err := NewSet(docs)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	good := iss.sign(f, map[string]any{"iss": "https://a.example", "sub": "s", "exp": now.Add(time.Hour).Unix()})
	f.Add(good)
	f.Add(good[:len(good)-3] + "AAA")
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2EuZXhhbXBsZSJ9.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		res, err := set.Authenticate("ns", nil, map[string][]string{"Authorization": {"Bearer " + token}}, nil, now)
		if err == nil && res.Principal != "" && strings.TrimSpace(token) != good {
			t.Fatalf("token %q authenticated as %s", token, res.Principal)
		}
		if err != nil && len(token) > 40 && strings.Count(token, ".") == 2 && strings.Contains(err.Error(), token) {
			t.Fatalf("the error repeats the token: %v", err)
		}
	})
}

func TestTraceAuthorization(t *testing.T) {
	set := mustSet(t,
		ap("default", "viewer", "  selector:\n    matchLabels:\n      app: ratings\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [north.example/ns/default/sa/reviews]\n    to:\n    - operation:\n        methods: [GET]\n  - to:\n    - operation:\n        paths: [/health]\n  - when:\n    - key: request.headers[x-debug]\n      values: [\"1\"]\n"),
	)
	req := Request{Principal: "south.example/ns/default/sa/ratings", Method: "GET", Path: "/ratings/0", Port: 9080}
	got := set.TraceAuthorization("default", map[string]string{"app": "ratings"}, req)
	want := []RuleTrace{
		{Index: 0, Why: `from: principals ["north.example/ns/default/sa/reviews"] does not match "south.example/ns/default/sa/ratings"`},
		{Index: 1, Why: `to: paths ["/health"] does not match "/ratings/0"`},
		{Index: 2, Why: `when[0]: request.headers[x-debug] does not hold`},
	}
	if len(got) != 1 || got[0].Policy != "default/viewer" || got[0].Action != "ALLOW" || fmt.Sprint(got[0].Rules) != fmt.Sprint(want) {
		t.Fatalf("trace %+v\nwant rules %+v", got, want)
	}
	req.Principal = "north.example/ns/default/sa/reviews"
	got = set.TraceAuthorization("default", map[string]string{"app": "ratings"}, req)
	if !got[0].Rules[0].Matched || got[0].Rules[0].Why != "" {
		t.Fatalf("rule 0 for reviews: %+v, want matched", got[0].Rules[0])
	}
	tcp := set.TraceAuthorization("default", map[string]string{"app": "ratings"}, Request{TCP: true, Principal: req.Principal, Port: 9080})
	if tcp[0].Rules[0].Matched || !strings.Contains(tcp[0].Rules[0].Why, "HTTP-only") {
		t.Fatalf("TCP trace rule 0: %+v, want skipped for HTTP-only fields", tcp[0].Rules[0])
	}
}
