// Package files is the agent's file mode: for a workload that reads its
// certificate from disk (Istio's mounted cacerts, nginx, a JVM), it writes
// the SVID that workload is entitled to as svid.pem, svid_key.pem (0600) and
// bundle.pem, plus federated-<trust domain>.pem for each trust domain its
// entry federates with, atomically and all together, and can run a command
// after each write (to reload the workload).
//
// It never writes an expired SVID, and never logs a key.
package files

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/agent/workloadapi"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// Source is what the writer reads: the agent's cache.
type Source interface {
	X509SVIDs(sel []attest.Selector) []workloadapi.Identity
	Bundles() (*x509bundle.Bundle, []*x509bundle.Bundle)
	Changed() <-chan struct{}
}

// Names of the files written.
const (
	SVIDFile   = "svid.pem"
	KeyFile    = "svid_key.pem"
	BundleFile = "bundle.pem"
)

// CommandTimeout bounds the command run after a write.
const CommandTimeout = time.Minute

// Config configures a Writer.
type Config struct {
	Dir       string            // where the files go (created 0700)
	Selectors []attest.Selector // the workload's selectors: it gets what a caller with them would
	Command   string            // run with /bin/sh -c after each write; empty for none
	Source    Source
	Clock     func() time.Time
	Logger    *slog.Logger
}

// Writer keeps Dir up to date.
type Writer struct {
	cfg  Config
	last []byte // what was last written, to write only on change
}

// New checks cfg.
func New(cfg Config) (*Writer, error) {
	if cfg.Dir == "" || cfg.Source == nil {
		return nil, errors.New("files: a directory and a source are required")
	}
	if len(cfg.Selectors) == 0 {
		return nil, errors.New("files: give the selectors of the workload the files are for, e.g. unix:uid:1000")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("files: %w", err)
	}
	return &Writer{cfg: cfg}, nil
}

// Run writes now and after every change until ctx is done.
func (w *Writer) Run(ctx context.Context) error {
	for {
		changed := w.cfg.Source.Changed()
		if _, err := w.Write(ctx); err != nil {
			w.cfg.Logger.Error("file mode: writing the SVID files failed; will retry at the next change", "dir", w.cfg.Dir, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// Write writes the files if what the workload is entitled to changed, and
// then runs the command. It reports whether it wrote.
func (w *Writer) Write(ctx context.Context) (bool, error) {
	ids := w.cfg.Source.X509SVIDs(w.cfg.Selectors)
	now := w.cfg.Clock()
	var ident *workloadapi.Identity
	for i := range ids {
		if !now.After(ids[i].SVID.Certificates[0].NotAfter) {
			ident = &ids[i]
			break
		}
	}
	if ident == nil {
		return false, nil // nothing valid to write yet; the old files stay for the workload to decide
	}
	certs, key, err := ident.SVID.Marshal()
	if err != nil {
		return false, fmt.Errorf("files: %w", err)
	}
	local, federated := w.cfg.Source.Bundles()
	if local == nil {
		return false, errors.New("files: no trust bundle yet")
	}
	files := []pemfile.File{
		{Name: SVIDFile, Data: certs, Mode: pemfile.ModePublic},
		{Name: KeyFile, Data: key, Mode: pemfile.ModeKey},
		{Name: BundleFile, Data: pemfile.EncodeCertificates(local.X509Authorities()...), Mode: pemfile.ModePublic},
	}
	for _, b := range federated {
		for _, td := range ident.FederatesWith {
			if b.TrustDomain() == td {
				files = append(files, pemfile.File{Name: "federated-" + td.Name() + ".pem", Data: pemfile.EncodeCertificates(b.X509Authorities()...), Mode: pemfile.ModePublic})
			}
		}
	}
	var digest bytes.Buffer
	for _, f := range files {
		fmt.Fprintf(&digest, "%s %d\n", f.Name, len(f.Data))
		digest.Write(f.Data)
	}
	if bytes.Equal(digest.Bytes(), w.last) {
		return false, nil
	}
	if err := pemfile.WriteFiles(w.cfg.Dir, files...); err != nil {
		return false, err
	}
	w.removeStaleFederated(files)
	w.last = digest.Bytes()
	leaf := ident.SVID.Certificates[0]
	w.cfg.Logger.Info("file mode: SVID written", "dir", w.cfg.Dir, "spiffe_id", ident.SVID.ID.String(),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	if w.cfg.Command != "" {
		w.run(ctx, leaf)
	}
	return true, nil
}

// removeStaleFederated deletes federated-*.pem files of trust domains the
// workload no longer federates with, so it stops trusting them.
func (w *Writer) removeStaleFederated(keep []pemfile.File) {
	names, _ := filepath.Glob(filepath.Join(w.cfg.Dir, "federated-*.pem"))
	for _, n := range names {
		wanted := false
		for _, f := range keep {
			if f.Name == filepath.Base(n) {
				wanted = true
			}
		}
		if !wanted {
			if err := os.Remove(n); err != nil {
				w.cfg.Logger.Error("file mode: removing a stale federated bundle failed", "file", n, "error", err)
			}
		}
	}
}

// run runs the command with the paths and identity in its environment. Its
// failure is logged, not fatal: the files are already in place.
func (w *Writer) run(ctx context.Context, leaf *x509.Certificate) {
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", w.cfg.Command)
	cmd.Dir = w.cfg.Dir
	cmd.Env = append(os.Environ(),
		"MESHFED_SVID_DIR="+w.cfg.Dir,
		"MESHFED_SVID="+filepath.Join(w.cfg.Dir, SVIDFile),
		"MESHFED_SVID_KEY="+filepath.Join(w.cfg.Dir, KeyFile),
		"MESHFED_BUNDLE="+filepath.Join(w.cfg.Dir, BundleFile),
		"MESHFED_SPIFFE_ID="+leaf.URIs[0].String(),
	)
	out, err := cmd.CombinedOutput()
	if len(out) > 4096 {
		out = out[:4096]
	}
	if err != nil {
		w.cfg.Logger.Error("file mode: the command after the write failed", "command", w.cfg.Command, "error", err, "output", string(out))
		return
	}
	w.cfg.Logger.Info("file mode: command ran", "command", w.cfg.Command)
}
