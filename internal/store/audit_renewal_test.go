package store

import (
	"context"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testpg"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestWriteAuditRenewals: in one commit of the audit log, a node renewal
// whose node admits the SVID presented updates the record and is written, a
// refused one is marked and left out (no audit row, no change to its node),
// and the batch's other rows are written all the same.
func TestWriteAuditRenewals(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			cfg := Config{DataDir: t.TempDir()}
			if backend == "postgres" {
				cfg = Config{DSN: testpg.Start(t)}
			}
			s, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			ctx := context.Background()
			host1 := spiffeid.RequireFromString("spiffe://east.example/node/host-1")
			host2 := spiffeid.RequireFromString("spiffe://east.example/node/host-2")
			exp := time.UnixMilli(time.Now().Add(time.Hour).UnixMilli()).UTC()
			for _, n := range []Node{
				{SPIFFEID: host1, CredentialKind: "join-token", SerialNumber: "a1", ExpiresAt: exp},
				{SPIFFEID: host2, CredentialKind: "join-token", SerialNumber: "b1", ExpiresAt: exp},
			} {
				if err := s.UpsertNode(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			row := func(serial string, node spiffeid.ID, renews string) *auditRow {
				return &auditRow{Issued: Issued{Serial: serial, SPIFFEID: node.String(), CredentialKind: "x509-svid", IssuedAt: exp, NotAfter: exp, RenewsNode: renews}, node: node}
			}
			rows := []*auditRow{
				row("c1", spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews"), ""),
				row("a2", host1, "a1"), // admitted
				row("b2", host2, "zz"), // not host-2's SVID
			}
			if err := s.writeAudit(ctx, rows); err != nil {
				t.Fatal(err)
			}
			if rows[0].refused || rows[1].refused || !rows[2].refused {
				t.Errorf("refused: %v, %v, %v; want only the third", rows[0].refused, rows[1].refused, rows[2].refused)
			}
			got, err := s.ListIssued(ctx, AuditFilter{})
			if err != nil {
				t.Fatal(err)
			}
			var serials []string
			for _, r := range got {
				serials = append(serials, r.Serial)
			}
			if len(serials) != 2 || serials[0] != "a2" && serials[1] != "a2" || serials[0] != "c1" && serials[1] != "c1" {
				t.Errorf("audit rows %v, want c1 and a2", serials)
			}
			if n, err := s.GetNode(ctx, host1); err != nil || n.SerialNumber != "a1" || n.NewSerialNumber != "a2" || !n.NewExpiresAt.Equal(exp) {
				t.Errorf("host-1 after its renewal: %+v, %v", n, err)
			}
			if n, err := s.GetNode(ctx, host2); err != nil || n.SerialNumber != "b1" || n.NewSerialNumber != "" {
				t.Errorf("host-2 after a refused renewal: %+v, %v", n, err)
			}
		})
	}
}
