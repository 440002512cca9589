package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProxyCommandRefusesBadInvocations(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("workload_api_socket: /x\ninbound: [{listen: a, forward_to: 'b:1'}]\nlisten: typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"proxy"}, 2, "--config is required"},
		{[]string{"proxy", "--config", filepath.Join(dir, "missing.yaml")}, 1, "proxy: config:"},
		{[]string{"proxy", "--config", bad}, 1, `proxy: config ` + bad + `: error unmarshaling JSON: while decoding JSON: json: unknown field "listen"`},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(tc.args, nil, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("meshfed %s: exit %d, stderr %q; want exit %d and one line with %q", strings.Join(tc.args, " "), code, stderr.String(), tc.code, tc.want)
		}
	}
}

// TestProxyCheck: --check reads what the proxy reads at start (config,
// policies with their lint findings) and prints what would run, binding
// nothing; a bad policy fails it with its file and line.
func TestProxyCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("policies/peer.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: db\n  creationTimestamp: \"2020-01-01T00:00:00Z\"\nspec:\n  mtls:\n    mode: STRICT\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: second\n  namespace: db\n  creationTimestamp: \"2030-01-01T00:00:00Z\"\nspec:\n  mtls:\n    mode: DISABLE\n")
	cfg := write("proxy.yaml", "workload_api_socket: "+filepath.Join(dir, "no-agent.sock")+"\nnamespace: db\nlabels: {app: datastore}\npolicies: "+filepath.Join(dir, "policies")+
		"\ninbound:\n- {listen: \"127.0.0.1:1\", forward_to: \"127.0.0.1:5432\"}\n- {listen: \"127.0.0.1:2\", forward_to: \"127.0.0.1:8080\", protocol: http}\n"+
		"outbound:\n- {listen: \"127.0.0.1:3\", service: ratings, upstream: \"ratings:15006\", allowed_ids: [spiffe://west.example/ns/default/sa/ratings]}\n")
	var stdout, stderr bytes.Buffer
	code := Main([]string{"proxy", "--config", cfg, "--check"}, nil, &stdout, &stderr)
	out := stdout.String()
	for _, want := range []string{
		"policies " + filepath.Join(dir, "policies") + ": 2 documents\n",
		"  lint: " + filepath.Join(dir, "policies", "peer.yaml") + ":",
		"inbound 127.0.0.1:1 -> 127.0.0.1:5432, tcp, mTLS STRICT (set by db/default)\n",
		"inbound 127.0.0.1:2 -> 127.0.0.1:8080, http, mTLS STRICT (set by db/default)\n",
		"outbound 127.0.0.1:3 -> ratings:15006, service ratings served by spiffe://west.example/ns/default/sa/ratings\n",
		cfg + ": valid\n",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d, stderr %q; stdout lacks %q:\n%s", code, stderr.String(), want, out)
		}
	}
	write("policies/bad.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: bad\n  namespace: db\nspec:\n  mtls:\n    mode: SOMETIMES\n")
	stdout.Reset()
	stderr.Reset()
	if code := Main([]string{"proxy", "--config", cfg, "--check"}, nil, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), filepath.Join(dir, "policies", "bad.yaml")+":") {
		t.Errorf("bad policy: exit %d, stderr %q", code, stderr.String())
	}
}
