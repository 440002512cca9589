package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestNodes: upsert inserts then replaces; get and list return what was
// stored; an unknown node is ErrNotFound.
func TestNodes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		first := store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "0A:BC", ExpiresAt: t0.Add(time.Hour)}
		if err := d.s.UpsertNode(ctx, first); err != nil {
			t.Fatal(err)
		}
		want1 := store.Node{SPIFFEID: node1, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "abc", ExpiresAt: t0.Add(time.Hour)}
		if got, err := d.s.GetNode(ctx, node1); err != nil || !reflect.DeepEqual(got, want1) {
			t.Errorf("GetNode after insert:\n got %+v, %v\nwant %+v", got, err, want1)
		}

		renewed := store.Node{SPIFFEID: node1, AttestedAt: t0.Add(30 * time.Minute), CredentialKind: "svid", SerialNumber: "def", ExpiresAt: t0.Add(90 * time.Minute)}
		if err := d.s.UpsertNode(ctx, renewed); err != nil {
			t.Fatal(err)
		}
		if got, err := d.s.GetNode(ctx, node1); err != nil || !reflect.DeepEqual(got, renewed) {
			t.Errorf("GetNode after update:\n got %+v, %v\nwant %+v", got, err, renewed)
		}

		other := store.Node{SPIFFEID: node2, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "1", ExpiresAt: t0.Add(time.Hour)}
		if err := d.s.UpsertNode(ctx, other); err != nil {
			t.Fatal(err)
		}
		if got, err := d.s.ListNodes(ctx); err != nil || !reflect.DeepEqual(got, []store.Node{renewed, other}) {
			t.Errorf("ListNodes:\n got %+v, %v\nwant %+v", got, err, []store.Node{renewed, other})
		}

		_, err := d.s.GetNode(ctx, web)
		checkErr(t, "GetNode(unknown)", err, "store: node spiffe://east.example/ns/default/sa/web: not found")
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%v is not ErrNotFound", err)
		}
		if rev := mustRevision(t, d.s); rev != 0 {
			t.Errorf("node changes moved the revision to %d; it counts entries, authorities and bundles only", rev)
		}

		for _, tt := range []struct {
			name string
			n    store.Node
			want string
		}{
			{"no SPIFFE ID", store.Node{CredentialKind: "x", SerialNumber: "1", ExpiresAt: t0}, "store: node SPIFFE ID is empty"},
			{"no credential kind", store.Node{SPIFFEID: node1, SerialNumber: "1", ExpiresAt: t0}, "store: node credential kind is empty"},
			{"serial not hex", store.Node{SPIFFEID: node1, CredentialKind: "x", SerialNumber: "xyz", ExpiresAt: t0}, `store: node serial number "xyz" is not hexadecimal`},
			{"no expiry", store.Node{SPIFFEID: node1, CredentialKind: "x", SerialNumber: "1"}, "store: node spiffe://east.example/spire/agent/join_token/node1 has no expiry"},
		} {
			checkErr(t, tt.name, d.s.UpsertNode(ctx, tt.n), tt.want)
		}
	})
}

// renewNode records a renewal of node, presenting the SVID of serial
// presented, to the SVID of serial next, as the server does (an audit row
// with RenewsNode), and returns the node's record.
func renewNode(s *store.Store, node spiffeid.ID, presented, next string, nextExpires time.Time) (store.Node, error) {
	ctx := context.Background()
	if err := s.RecordIssued(ctx, store.Issued{Serial: next, SPIFFEID: node.String(), CredentialKind: "x509-svid", NotAfter: nextExpires, RenewsNode: presented}); err != nil {
		return store.Node{}, err
	}
	return s.GetNode(ctx, node)
}

