package store_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
)

// TestSnapshotTo: a snapshot of a SQLite store in use opens as a store
// holding what was committed, is mode 0600, and is never written over; a
// Postgres store says to use pg_dump.
func TestSnapshotTo(t *testing.T) {
	t.Parallel()
	d := newTestDB(t, "sqlite")
	s := d.open(t)
	ctx := context.Background()
	e, err := s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join-token", SerialNumber: "a1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "snap.db")
	if err := s.SnapshotTo(ctx, out); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v, %v; want mode 0600", fi, err)
	}
	err = s.SnapshotTo(ctx, out)
	checkErr(t, "SnapshotTo(existing)", err, "store: "+out+" already exists; a snapshot is written to a new file")

	snap, err := store.Open(ctx, store.Config{DSN: "sqlite://" + out, Clock: d.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if got, err := snap.GetEntry(ctx, e.ID); err != nil || !reflect.DeepEqual(got, e) {
		t.Errorf("the entry in the snapshot: %+v, %v; want %+v", got, err, e)
	}
	if got, err := snap.GetNode(ctx, node1); err != nil || got.SerialNumber != "a1" {
		t.Errorf("the node in the snapshot: %+v, %v", got, err)
	}
	if rev := mustRevision(t, snap); rev != mustRevision(t, s) {
		t.Errorf("snapshot revision %d, store's %d", rev, mustRevision(t, s))
	}

	pg := newTestDB(t, "postgres").open(t)
	if err := pg.SnapshotTo(ctx, filepath.Join(t.TempDir(), "pg.db")); err == nil || !strings.HasSuffix(err.Error(), "is a Postgres database: back it up with pg_dump") {
		t.Errorf("SnapshotTo(postgres): %v", err)
	}
}
