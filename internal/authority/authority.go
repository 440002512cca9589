// Package authority keeps the CA a meshfed server signs with, in one of two
// modes:
//
//   - self-signed: a root for the trust domain is generated on first start
//     and kept in the data directory (ca.pem, ca.key 0600); later starts load
//     it;
//
//   - cacerts: Istio's plug-in layout (ca-cert.pem, ca-key.pem,
//     cert-chain.pem, root-cert.pem) is read from a directory and re-read
//     whenever its content changes, without a restart. A replacement that
//     does not load (bad PEM, a key that does not match, a chain that does
//     not verify, an expired CA, another trust domain) is refused with a log
//     line, and the CA in use keeps signing.
//
//   - virtualmesh: self-signed (as above) until a VirtualMesh member has
//     written an intermediate of the shared root into the cacerts
//     directory, then cacerts from there, reloaded the same way. This is how
//     a running server moves onto a federation's root without a restart.
//
// The CA's key stays behind a crypto.Signer; this package never logs it.
package authority

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/supervise"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode is where the CA comes from.
type Mode string

// Modes.
const (
	ModeSelfSigned  Mode = "self-signed"
	ModeCACerts     Mode = "cacerts"
	ModeVirtualMesh Mode = "virtualmesh"
)

// Config configures an Authority.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Mode        Mode // ModeSelfSigned if empty
	// DataDir holds the self-signed root in DataDir/ca.
	DataDir string
	// CACertsDir is the Istio plug-in directory for ModeCACerts, and where
	// the VirtualMesh intermediate appears for ModeVirtualMesh.
	CACertsDir string
	// KeyType and RootTTL apply to a generated root.
	KeyType pki.KeyType
	RootTTL time.Duration
	// ReloadInterval is how often Run looks for a changed cacerts directory
	// (default 5s).
	ReloadInterval time.Duration
	Clock          pki.Clock
	Logger         *slog.Logger
}

// Authority holds the CA in use and swaps it atomically on reload.
type Authority struct {
	cfg     Config
	current atomic.Pointer[pki.CA]
	// fromCACerts is set while the CA in use came from the cacerts
	// directory rather than the self-signed root.
	fromCACerts atomic.Bool
	// digest of the cacerts files last seen, good or bad, so a bad
	// replacement is reported once rather than at every poll.
	mu       sync.Mutex
	seen     [sha256.Size]byte
	watchers []chan struct{}
}

// New loads (or, self-signed, first makes) the CA. It fails if there is no
// usable CA: a server must not start without one.
func New(cfg Config) (*Authority, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("authority: a trust domain is required")
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeSelfSigned
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = 5 * time.Second
	}
	a := &Authority{cfg: cfg}
	var ca *pki.CA
	var err error
	switch cfg.Mode {
	case ModeSelfSigned:
		if cfg.DataDir == "" {
			return nil, errors.New("authority: self-signed mode needs a data directory")
		}
		ca, err = a.loadOrCreateRoot()
	case ModeCACerts:
		if cfg.CACertsDir == "" {
			return nil, errors.New("authority: cacerts mode needs the cacerts directory")
		}
		var digest [sha256.Size]byte
		digest, err = a.digest()
		if err == nil {
			a.seen = digest
			ca, err = a.loadCACerts()
		}
	case ModeVirtualMesh:
		if cfg.DataDir == "" || cfg.CACertsDir == "" {
			return nil, errors.New("authority: virtualmesh mode needs a data directory and the intermediate's directory")
		}
		ca, err = a.loadVirtualMesh()
	default:
		return nil, fmt.Errorf("authority: unknown CA mode %q; use %s, %s or %s", cfg.Mode, ModeSelfSigned, ModeCACerts, ModeVirtualMesh)
	}
	if err != nil {
		return nil, err
	}
	a.current.Store(ca)
	if cfg.Mode == ModeCACerts {
		a.fromCACerts.Store(true)
	}
	return a, nil
}

// FromCACerts reports whether the CA in use was loaded from the cacerts
// directory (in ModeVirtualMesh: whether the VirtualMesh intermediate
// signs).
func (a *Authority) FromCACerts() bool { return a.fromCACerts.Load() }

// CA returns the CA in use. Callers take it once per signing so that a
// reload never changes the CA under a signature in progress.
func (a *Authority) CA() *pki.CA { return a.current.Load() }

// Changed returns a channel that receives (without blocking the authority)
// after every change of CA.
func (a *Authority) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{}, 1)
	a.watchers = append(a.watchers, ch)
	return ch
}

// Run watches the cacerts directory until ctx is done. In self-signed mode it
// only waits.
func (a *Authority) Run(ctx context.Context) error {
	if a.cfg.Mode == ModeSelfSigned {
		<-ctx.Done()
		return nil
	}
	return supervise.Every(ctx, a.cfg.ReloadInterval, func() { _, _ = a.Reload() })
}

