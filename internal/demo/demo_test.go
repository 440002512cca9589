package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestRunEstablishesEveryClaim(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	report, err := Run(context.Background(), Config{Out: &out, Dir: dir, Clock: time.Now, Kept: true})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	wantClaims := []string{
		"reviews' certificate verifies with east.example's root",
		"ratings' certificate does NOT verify with east.example's root (different roots)",
		"mTLS from reviews to ratings over 127.0.0.1 fails",
		"ratings' certificate verifies for east.example",
		"reviews' certificate verifies for west.example",
		"mTLS from reviews to ratings over 127.0.0.1 succeeds, each side naming the other",
		"east.example's CA refuses to sign spiffe://west.example/ns/default/sa/ratings",
		"a certificate for spiffe://west.example/ns/default/sa/ratings forged with east.example's stolen intermediate key is rejected",
	}
	if len(report.Checks) != len(wantClaims) {
		t.Fatalf("%d checks, want %d", len(report.Checks), len(wantClaims))
	}
	for i, c := range report.Checks {
		if c.Claim != wantClaims[i] || !c.OK {
			t.Errorf("check %d = %q ok=%v, want %q ok", i, c.Claim, c.OK, wantClaims[i])
		}
	}
	if !strings.Contains(report.Checks[1].Detail, "certificate signed by unknown authority") {
		t.Errorf("different-roots check failed for another reason: %s", report.Checks[1].Detail)
	}
	if !strings.Contains(report.Checks[7].Detail, "not authorized to sign for this name") {
		t.Errorf("forgery was rejected for another reason: %s", report.Checks[7].Detail)
	}
	// The shared-root intermediate really is constrained, and keys are 0600.
	inter, err := pemfile.ReadCertificates(filepath.Join(dir, "shared/east.example/ca/ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := inter[0].PermittedURIDomains; len(got) != 1 || got[0] != "east.example" {
		t.Errorf("east intermediate permits %v", got)
	}
	for _, key := range []string{"shared/root/ca.key", "shared/east.example/ca/ca.key", "shared/west.example/ratings/key.pem"} {
		st, err := os.Stat(filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 600", key, st.Mode().Perm())
		}
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Error("the story printed key material")
	}
}

func TestRunWithOtherTrustDomains(t *testing.T) {
	var out bytes.Buffer
	_, err := Run(context.Background(), Config{
		Out:  &out,
		Dir:  t.TempDir(),
		East: spiffeid.RequireTrustDomainFromString("kind2"),
		West: spiffeid.RequireTrustDomainFromString("kind3"),
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "spiffe://kind3/ns/default/sa/ratings") {
		t.Errorf("story does not name the configured trust domain:\n%s", out.String())
	}
}

func TestRunRequiresOutAndDir(t *testing.T) {
	if _, err := Run(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "Out and Dir are required") {
		t.Fatalf("Run(Config{}) = %v", err)
	}
}

func TestReportFailed(t *testing.T) {
	r := &Report{Checks: []Check{{Claim: "a", OK: true}, {Claim: "b"}}}
	if f := r.Failed(); len(f) != 1 || f[0].Claim != "b" {
		t.Fatalf("Failed() = %v", f)
	}
}
