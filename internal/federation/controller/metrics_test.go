package controller

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/testsync"
)

func scrape(t *testing.T, h *harness) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.c.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, body)
	}
	return string(body)
}

// The metrics say what the status says: generation, phase, roots, members
// and a refused VirtualMesh file.
func TestMetrics(t *testing.T) {
	dir := t.TempDir()
	h, file := fileHarness(t, dir, &fakeClock{now: t0}, &testsync.Buffer{})
	e := h.member(east).mustJoin()
	e.mustReport(&pb.MemberReport{AppliedGeneration: 1})
	st := h.status()
	root := st.GetRoots()[0]
	m := st.GetMembers()[0]
	want := []string{
		"meshfed_federation_generation 1",
		`meshfed_federation_rotation_phase{phase="stable"} 1`,
		`meshfed_federation_rotation_phase{phase="publishing"} 0`,
		fmt.Sprintf(`meshfed_federation_root_expiry_timestamp_seconds{state="active",subject_key_id="%s"} %v`, root.GetSubjectKeyId(), float64(root.GetExpiresAt())),
		`meshfed_federation_member_joined{trust_domain="east.example"} 1`,
		`meshfed_federation_member_joined{trust_domain="west.example"} 0`,
		`meshfed_federation_member_applied_generation{trust_domain="east.example"} 1`,
		fmt.Sprintf(`meshfed_federation_member_last_contact_timestamp_seconds{trust_domain="east.example"} %v`, float64(t0.Unix())),
		fmt.Sprintf(`meshfed_federation_member_intermediate_expiry_timestamp_seconds{trust_domain="east.example"} %v`, float64(m.GetIntermediateExpiresAt())),
		"meshfed_federation_config_refused 0",
	}
	got := scrape(t, h)
	for _, w := range want {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("/metrics lacks %s", w)
		}
	}
	if strings.Contains(got, `meshfed_federation_member_applied_generation{trust_domain="west.example"}`) {
		t.Error("a member that has not joined has an applied generation")
	}

	writeMesh(t, file, "apiVersion: [")
	if _, err := h.c.ReloadMesh(); err == nil {
		t.Fatal("a broken file was accepted")
	}
	if got := scrape(t, h); !strings.Contains(got, "meshfed_federation_config_refused 1\n") {
		t.Error("a refused file is not in the metrics")
	}
	rec := httptest.NewRecorder()
	h.c.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 200 || rec.Body.String() != "ok\n" {
		t.Errorf("/healthz: %d %q", rec.Code, rec.Body.String())
	}
}
