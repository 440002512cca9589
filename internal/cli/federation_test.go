package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"sigs.k8s.io/yaml"
)

const federationMesh = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata:
  name: virtual-mesh
  namespace: service-mesh-hub
spec:
  mtlsConfig:
    autoRestartPods: true
    shared:
      rootCertificateAuthority:
        generated: null
  federation: {}
  meshes:
  - name: istiod-istio-system-kind2
    namespace: service-mesh-hub
    trustDomain: kind2
    address: 127.0.0.1:8443
  - name: istiod-istio-system-kind3
    namespace: service-mesh-hub
    trustDomain: kind3
`

// lineWaiter is a stderr that tells when a line containing want arrives.
type lineWaiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func (l *lineWaiter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if l.seen != nil && strings.Contains(l.buf.String(), l.want) {
		close(l.seen)
		l.seen = nil
	}
	return len(p), nil
}

func (l *lineWaiter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// runFederation starts 'meshfed federation run' in-process and returns its
// admin socket once it serves.
func runFederation(t *testing.T, extra ...string) (dir, socket string) {
	t.Helper()
	dir = t.TempDir()
	config := filepath.Join(dir, "virtualmesh.yaml")
	if err := os.WriteFile(config, []byte(federationMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(dir, "vm", "admin.sock")
	root := NewRoot()
	root.SetArgs(append([]string{"federation", "run", "--config", config, "--data-dir", filepath.Join(dir, "vm"),
		"--listen", "127.0.0.1:0", "--admin-socket", socket}, extra...))
	stderr := &lineWaiter{want: "VirtualMesh virtual-mesh: controller API", seen: make(chan struct{})}
	seen := stderr.seen
	root.SetOut(&bytes.Buffer{})
	root.SetErr(stderr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("federation run: %v", err)
		}
	})
	select {
	case <-seen:
	case err := <-done:
		t.Fatalf("federation run ended: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "autoRestartPods is accepted and ignored") {
		t.Errorf("no word on autoRestartPods in the log:\n%s", stderr.String())
	}
	return dir, socket
}

func meshfed(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(args, nil, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestFederationCommands(t *testing.T) {
	t.Setenv("MESHFED_FEDERATION_ADMIN_SOCKET", "")
	dir, socket := runFederation(t, "--manual-rotation")
	if _, err := os.Stat(filepath.Join(dir, "vm", "root-cert.pem")); err != nil {
		t.Fatalf("no root-cert.pem for members: %v", err)
	}

	code, stdout, stderr := meshfed(t, "federation", "token", "create", "--admin-socket", socket, "--trust-domain", "kind2", "--ttl", "10m")
	if code != 0 || len(stdout) != 44 || !strings.HasSuffix(stdout, "\n") || !strings.HasPrefix(stderr, "join token for kind2, valid until ") || !strings.HasSuffix(stderr, ", usable once\n") {
		t.Errorf("token create: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if strings.Contains(stderr, strings.TrimSpace(stdout)) {
		t.Error("the token is on stderr too")
	}

	code, stdout, stderr = meshfed(t, "federation", "status", "--admin-socket", socket, "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d, %s", code, stderr)
	}
	var st federationStatus
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Name != "virtual-mesh" || st.RotationPhase != "stable" || st.Generation != 1 || st.WaitingFor != "" || len(st.Roots) != 1 ||
		st.Roots[0].State != "active" || st.Roots[0].Subject != "CN=virtual-mesh root CA 1,O=meshfed" || !strings.HasPrefix(st.Roots[0].Certificate, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("status: %+v", st)
	}
	wantMembers := []federationMemberStatus{{TrustDomain: "kind2", Address: "127.0.0.1:8443"}, {TrustDomain: "kind3"}}
	if len(st.Members) != 2 || st.Members[0].TrustDomain != wantMembers[0].TrustDomain || st.Members[0].Address != wantMembers[0].Address ||
		st.Members[0].Joined || st.Members[1].TrustDomain != "kind3" {
		t.Errorf("members: %+v", st.Members)
	}
	first := st.Roots[0].SubjectKeyID

	code, stdout, _ = meshfed(t, "federation", "status", "--admin-socket", socket)
	var lines []string
	for l := range strings.SplitSeq(stdout, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	want := []string{
		"VirtualMesh virtual-mesh, generation 1, rotation phase stable",
		"waiting for: -",
		"",
		"ROOT (SUBJECT KEY ID) STATE EXPIRES SUBJECT",
		first + " active " + st.Roots[0].ExpiresAt + " CN=virtual-mesh root CA 1,O=meshfed",
		"",
		"MEMBER ADDRESS JOINED INTERMEDIATE EXPIRES ROOT LAST CONTACT APPLIED AGENTS CURRENT LIVE SVIDS BY ROOT JWT KEYS",
		"kind2 127.0.0.1:8443 no - - - - - - - 0",
		"kind3 - no - - - - - - - 0",
		"",
	}
	if code != 0 || strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("status text:\n%s", stdout)
	}

	code, stdout, stderr = meshfed(t, "federation", "rotate-root", "--admin-socket", socket, "-o", "yaml")
	if code != 0 || stderr != "rotation of the shared root: stable -> publishing (generation 1 -> 2)\n" {
		t.Fatalf("rotate-root: exit %d, stderr %q", code, stderr)
	}
	if err := yaml.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.RotationPhase != "publishing" || len(st.Roots) != 2 || st.Roots[0].State != "active" || st.Roots[1].State != "published" ||
		st.Roots[1].Subject != "CN=virtual-mesh root CA 2,O=meshfed" || st.Roots[1].SubjectKeyID == first {
		t.Errorf("after rotate-root: %+v", st)
	}
	for _, want := range []string{"reissuing", "retiring", "stable"} {
		code, _, stderr = meshfed(t, "federation", "rotate-root", "--admin-socket", socket, "--force")
		if code != 0 || !strings.Contains(stderr, "-> "+want) || strings.Contains(stderr, "forcing") {
			t.Errorf("rotate-root --force to %s: exit %d, stderr %q", want, code, stderr)
		}
	}
	code, stdout, _ = meshfed(t, "federation", "status", "--admin-socket", socket, "-o", "json")
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.RotationPhase != "stable" || len(st.Roots) != 1 || st.Roots[0].SubjectKeyID == first {
		t.Errorf("after the rotation: exit %d, %+v, %v", code, st, err)
	}

	// A relative socket path, as the examples write it.
	t.Chdir(dir)
	if code, _, stderr := meshfed(t, "federation", "status", "--admin-socket", filepath.Join("vm", "admin.sock")); code != 0 {
		t.Errorf("status with a relative socket path: exit %d, %s", code, stderr)
	}

	code, _, stderr = meshfed(t, "federation", "token", "create", "--admin-socket", socket, "--trust-domain", "kind4")
	if want := "meshfed: federation controller: kind4 is not a member of VirtualMesh \"virtual-mesh\"; add it to spec.meshes in " +
		filepath.Join(dir, "virtualmesh.yaml") + " (read again within 5s) (InvalidArgument)\n"; code != 1 || stderr != want {
		t.Errorf("token for a non-member: exit %d, stderr %q", code, stderr)
	}
}

func TestFederationUsageAndFailures(t *testing.T) {
	t.Setenv("MESHFED_FEDERATION_ADMIN_SOCKET", "")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(federationMesh, "    trustDomain: kind3\n", "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "admin.sock")
	cases := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"federation", "run"}, 2, `meshfed: required flag(s) "config" not set`},
		{[]string{"federation", "run", "--config", bad, "--rotate-root-before", "soon"}, 2,
			`meshfed: --rotate-root-before: invalid duration "soon": use 45m, 24h, 90d or 10y, or off`},
		{[]string{"federation", "run", "--config", bad, "--log-level", "loud"}, 2, `meshfed: log level "loud": use debug, info, warn or error`},
		{[]string{"federation", "run", "--config", bad}, 1,
			"meshfed: virtualmesh: " + bad + ":18: spec.meshes[1].trustDomain: missing; meshfed needs each mesh's SPIFFE trust domain, e.g. trustDomain: east.example"},
		{[]string{"federation", "token", "create", "--trust-domain", "kind2"}, 2,
			"meshfed: give --admin-socket PATH (the controller's, default <data-dir>/admin.sock) or set MESHFED_FEDERATION_ADMIN_SOCKET"},
		{[]string{"federation", "token", "create", "--admin-socket", missing, "--trust-domain", "Kind 2"}, 2,
			`meshfed: --trust-domain "Kind 2" is not a trust domain name`},
		{[]string{"federation", "token", "create", "--admin-socket", missing}, 2, `meshfed: required flag(s) "trust-domain" not set`},
		{[]string{"federation", "token", "create", "--admin-socket", missing, "--trust-domain", "kind2"}, 1,
			"meshfed: admin socket " + missing + ": stat " + missing + ": no such file or directory; is 'meshfed federation run' running?"},
		{[]string{"federation", "status", "--admin-socket", missing, "-o", "xml"}, 2, `meshfed: unknown output format "xml"; use text, json or yaml`},
		{[]string{"federation", "rotate-root", "--admin-socket", missing, "-o", "xml"}, 2, `meshfed: unknown output format "xml"; use text, json or yaml`},
		{[]string{"federation", "nope"}, 2, `meshfed: unknown command "nope" for "meshfed federation"`},
		{[]string{"federation", "token", "nope"}, 2, `meshfed: unknown command "nope" for "meshfed federation token"`},
	}
	for _, tc := range cases {
		code, stdout, stderr := meshfed(t, tc.args...)
		if code != tc.code || !strings.HasPrefix(stderr, tc.stderr) || stdout != "" {
			t.Errorf("meshfed %s: exit %d, stdout %q, stderr %q\nwant exit %d and %q", strings.Join(tc.args, " "), code, stdout, stderr, tc.code, tc.stderr)
		}
	}
}

// A VirtualMesh file the controller refused is the second line of the
// status, and config_error in JSON.
func TestFederationStatusShowsRefusedFile(t *testing.T) {
	st := &pb.StatusResponse{Name: "virtual-mesh", Generation: 2, RotationPhase: "stable",
		ConfigError: "virtualmesh: vm.yaml:3: spec.federashun: unknown field"}
	var text, js bytes.Buffer
	if err := printFederationStatus(&text, "", st); err != nil {
		t.Fatal(err)
	}
	if want := "VirtualMesh virtual-mesh, generation 2, rotation phase stable\nwaiting for: -\n" +
		"VirtualMesh file refused, the one read before stays in use: virtualmesh: vm.yaml:3: spec.federashun: unknown field\n\n"; !strings.HasPrefix(text.String(), want) {
		t.Errorf("text:\n%s\nwant it to start with:\n%s", text.String(), want)
	}
	if err := printFederationStatus(&js, "json", st); err != nil {
		t.Fatal(err)
	}
	var v federationStatus
	if err := json.Unmarshal(js.Bytes(), &v); err != nil || v.ConfigError != st.ConfigError {
		t.Errorf("json config_error %q, %v", v.ConfigError, err)
	}
}