// TestNodeLifecycle: a join-token node's renewals keep one lineage of
// SVIDs (the one in use and the one just signed; any other is refused), a
// ban refuses renewal and attestation until an eviction, and only a ban or
// an eviction moves the revision.
func TestNodeLifecycle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		if err := d.s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "a1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		want := store.Node{SPIFFEID: node1, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "a1", ExpiresAt: t0.Add(time.Hour)}

		// Renewed with a1 in use: b2 is pending, a1 still in use.
		got, err := renewNode(d.s, node1, "A1", "b2", t0.Add(2*time.Hour))
		want.NewSerialNumber, want.NewExpiresAt = "b2", t0.Add(2*time.Hour)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("RenewNode(a1):\n got %+v, %v\nwant %+v", got, err, want)
		}
		// The response was lost; the node renews with a1 again: c3 replaces b2.
		got, err = renewNode(d.s, node1, "a1", "c3", t0.Add(3*time.Hour))
		want.NewSerialNumber, want.NewExpiresAt = "c3", t0.Add(3*time.Hour)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("RenewNode(a1) again:\n got %+v, %v\nwant %+v", got, err, want)
		}
		_, err = d.s.UseNodeSVID(ctx, node1, "b2", t0.Add(2*time.Hour))
		checkErr(t, "UseNodeSVID(b2, replaced)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: SVID b2: not the node's current SVID")
		if !errors.Is(err, store.ErrNodeSVIDSuperseded) {
			t.Errorf("%v is not ErrNodeSVIDSuperseded", err)
		}
		// The node presents c3: it is the one in use from now on.
		got, err = d.s.UseNodeSVID(ctx, node1, "c3", t0.Add(3*time.Hour))
		want = store.Node{SPIFFEID: node1, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "c3", ExpiresAt: t0.Add(3 * time.Hour)}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("UseNodeSVID(c3):\n got %+v, %v\nwant %+v", got, err, want)
		}
		// Another server saw it first: the record as it is.
		if got, err := d.s.UseNodeSVID(ctx, node1, "c3", t0.Add(3*time.Hour)); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("UseNodeSVID(c3) twice:\n got %+v, %v\nwant %+v", got, err, want)
		}
		// a1 is gone for good: a copy of it can neither renew nor be used.
		_, err = renewNode(d.s, node1, "a1", "d4", t0.Add(4*time.Hour))
		checkErr(t, "RenewNode(a1, superseded)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: SVID a1: not the node's current SVID")
		// Renewing with the pending SVID makes it the one in use first.
		if _, err := renewNode(d.s, node1, "c3", "d4", t0.Add(4*time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, err = renewNode(d.s, node1, "d4", "e5", t0.Add(5*time.Hour))
		want = store.Node{SPIFFEID: node1, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "d4", ExpiresAt: t0.Add(4 * time.Hour),
			NewSerialNumber: "e5", NewExpiresAt: t0.Add(5 * time.Hour)}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("RenewNode(d4, pending):\n got %+v, %v\nwant %+v", got, err, want)
		}
		if rev := mustRevision(t, d.s); rev != 0 {
			t.Errorf("renewals moved the revision to %d", rev)
		}

		// A ban: refused everything, attestation included, until evicted.
		banned, err := d.s.BanNode(ctx, node1)
		want.BannedAt = t0
		if err != nil || !reflect.DeepEqual(banned, want) {
			t.Fatalf("BanNode:\n got %+v, %v\nwant %+v", banned, err, want)
		}
		if rev := mustRevision(t, d.s); rev != 1 {
			t.Errorf("revision after the ban: %d, want 1", rev)
		}
		if again, err := d.s.BanNode(ctx, node1); err != nil || !reflect.DeepEqual(again, want) || mustRevision(t, d.s) != 1 {
			t.Errorf("BanNode again: %+v, %v, revision %d; want the record unchanged and revision 1", again, err, mustRevision(t, d.s))
		}
		_, err = renewNode(d.s, node1, "d4", "f6", t0.Add(6*time.Hour))
		checkErr(t, "RenewNode(banned)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: banned")
		if rows, err := d.s.ListIssued(ctx, store.AuditFilter{Serial: "f6"}); err != nil || len(rows) != 0 {
			t.Errorf("a refused renewal left audit rows %v, %v", rows, err)
		}
		if !errors.Is(err, store.ErrNodeBanned) {
			t.Errorf("%v is not ErrNodeBanned", err)
		}
		_, err = d.s.UseNodeSVID(ctx, node1, "e5", t0.Add(5*time.Hour))
		checkErr(t, "UseNodeSVID(banned)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: banned")
		err = d.s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "f6", ExpiresAt: t0.Add(time.Hour)})
		checkErr(t, "UpsertNode(banned)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: banned")
		if got, err := d.s.GetNode(ctx, node1); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("a refused attestation changed the record:\n got %+v, %v\nwant %+v", got, err, want)
		}

		// Eviction deletes the record, ban and all; the node may attest again.
		if err := d.s.DeleteNode(ctx, node1); err != nil {
			t.Fatal(err)
		}
		if rev := mustRevision(t, d.s); rev != 2 {
			t.Errorf("revision after the eviction: %d, want 2", rev)
		}
		_, err = renewNode(d.s, node1, "d4", "f6", t0.Add(6*time.Hour))
		checkErr(t, "RenewNode(evicted)", err, "store: node spiffe://east.example/spire/agent/join_token/node1: not found")
		checkErr(t, "DeleteNode(evicted)", d.s.DeleteNode(ctx, node1), "store: node spiffe://east.example/spire/agent/join_token/node1: not found")
		_, err = d.s.BanNode(ctx, node2)
		checkErr(t, "BanNode(unknown)", err, "store: node spiffe://east.example/spire/agent/join_token/node2: not found")
		if rev := mustRevision(t, d.s); rev != 2 {
			t.Errorf("refused evictions and bans moved the revision to %d", rev)
		}
		if err := d.s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "f6", ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Errorf("attesting after the eviction: %v", err)
		}

		for _, tt := range []struct {
			name string
			err  error
			want string
		}{
			{"renew, serial not hex", func() error { _, err := renewNode(d.s, node1, "zz", "1", t0); return err }(), `store: renewed node's serial number "zz" is not hexadecimal`},
			{"renew, no new serial", func() error { _, err := renewNode(d.s, node1, "f6", "", t0); return err }(), "store: issued certificate serial is empty"},
			{"renew, no expiry", func() error { _, err := renewNode(d.s, node1, "f6", "1", time.Time{}); return err }(), "store: issued certificate 1 has no expiry"},
			{"use, no ID", func() error { _, err := d.s.UseNodeSVID(ctx, spiffeid.ID{}, "1", t0); return err }(), "store: node SPIFFE ID is empty"},
			{"use, no expiry", func() error { _, err := d.s.UseNodeSVID(ctx, node1, "f6", time.Time{}); return err }(), "store: node spiffe://east.example/spire/agent/join_token/node1: the SVID presented has no expiry"},
			{"evict, no ID", d.s.DeleteNode(ctx, spiffeid.ID{}), "store: node SPIFFE ID is empty"},
		} {
			checkErr(t, tt.name, tt.err, tt.want)
		}
	})
}

