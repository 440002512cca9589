package authority

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A self-signed root rotates in phases the directories record: prepared (a
// new root with a distinct subject and key beside the old), active (the new
// one signs, the old one is kept), stable again after retiring.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{TrustDomain: east, DataDir: dir, Clock: clockAt(t0)}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := a.CA().Certificate()
	if first.Subject.CommonName != "east.example root CA" || a.Phase() != PhaseStable {
		t.Fatalf("first root %q, phase %s", first.Subject.CommonName, a.Phase())
	}
	if err := a.Activate(); err == nil || err.Error() != "authority: no prepared root to activate; prepare one first" {
		t.Errorf("Activate before Prepare: %v", err)
	}
	next, err := a.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	if next.Subject.CommonName != "east.example root CA 2" || bytes.Equal(next.SubjectKeyId, first.SubjectKeyId) || a.Phase() != PhasePrepared {
		t.Fatalf("next root %q (same key ID: %v), phase %s", next.Subject.CommonName, bytes.Equal(next.SubjectKeyId, first.SubjectKeyId), a.Phase())
	}
	if again, err := a.Prepare(); err != nil || !again.Equal(next) {
		t.Fatalf("Prepare twice made another root: %v", err)
	}
	if !a.CA().Certificate().Equal(first) {
		t.Fatal("the prepared root signs before activation")
	}
	changes := a.Changed()
	if err := a.Activate(); err != nil {
		t.Fatal(err)
	}
	<-changes
	if !a.CA().Certificate().Equal(next) || a.Phase() != PhaseActive {
		t.Fatalf("after Activate: signing with %q, phase %s", a.CA().Certificate().Subject.CommonName, a.Phase())
	}
	if prev, err := a.Previous(); err != nil || !prev.Equal(first) {
		t.Fatalf("Previous: %v", err)
	}
	if _, err := a.Prepare(); err == nil {
		t.Error("Prepare while the previous root is retiring")
	}
	// A restart in the active phase signs with the new root.
	b, err := New(cfg)
	if err != nil || !b.CA().Certificate().Equal(next) || b.Phase() != PhaseActive {
		t.Fatalf("restart while active: %v", err)
	}
	if err := a.Retire(); err != nil {
		t.Fatal(err)
	}
	if a.Phase() != PhaseStable {
		t.Fatalf("phase %s after Retire", a.Phase())
	}
	if _, err := os.Stat(filepath.Join(dir, "ca-previous")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the previous root's key is still on disk: %v", err)
	}
	third, err := a.Prepare()
	if err != nil || third.Subject.CommonName != "east.example root CA 3" {
		t.Fatalf("third root: %v", err)
	}
}

// An activation interrupted between its two renames is completed at the next
// start, instead of a new root being generated.
func TestRotationInterruptedActivation(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{TrustDomain: east, DataDir: dir, Clock: clockAt(t0)}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	next, err := a.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "ca"), filepath.Join(dir, "ca-previous")); err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !b.CA().Certificate().Equal(next) || b.Phase() != PhaseActive {
		t.Fatalf("after the interrupted activation: signing with %q, phase %s", b.CA().Certificate().Subject.CommonName, b.Phase())
	}
}

// Outside self-signed mode the server does not rotate roots.
func TestRotationRefusedForCACerts(t *testing.T) {
	dir := t.TempDir()
	writeCACerts(t, root(t), east, 24*time.Hour, dir)
	a, err := New(Config{TrustDomain: east, Mode: ModeCACerts, CACertsDir: dir, DataDir: t.TempDir(), Clock: clockAt(t0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(); !errors.Is(err, ErrNoRotation) {
		t.Errorf("Prepare in cacerts mode: %v", err)
	}
}
