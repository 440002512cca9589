package proxy_test

import (
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/meshfed/meshfed/internal/proxy"
)

// TestPolicyLoader: the directory's set is put in force, re-read only when
// a file changes, a bad file is refused with its file and line while the
// last good set stays, and server documents combine with the directory's.
func TestPolicyLoader(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	src := w.source(w.caA.svid(t, infraTeam, pki.ECP256, 2, pkix.Name{}))
	r := startSidecar(t, proxy.Config{Source: src, Namespace: "db",
		Inbound: []proxy.InboundConfig{{Name: "in", ForwardTo: echoApp(t)}}})
	mode := func() policy.Mode { return r.s.Listeners()[0].Mode }
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := proxy.NewPolicyLoader(r.s, dir, nil)

	if read, err := l.ReloadDir(); err != nil || !read || mode() != policy.ModePermissive {
		t.Fatalf("empty dir: read %v err %v mode %s; want read, PERMISSIVE", read, err, mode())
	}
	write("peer.yaml", doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n"))
	if read, err := l.ReloadDir(); err != nil || !read || mode() != policy.ModeStrict {
		t.Fatalf("after adding STRICT: read %v err %v mode %s", read, err, mode())
	}
	if read, err := l.ReloadDir(); err != nil || read {
		t.Fatalf("unchanged dir: read %v err %v; want no read", read, err)
	}

	write("bad.yaml", doc("PeerAuthentication", "db", "other", "  mtls:\n    mode: SOMETIMES\n"))
	_, err := l.ReloadDir()
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:") || !strings.Contains(err.Error(), "last good set stays in force") {
		t.Fatalf("bad file: err %v; want the file and line, and the last good set kept", err)
	}
	if mode() != policy.ModeStrict {
		t.Fatalf("after a bad file the mode is %s, want STRICT kept", mode())
	}
	if err := os.Remove(filepath.Join(dir, "bad.yaml")); err != nil {
		t.Fatal(err)
	}
	write("peer.yaml", doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: DISABLE\n"))
	if _, err := l.ReloadDir(); err != nil || mode() != policy.ModeDisable {
		t.Fatalf("after the fix: err %v mode %s, want DISABLE", err, mode())
	}

	// Server documents: a duplicate of a local one is refused; others combine.
	dup, err := policy.Parse("server:db/strict", []byte(doc("PeerAuthentication", "db", "strict", "  mtls:\n    mode: STRICT\n")))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetPushed(dup, 7); err == nil || !strings.Contains(err.Error(), "revision 7") || !strings.Contains(err.Error(), "also defined at") {
		t.Fatalf("duplicate server document: err %v", err)
	}
	if mode() != policy.ModeDisable {
		t.Fatalf("after a refused push the mode is %s, want DISABLE kept", mode())
	}
	port, err := policy.Parse("server:db/port", []byte(doc("PeerAuthentication", "db", "port", "  selector:\n    matchLabels:\n      app: x\n  mtls:\n    mode: STRICT\n")))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetPushed(port, 8); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, r)
	for _, want := range []string{
		`meshfed_proxy_policy_documents 2`,
		`meshfed_proxy_policy_loads_total{result="error",source="dir"} 1`,
		`meshfed_proxy_policy_loads_total{result="error",source="server"} 1`,
		`meshfed_proxy_policy_loads_total{result="ok",source="server"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
