package bundleendpoint

import (
	"crypto"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// reloadInterval is the most often the https_web files are looked at: at
// most one pair of stat calls per second, however many clients connect.
const reloadInterval = time.Second

// certFiles holds the https_web certificate and reloads it from its files
// when they change. Handshakes read the current pair through an atomic
// pointer; a replacement that does not load is logged once and the last
// good pair stays in use.
type certFiles struct {
	certFile, keyFile string
	now               func() time.Time
	log               *slog.Logger

	cert      atomic.Pointer[tls.Certificate]
	nextCheck atomic.Int64 // Unix nanoseconds; no stat before this

	mu                sync.Mutex // held by the one handshake that checks
	certStat, keyStat fileStat   // what the files looked like when last read
}

func loadCertFiles(certFile, keyFile string, now func() time.Time, log *slog.Logger) (*certFiles, error) {
	f := &certFiles{certFile: certFile, keyFile: keyFile, now: now, log: log}
	t := now()
	// Stat before reading: if a file changes in between, the next check
	// sees a newer stat and reads it again.
	f.certStat, f.keyStat = statFile(certFile), statFile(keyFile)
	c, err := readPair(certFile, keyFile, t)
	if err != nil {
		return nil, fmt.Errorf("bundleendpoint: https_web certificate: %w", err)
	}
	f.cert.Store(c)
	f.nextCheck.Store(t.Add(reloadInterval).UnixNano())
	return f, nil
}

func (f *certFiles) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.maybeReload()
	return f.cert.Load(), nil
}

// maybeReload rereads the files if a second has passed since the last look
// and either file's identity, size or modification time has changed. A
// handshake that finds another one already checking does not wait for it.
func (f *certFiles) maybeReload() {
	t := f.now()
	if t.UnixNano() < f.nextCheck.Load() || !f.mu.TryLock() {
		return
	}
	defer f.mu.Unlock()
	if t.UnixNano() < f.nextCheck.Load() {
		return
	}
	f.nextCheck.Store(t.Add(reloadInterval).UnixNano())

	cs, ks := statFile(f.certFile), statFile(f.keyFile)
	if cs.same(f.certStat) && ks.same(f.keyStat) {
		return
	}
	// Remember what was seen even if it does not load, so that a bad
	// replacement is logged once, not on every check; the next change to
	// either file is tried again.
	f.certStat, f.keyStat = cs, ks
	c, err := readPair(f.certFile, f.keyFile, t)
	if err != nil {
		f.log.Error("bundle endpoint: keeping the current https_web certificate: its replacement does not load",
			"cert_file", f.certFile, "key_file", f.keyFile, "error", err)
		return
	}
	f.cert.Store(c)
	f.log.Info("bundle endpoint: reloaded the https_web certificate",
		"cert_file", f.certFile, "serial", fmt.Sprintf("%x", c.Leaf.SerialNumber),
		"not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// readPair reads a certificate chain and its key with pemfile's size bounds
// and checks that they belong together and that the certificate has not
// expired at now.
func readPair(certFile, keyFile string, now time.Time) (*tls.Certificate, error) {
	certs, err := pemfile.ReadCertificates(certFile)
	if err != nil {
		return nil, err
	}
	key, err := pemfile.ReadPrivateKey(keyFile)
	if err != nil {
		return nil, err
	}
	leaf := certs[0]
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("the key in %s does not belong to the first certificate in %s; put the server certificate first and give its own key", keyFile, certFile)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("the certificate in %s expired at %s; issue a new one", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, cert := range certs {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// fileStat is what a file looked like: its os.FileInfo, or nil if it could
// not be looked at.
type fileStat struct{ info os.FileInfo }

func statFile(path string) fileStat {
	info, err := os.Stat(path) // follows symlinks, as Kubernetes' ..data swaps need
	if err != nil {
		return fileStat{}
	}
	return fileStat{info}
}

// same reports whether a and b describe the same unchanged file: same inode
// (a rename replaces it), same size and same modification time (compared
// for equality, so a replacement with an older time still counts).
func (a fileStat) same(b fileStat) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return os.SameFile(a.info, b.info) && a.info.Size() == b.info.Size() && a.info.ModTime().Equal(b.info.ModTime())
}
