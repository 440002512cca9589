package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// The server-side policy commands: usage errors exit 2 before anything is
// sent; a socket with no server says so.
func TestPolicyServerCommandErrors(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"policy", "apply", "--admin-socket", sock}, 2, "give the policy to apply with -f FILE, -f DIR or -f - (stdin)"},
		{[]string{"policy", "apply", "-f", "-", "-f", "-", "--admin-socket", sock}, 2, "-f - (stdin) can be given once"},
		{[]string{"policy", "apply", "-f", "-"}, 2, "give --admin-socket PATH"},
		{[]string{"policy", "apply", "-f", filepath.Join(dir, "missing.yaml"), "--admin-socket", sock}, 1, "missing.yaml: no such file or directory"},
		{[]string{"policy", "apply", "-f", "-", "--admin-socket", sock}, 1, "no server at " + sock + ": is meshfed server running?"},
		{[]string{"policy", "list", "--admin-socket", sock}, 1, "no server at " + sock + ": is meshfed server running?"},
		{[]string{"policy", "delete", "Gateway", "a/b", "--admin-socket", sock}, 2, `kind "Gateway": give PeerAuthentication, RequestAuthentication or AuthorizationPolicy (or pa, ra, ap)`},
		{[]string{"policy", "delete", "pa", "default", "--admin-socket", sock}, 2, `"default": give NAMESPACE/NAME, e.g. default/allow-sleep`},
		{[]string{"policy", "delete", "pa", "--admin-socket", sock}, 2, "takes KIND NAMESPACE/NAME, or -f FILE"},
		{[]string{"policy", "delete", "pa", "a/b", "-f", "x.yaml", "--admin-socket", sock}, 2, "give KIND NAMESPACE/NAME or -f FILE, not both"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(tc.args, strings.NewReader("kind: x\n"), &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("meshfed %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, stderr.String(), tc.code, tc.want)
		}
	}
}

func TestPolicyKind(t *testing.T) {
	for in, want := range map[string]string{
		"PeerAuthentication": "PeerAuthentication", "peerauthentications": "PeerAuthentication", "pa": "PeerAuthentication",
		"RequestAuthentication.security.istio.io": "RequestAuthentication", "ra": "RequestAuthentication",
		"authorizationpolicies": "AuthorizationPolicy", "AP": "AuthorizationPolicy",
	} {
		if got, err := policyKind(in); err != nil || string(got) != want {
			t.Errorf("policyKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