// TestPurgeNodes: only records whose every SVID expired before the cut-off
// are deleted, never a banned one; a dry run deletes nothing; a purge that
// deletes nothing leaves the revision alone.
func TestPurgeNodes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		id := func(name string) spiffeid.ID { return spiffeid.RequireFromString("spiffe://east.example/node/" + name) }
		long := t0.Add(-30 * 24 * time.Hour)
		for _, n := range []store.Node{
			{SPIFFEID: id("gone"), CredentialKind: "join-token", SerialNumber: "1", ExpiresAt: long},
			{SPIFFEID: id("banned"), CredentialKind: "join-token", SerialNumber: "2", ExpiresAt: long},
			{SPIFFEID: id("renewing"), CredentialKind: "join-token", SerialNumber: "3", ExpiresAt: long},
			{SPIFFEID: id("live"), CredentialKind: "join-token", SerialNumber: "4", ExpiresAt: t0.Add(time.Hour)},
		} {
			if err := d.s.UpsertNode(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.s.BanNode(ctx, id("banned")); err != nil {
			t.Fatal(err)
		}
		if _, err := renewNode(d.s, id("renewing"), "3", "5", t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		rev := mustRevision(t, d.s)
		names := func(ns []store.Node) []string {
			var out []string
			for _, n := range ns {
				out = append(out, n.SPIFFEID.Path())
			}
			return out
		}
		cut := t0.Add(-7 * 24 * time.Hour)
		got, err := d.s.PurgeNodes(ctx, cut, true)
		if err != nil || !reflect.DeepEqual(names(got), []string{"/node/gone"}) {
			t.Fatalf("dry run: %v, %v; want /node/gone", names(got), err)
		}
		if all, _ := d.s.ListNodes(ctx); len(all) != 4 || mustRevision(t, d.s) != rev {
			t.Fatalf("a dry run deleted: %d nodes left, revision %d (was %d)", len(all), mustRevision(t, d.s), rev)
		}
		got, err = d.s.PurgeNodes(ctx, cut, false)
		if err != nil || !reflect.DeepEqual(names(got), []string{"/node/gone"}) {
			t.Fatalf("purge: %v, %v; want /node/gone", names(got), err)
		}
		all, _ := d.s.ListNodes(ctx)
		if !reflect.DeepEqual(names(all), []string{"/node/banned", "/node/live", "/node/renewing"}) || mustRevision(t, d.s) != rev+1 {
			t.Errorf("after the purge: %v, revision %d (was %d)", names(all), mustRevision(t, d.s), rev)
		}
		if got, err := d.s.PurgeNodes(ctx, cut, false); err != nil || len(got) != 0 || mustRevision(t, d.s) != rev+1 {
			t.Errorf("a purge of nothing: %v, %v, revision %d", names(got), err, mustRevision(t, d.s))
		}
	})
}

