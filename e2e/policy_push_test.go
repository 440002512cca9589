package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/policy"
)

// pushDeadline is how soon a change applied on the server must reach a
// proxy watching its agent: "within a second" (issue 7).
const pushDeadline = time.Second

// TestPolicyPushFromServer: `meshfed policy apply -f` on the server reaches
// a proxy's policyclient.Watch on the agent's socket within a second, `policy
// delete` removes it as fast, and a malformed file is refused with its file
// and line and changes nothing.
func TestPolicyPushFromServer(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "east", "admin.sock")
	srv := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", sock)
	logOnFailure(t, "server", srv.logs)
	token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", "spiffe://east.example/node/host-1").stdout)
	wl := filepath.Join(dir, "agent", "workload.sock")
	agent := startAgent(t, dir, "--server", srv.listen, "--trust-bundle", filepath.Join("east", "ca", "ca.pem"), "--join-token", token,
		"--data-dir", "agent", "--socket", wl)
	logOnFailure(t, "agent", agent.logs)

	type update struct {
		docs []policy.Document
		rev  int64
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan update)
	go policyclient.Watch(ctx, wl, func(docs []policy.Document, rev int64) {
		select {
		case updates <- update{docs, rev}:
		case <-ctx.Done():
		}
	})
	next := func(within time.Duration, what string) update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(within):
			t.Fatalf("%s did not reach the proxy within %s", what, within)
			return update{}
		}
	}
	// The agent has the server's (empty) set once it is connected.
	if u := next(30*time.Second, "the first policy snapshot"); u.rev != 0 || len(u.docs) != 0 {
		t.Fatalf("first snapshot: revision %d, %d documents; want 0, none", u.rev, len(u.docs))
	}

	writeFile(t, filepath.Join(dir, "policies", "strict.yaml"), `# every workload in default takes mTLS only
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`)
	r := meshfed(t, dir, "policy", "apply", "-f", "policies", "--admin-socket", sock)
	applied := time.Now()
	if r.stdout != "PeerAuthentication default/default created\n" {
		t.Errorf("policy apply printed %q", r.stdout)
	}
	u := next(pushDeadline, "the applied policy")
	t.Logf("the applied policy reached the proxy %s after 'policy apply' returned", time.Since(applied))
	if len(u.docs) != 1 || u.docs[0].Kind != policy.KindPeerAuthentication || u.docs[0].Ref() != "default/default" || u.docs[0].File != "server:default/default" {
		t.Fatalf("pushed documents: %+v", u.docs)
	}
	set, err := policy.NewSet(u.docs)
	if err != nil {
		t.Fatal(err)
	}
	if m := set.MTLS("default", map[string]string{"app": "reviews"}, 9080); m.Mode != policy.ModeStrict || m.Policy != "default/default" {
		t.Errorf("the proxy's set says %s by %s, want STRICT by default/default", m.Mode, m.Policy)
	}
	listed := listPolicies(t, dir, sock)
	if listed.Revision != u.rev || len(listed.Policies) != 1 || !u.docs[0].Created.Equal(mustTime(t, listed.Policies[0].CreatedAt)) {
		t.Errorf("policy list (revision %d, %+v) does not match what the proxy has (revision %d, created %s)", listed.Revision, listed.Policies, u.rev, u.docs[0].Created)
	}

	// A malformed file: refused with its file and line, nothing changes.
	writeFile(t, filepath.Join(dir, "bad.yaml"), `apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: default
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["*"]}}
`)
	meshfedFails(t, dir, []string{"policy", "apply", "-f", "bad.yaml", "--admin-socket", sock}, "policy: bad.yaml:1: not YAML")
	if after := listPolicies(t, dir, sock); after.Revision != listed.Revision || len(after.Policies) != 1 || after.Policies[0].Generation != 1 {
		t.Errorf("after a refused apply: revision %d (was %d), %+v", after.Revision, listed.Revision, after.Policies)
	}
	writeFile(t, filepath.Join(dir, "typo.yaml"), strings.Replace(`apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`, "STRICT", "STRIKT", 1))
	meshfedFails(t, dir, []string{"policy", "apply", "-f", "typo.yaml", "--admin-socket", sock}, `policy: typo.yaml:8: PeerAuthentication default/default: spec.mtls.mode: unknown value "STRIKT"`)
	if after := listPolicies(t, dir, sock); after.Revision != listed.Revision || len(after.Policies) != 1 || after.Policies[0].Generation != 1 {
		t.Errorf("after a refused apply: revision %d (was %d), %+v", after.Revision, listed.Revision, after.Policies)
	}

	r = meshfed(t, dir, "policy", "delete", "PeerAuthentication", "default/default", "--admin-socket", sock)
	deleted := time.Now()
	if r.stdout != "PeerAuthentication default/default deleted\n" {
		t.Errorf("policy delete printed %q", r.stdout)
	}
	u = next(pushDeadline, "the deletion")
	t.Logf("the deletion reached the proxy %s after 'policy delete' returned", time.Since(deleted))
	if len(u.docs) != 0 || u.rev <= listed.Revision {
		t.Fatalf("after delete the proxy has revision %d (was %d), %d documents; want none", u.rev, listed.Revision, len(u.docs))
	}
	meshfedFails(t, dir, []string{"policy", "delete", "pa", "default/default", "--admin-socket", sock}, "not stored on the server: PeerAuthentication default/default")
}

type policyListing struct {
	Revision int64 `json:"policy_revision"`
	Policies []struct {
		Kind       string `json:"kind"`
		Namespace  string `json:"namespace"`
		Name       string `json:"name"`
		Generation int64  `json:"generation"`
		CreatedAt  string `json:"created_at"`
	} `json:"policies"`
}

func listPolicies(t *testing.T, dir, sock string) policyListing {
	t.Helper()
	var l policyListing
	if err := json.Unmarshal([]byte(meshfed(t, dir, "policy", "list", "--admin-socket", sock, "-o", "json").stdout), &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}
