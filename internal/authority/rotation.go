package authority

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
)

// Rotation of a self-signed root, in three phases the directories record,
// so a restart resumes where it stopped:
//
//   - prepared: a new root, with its own key and a distinct subject, is in
//     DataDir/ca-next; the server publishes it beside the current one, but
//     signs with the current one.
//   - active: the new root is in DataDir/ca and signs; the old one is in
//     DataDir/ca-previous and is still published, until no certificate
//     signed under it is alive.
//   - retired: DataDir/ca-previous is removed; only the new root remains.
//
// A crash between the two renames of Activate leaves ca-previous and
// ca-next but no ca: New completes the activation.

// Phase is where a rotation of the self-signed root is.
type Phase string

// Phases.
const (
	PhaseStable   Phase = "stable"   // one root
	PhasePrepared Phase = "prepared" // next root published, not signing
	PhaseActive   Phase = "active"   // next root signing, previous still published
)

// ErrNoRotation is returned for rotation calls outside self-signed mode:
// a cacerts directory is rotated by whoever writes it, and a VirtualMesh
// root by its controller.
var ErrNoRotation = errors.New("authority: only a self-signed root is rotated by the server; in cacerts mode replace the files (new root in root-cert.pem first), and a VirtualMesh's shared root is rotated by its controller (meshfed federation rotate-root)")

func (a *Authority) nextDir() string     { return filepath.Join(a.cfg.DataDir, "ca-next") }
func (a *Authority) previousDir() string { return filepath.Join(a.cfg.DataDir, "ca-previous") }

// rotatable reports whether the CA in use is the self-signed root.
func (a *Authority) rotatable() bool {
	return a.cfg.Mode == ModeSelfSigned || a.cfg.Mode == ModeVirtualMesh && !a.fromCACerts.Load()
}

// Phase returns where a rotation of the self-signed root is.
func (a *Authority) Phase() Phase {
	if _, ok := exists(a.nextDir(), cadir.CertFile); ok {
		return PhasePrepared
	}
	if _, ok := exists(a.previousDir(), cadir.CertFile); ok {
		return PhaseActive
	}
	return PhaseStable
}

// SelfSignedRoot returns the self-signed root kept in the data directory,
// or nil when there is none (cacerts mode).
func (a *Authority) SelfSignedRoot() (*x509.Certificate, error) {
	return readRoot(a.rootDir())
}

// Next returns the prepared root, or nil.
func (a *Authority) Next() (*x509.Certificate, error) {
	return readRoot(a.nextDir())
}

// Previous returns the root an activated rotation replaced, or nil.
func (a *Authority) Previous() (*x509.Certificate, error) {
	return readRoot(a.previousDir())
}

func readRoot(dir string) (*x509.Certificate, error) {
	p, ok := exists(dir, cadir.CertFile)
	if !ok {
		return nil, nil
	}
	certs, err := pemfile.ReadCertificates(p)
	if err != nil {
		return nil, fmt.Errorf("authority: %w", err)
	}
	return certs[0], nil
}

// Prepare makes the next root (phase prepared). Its subject carries a
// generation number one above the current root's, so chain building never
// meets two roots with one subject; its key is new, so its subject key ID
// differs too. Preparing when a next root exists returns it.
func (a *Authority) Prepare() (*x509.Certificate, error) {
	if !a.rotatable() {
		return nil, ErrNoRotation
	}
	switch a.Phase() {
	case PhasePrepared:
		return a.Next()
	case PhaseActive:
		return nil, errors.New("authority: the previous rotation is still retiring its old root; finish it first")
	}
	cur := a.CA().Certificate()
	root, _, err := a.makeRoot(a.nextDir(), generation(cur.Subject.CommonName)+1)
	if err != nil {
		return nil, err
	}
	a.cfg.Logger.Info("prepared the next root; it is published but does not sign yet", "subject", root.Subject.CommonName,
		"serial", fmt.Sprintf("%x", root.SerialNumber), "not_after", root.NotAfter.UTC().Format(time.RFC3339))
	return root, nil
}

// Activate makes the prepared root sign (phase active); the old root moves
// to ca-previous, still to be published.
func (a *Authority) Activate() error {
	if !a.rotatable() {
		return ErrNoRotation
	}
	if a.Phase() != PhasePrepared {
		return errors.New("authority: no prepared root to activate; prepare one first")
	}
	next, err := cadir.Load(a.nextDir(), a.cfg.Clock)
	if err != nil {
		return fmt.Errorf("authority: the prepared root does not load: %w", err)
	}
	if err := os.Rename(a.rootDir(), a.previousDir()); err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	if err := os.Rename(a.nextDir(), a.rootDir()); err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	old := a.current.Swap(next)
	a.cfg.Logger.Info("the next root signs now; the previous one stays published until nothing signed under it is alive",
		"subject", next.Certificate().Subject.CommonName, "previous_subject", old.Certificate().Subject.CommonName)
	a.notify()
	return nil
}

// Retire forgets the previous root (phase stable), removing its key.
func (a *Authority) Retire() error {
	if a.Phase() != PhaseActive {
		return errors.New("authority: no previous root to retire")
	}
	if err := os.RemoveAll(a.previousDir()); err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	a.cfg.Logger.Info("retired the previous root")
	a.notify()
	return nil
}

// finishActivation completes an Activate that stopped between its renames.
func (a *Authority) finishActivation() error {
	if _, ok := exists(a.rootDir(), cadir.CertFile); ok {
		return nil
	}
	_, prev := exists(a.previousDir(), cadir.CertFile)
	_, next := exists(a.nextDir(), cadir.CertFile)
	if !prev || !next {
		return nil
	}
	a.cfg.Logger.Warn("completing a root activation that was interrupted")
	if err := os.Rename(a.nextDir(), a.rootDir()); err != nil {
		return fmt.Errorf("authority: completing an interrupted activation: %w", err)
	}
	return nil
}

// rootName is the subject common name of generation g of a trust domain's
// root: the first has no number, as roots made before rotation existed.
func rootName(td string, g int) string {
	if g <= 1 {
		return td + " root CA"
	}
	return fmt.Sprintf("%s root CA %d", td, g)
}

// generation reads the number rootName put into a common name (1 if none).
func generation(cn string) int {
	i := strings.LastIndexByte(cn, ' ')
	if i < 0 {
		return 1
	}
	n, err := strconv.Atoi(cn[i+1:])
	if err != nil || n < 1 {
		return 1
	}
	return n
}