// TestNodeLifecycleMigration: nodes attested before the schema kept one
// lineage of node SVIDs (version 3) had renewed without their records
// following; after the migration each adopts the first SVID it presents,
// and only that lineage from then on.
func TestNodeLifecycleMigration(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		if err := d.s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "a1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		// Back to version 3, as a database of an older meshfed with this
		// node in it was, then open it again.
		raw := rawDB(t, d)
		for _, q := range []string{
			`ALTER TABLE nodes DROP COLUMN banned_at`,
			`ALTER TABLE nodes DROP COLUMN new_expires_at`,
			`ALTER TABLE nodes DROP COLUMN new_serial_number`,
			`DELETE FROM goose_db_version WHERE version_id = 4`,
		} {
			if _, err := raw.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		s := d.open(t)
		if got, err := s.GetNode(ctx, node1); err != nil || got.SerialNumber != "" {
			t.Fatalf("after the migration: %+v, %v; want no serial in use", got, err)
		}
		// The node has renewed to b2 since it attested with a1.
		got, err := s.UseNodeSVID(ctx, node1, "b2", t0.Add(2*time.Hour))
		want := store.Node{SPIFFEID: node1, AttestedAt: t0, CredentialKind: "join_token", SerialNumber: "b2", ExpiresAt: t0.Add(2 * time.Hour)}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("UseNodeSVID(b2):\n got %+v, %v\nwant %+v", got, err, want)
		}
		_, err = s.UseNodeSVID(ctx, node1, "a1", t0.Add(time.Hour))
		checkErr(t, "UseNodeSVID(a1) once b2 was adopted", err, "store: node spiffe://east.example/spire/agent/join_token/node1: SVID a1: not the node's current SVID")
	})
}