// Reload re-reads the cacerts directory if its content changed since it was
// last read. It reports whether the CA was replaced; a refused replacement is
// logged, returned as the error, and leaves the CA in use unchanged.
func (a *Authority) Reload() (bool, error) {
	if a.cfg.Mode == ModeSelfSigned {
		return false, nil
	}
	if a.cfg.Mode == ModeVirtualMesh && !a.haveCACerts() {
		return false, nil // not joined yet: the self-signed root keeps signing
	}
	digest, err := a.digest()
	if err != nil {
		a.cfg.Logger.Error("cacerts replacement refused; the CA in use keeps signing", "dir", a.cfg.CACertsDir, "error", err)
		return false, err
	}
	a.mu.Lock()
	unchanged := digest == a.seen
	a.seen = digest
	a.mu.Unlock()
	if unchanged {
		return false, nil
	}
	ca, err := a.loadCACerts()
	if err != nil {
		a.cfg.Logger.Error("cacerts replacement refused; the CA in use keeps signing", "dir", a.cfg.CACertsDir, "error", err)
		return false, err
	}
	old := a.current.Swap(ca)
	a.fromCACerts.Store(true)
	a.cfg.Logger.Info("CA reloaded from cacerts", "dir", a.cfg.CACertsDir,
		"serial", fmt.Sprintf("%x", ca.Certificate().SerialNumber),
		"previous_serial", fmt.Sprintf("%x", old.Certificate().SerialNumber),
		"not_after", ca.NotAfter().UTC().Format(time.RFC3339))
	a.notify()
	return true, nil
}

func (a *Authority) notify() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ch := range a.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// digest hashes the cacerts files (names and contents), so a change is seen
// whichever way it arrives: rewritten in place, renamed over, or a
// Kubernetes secret mount swapping its ..data symlink.
func (a *Authority) digest() ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, name := range []string{cadir.IstioCertFile, cadir.IstioKeyFile, cadir.IstioChainFile, cadir.IstioRootFile} {
		data, err := os.ReadFile(filepath.Join(a.cfg.CACertsDir, name))
		if err != nil && !(errors.Is(err, os.ErrNotExist) && name == cadir.IstioChainFile) {
			return [sha256.Size]byte{}, fmt.Errorf("authority: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(data))
		h.Write(data)
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

func (a *Authority) loadCACerts() (*pki.CA, error) {
	ca, err := cadir.Load(a.cfg.CACertsDir, a.cfg.Clock)
	if err != nil {
		return nil, fmt.Errorf("authority: %w", err)
	}
	if err := a.checkTrustDomain(ca); err != nil {
		return nil, err
	}
	return ca, nil
}

// checkTrustDomain refuses a CA constrained to another trust domain.
func (a *Authority) checkTrustDomain(ca *pki.CA) error {
	if td, ok := ca.TrustDomain(); ok && td != a.cfg.TrustDomain {
		return fmt.Errorf("authority: the CA in %s is for trust domain %q, but this server serves %q", a.cfg.CACertsDir, td, a.cfg.TrustDomain)
	}
	return nil
}

// haveCACerts reports whether the cacerts directory holds a CA certificate.
func (a *Authority) haveCACerts() bool {
	_, ok := exists(a.cfg.CACertsDir, cadir.IstioCertFile)
	return ok
}

// loadVirtualMesh loads the VirtualMesh intermediate when there is one, and
// the self-signed root otherwise (first start, or not joined yet). A bad
// intermediate at start is logged and the self-signed root signs: the member
// replaces it at its next renewal.
func (a *Authority) loadVirtualMesh() (*pki.CA, error) {
	if a.haveCACerts() {
		digest, err := a.digest()
		if err == nil {
			a.seen = digest
			var ca *pki.CA
			if ca, err = a.loadCACerts(); err == nil {
				a.fromCACerts.Store(true)
				return ca, nil
			}
		}
		a.cfg.Logger.Error("the VirtualMesh intermediate does not load; signing with the self-signed root until it is replaced", "dir", a.cfg.CACertsDir, "error", err)
	}
	return a.loadOrCreateRoot()
}

func (a *Authority) rootDir() string { return filepath.Join(a.cfg.DataDir, "ca") }

func (a *Authority) loadOrCreateRoot() (*pki.CA, error) {
	if err := a.finishActivation(); err != nil {
		return nil, err
	}
	dir := a.rootDir()
	if _, ok := exists(dir, cadir.CertFile); ok {
		ca, err := cadir.Load(dir, a.cfg.Clock)
		if err != nil {
			return nil, fmt.Errorf("authority: %w", err)
		}
		if err := a.checkTrustDomain(ca); err != nil {
			return nil, err
		}
		return ca, nil
	}
	root, key, err := a.makeRoot(dir, 1)
	if err != nil {
		return nil, err
	}
	a.cfg.Logger.Info("generated a self-signed root for the trust domain", "dir", dir, "serial", fmt.Sprintf("%x", root.SerialNumber), "not_after", root.NotAfter.UTC().Format(time.RFC3339))
	return pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{root}, Clock: a.cfg.Clock})
}

// makeRoot generates generation g of the trust domain's root with a new key
// and writes both into dir (the key 0600).
func (a *Authority) makeRoot(dir string, g int) (*x509.Certificate, crypto.Signer, error) {
	key, err := pki.GenerateKey(a.cfg.KeyType)
	if err != nil {
		return nil, nil, fmt.Errorf("authority: %w", err)
	}
	root, err := pki.CreateRoot(pki.RootRequest{
		Signer:      key,
		CommonName:  rootName(a.cfg.TrustDomain.Name(), g),
		TrustDomain: a.cfg.TrustDomain,
		TTL:         a.cfg.RootTTL,
		Now:         a.cfg.Clock(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("authority: %w", err)
	}
	files, err := cadir.Files([]*x509.Certificate{root}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("authority: %w", err)
	}
	if err := cadir.Write(dir, false, files...); err != nil {
		return nil, nil, fmt.Errorf("authority: %w", err)
	}
	return root, key, nil
}

func exists(dir, name string) (string, bool) {
	p := filepath.Join(dir, name)
	_, err := os.Stat(p)
	return p, err == nil
}