// TestAudit: rows come back newest first (ties in the order recorded), and
// filter by SPIFFE ID, serial (any spelling), time and count.
func TestAudit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		// rec records a row issued at t0+at; with fromClock, IssuedAt is
		// left zero for the store to fill in from its clock (t0).
		rec := func(serial, id string, at time.Duration, fromClock bool) store.Issued {
			t.Helper()
			in := store.Issued{Serial: serial, SPIFFEID: id, CredentialKind: "join_token", Caller: "127.0.0.1:5000", ServerID: "east-1", IssuedAt: t0.Add(at), NotAfter: t0.Add(at + time.Hour)}
			if fromClock {
				in.IssuedAt = time.Time{}
			}
			if err := d.s.RecordIssued(ctx, in); err != nil {
				t.Fatal(err)
			}
			in.IssuedAt = t0.Add(at)
			in.Serial = strings.TrimLeft(strings.ToLower(strings.ReplaceAll(serial, ":", "")), "0")
			return in
		}
		a := rec("0A", web.String(), time.Minute, false)
		b := rec("0b", db.String(), 2*time.Minute, false)
		c := rec("0c", web.String(), 2*time.Minute, false) // same instant as b, recorded after
		e := rec("DE:AD:BE:EF", "web.east.example", 0, true)

		tests := []struct {
			name   string
			filter store.AuditFilter
			want   []store.Issued
		}{
			{"all", store.AuditFilter{}, []store.Issued{c, b, a, e}},
			{"SPIFFE ID", store.AuditFilter{SPIFFEID: web.String()}, []store.Issued{c, a}},
			{"DNS name", store.AuditFilter{SPIFFEID: "web.east.example"}, []store.Issued{e}},
			{"serial as openssl prints it", store.AuditFilter{Serial: "DE:AD:BE:EF"}, []store.Issued{e}},
			{"serial with leading zero", store.AuditFilter{Serial: "000b"}, []store.Issued{b}},
			{"since, inclusive", store.AuditFilter{Since: t0.Add(2 * time.Minute)}, []store.Issued{c, b}},
			{"limit", store.AuditFilter{Limit: 2}, []store.Issued{c, b}},
			{"all filters", store.AuditFilter{SPIFFEID: web.String(), Since: t0.Add(time.Minute), Limit: 1}, []store.Issued{c}},
			{"none", store.AuditFilter{SPIFFEID: "nobody"}, nil},
		}
		for _, tt := range tests {
			got, err := d.s.ListIssued(ctx, tt.filter)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s:\n got %+v, %v\nwant %+v", tt.name, got, err, tt.want)
			}
		}

		for _, tt := range []struct {
			name   string
			filter store.AuditFilter
			want   string
		}{
			{"negative limit", store.AuditFilter{Limit: -1}, "store: audit limit -1 is outside 1..10000"},
			{"limit too large", store.AuditFilter{Limit: 10001}, "store: audit limit 10001 is outside 1..10000"},
			{"bad serial", store.AuditFilter{Serial: "zz"}, `store: audit filter serial "zz" is not hexadecimal`},
		} {
			_, err := d.s.ListIssued(ctx, tt.filter)
			checkErr(t, tt.name, err, tt.want)
		}
	})
}

// TestAuditDefaultLimit: without a limit, one page is DefaultAuditLimit rows.
// TestPruneIssued: rows of certificates that expired before the cut-off go,
// oldest expiry first, at most the limit at a time; rows of certificates
// still valid at the cut-off stay.
func TestPruneIssued(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		for i, exp := range []time.Duration{-3 * time.Hour, -2 * time.Hour, -time.Hour, time.Hour} {
			if err := d.s.RecordIssued(ctx, store.Issued{Serial: fmt.Sprint(i + 1), SPIFFEID: web.String(), CredentialKind: "x509-svid", IssuedAt: t0.Add(exp - time.Hour), NotAfter: t0.Add(exp)}); err != nil {
				t.Fatal(err)
			}
		}
		serials := func() []string {
			rows, err := d.s.ListIssued(ctx, store.AuditFilter{})
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, r := range rows {
				out = append(out, r.Serial)
			}
			return out
		}
		if n, err := d.s.PruneIssued(ctx, t0, 2); err != nil || n != 2 {
			t.Fatalf("first batch: %d, %v; want 2", n, err)
		}
		if got := serials(); !reflect.DeepEqual(got, []string{"4", "3"}) {
			t.Errorf("after the first batch: %v, want the two latest", got)
		}
		if n, err := d.s.PruneIssued(ctx, t0, 2); err != nil || n != 1 {
			t.Fatalf("second batch: %d, %v; want 1 (the last expired)", n, err)
		}
		if got := serials(); !reflect.DeepEqual(got, []string{"4"}) {
			t.Errorf("after the second batch: %v, want the valid one only", got)
		}
		_, err := d.s.PruneIssued(ctx, t0, 0)
		checkErr(t, "PruneIssued(limit 0)", err, "store: audit prune limit 0: give at least 1")
	})
}

func TestAuditDefaultLimit(t *testing.T) {
	t.Parallel()
	d := newTestDB(t, "sqlite")
	s := d.open(t)
	ctx := context.Background()
	for range store.DefaultAuditLimit + 1 {
		if err := s.RecordIssued(ctx, store.Issued{Serial: "1", SPIFFEID: web.String(), CredentialKind: "svid", NotAfter: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.ListIssued(ctx, store.AuditFilter{}); err != nil || len(got) != store.DefaultAuditLimit {
		t.Errorf("ListIssued: %d rows, %v; want %d", len(got), err, store.DefaultAuditLimit)
	}
}

// TestRecordIssuedRefuses: malformed and oversized audit rows are refused.
func TestRecordIssuedRefuses(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ok := store.Issued{Serial: "1", SPIFFEID: web.String(), CredentialKind: "svid", NotAfter: t0}
		with := func(f func(*store.Issued)) store.Issued { r := ok; f(&r); return r }
		tests := []struct {
			name string
			r    store.Issued
			want string
		}{
			{"no serial", with(func(r *store.Issued) { r.Serial = "" }), "store: issued certificate serial is empty"},
			{"zero serial", with(func(r *store.Issued) { r.Serial = "00" }), ""},
			{"serial of 21 octets", with(func(r *store.Issued) { r.Serial = "1" + strings.Repeat("00", 20) }), "store: issued certificate serial has 41 hex digits, more than the 40 of a 20-octet serial number"},
			{"absurd serial", with(func(r *store.Issued) { r.Serial = strings.Repeat("0", 121) }), "store: issued certificate serial is 121 bytes, more than a serial number can be"},
			{"no SPIFFE ID", with(func(r *store.Issued) { r.SPIFFEID = "" }), "store: issued certificate SPIFFE ID or DNS name is empty"},
			{"SPIFFE ID too long", with(func(r *store.Issued) { r.SPIFFEID = strings.Repeat("a", 2049) }), "store: issued certificate SPIFFE ID or DNS name is 2049 bytes, more than the 2048 allowed"},
			{"no credential kind", with(func(r *store.Issued) { r.CredentialKind = "" }), "store: issued certificate credential kind is empty"},
			{"caller too long", with(func(r *store.Issued) { r.Caller = strings.Repeat("c", 2049) }), "store: issued certificate caller is 2049 bytes, more than the 2048 allowed"},
			{"server ID too long", with(func(r *store.Issued) { r.ServerID = strings.Repeat("s", 257) }), "store: issued certificate server ID is 257 bytes, more than the 256 allowed"},
			{"no expiry", with(func(r *store.Issued) { r.NotAfter = time.Time{} }), "store: issued certificate 1 has no expiry"},
		}
		for _, tt := range tests {
			err := d.s.RecordIssued(context.Background(), tt.r)
			checkErr(t, tt.name, err, tt.want)
			if tt.want != "" && !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s: %v is not ErrInvalid", tt.name, err)
			}
		}
	})
}

// TestLiveIssuedByRoot counts unexpired audit rows per root: who still
// depends on which root during a rotation.
func TestLiveIssuedByRoot(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		for i, r := range []struct {
			root    string
			expires time.Duration
		}{{"aa", time.Hour}, {"aa", 2 * time.Hour}, {"bb", time.Hour}, {"bb", -time.Minute}, {"", time.Hour}} {
			if err := d.s.RecordIssued(ctx, store.Issued{Serial: fmt.Sprintf("%x", i+1), SPIFFEID: web.String(), CredentialKind: "svid",
				IssuedAt: t0.Add(-2 * time.Hour), NotAfter: t0.Add(r.expires), RootKeyID: r.root}); err != nil {
				t.Fatal(err)
			}
		}
		for _, tt := range []struct {
			at   time.Time
			want map[string]int64
		}{
			{t0, map[string]int64{"aa": 2, "bb": 1, "": 1}},
			{t0.Add(time.Hour), map[string]int64{"aa": 1}},
			{t0.Add(2 * time.Hour), map[string]int64{}},
		} {
			got, err := d.s.LiveIssuedByRoot(ctx, tt.at)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("at %s: got %v, %v; want %v", tt.at, got, err, tt.want)
			}
		}
		rows, err := d.s.ListIssued(ctx, store.AuditFilter{Serial: "1"})
		if err != nil || len(rows) != 1 || rows[0].RootKeyID != "aa" {
			t.Errorf("root key ID not kept: %+v, %v", rows, err)
		}
	})
}
