package bundleendpoint_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundleendpoint"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/federation"
)

// TestWebProfileFetch fetches with go-spiffe's federation client trusting
// the test root as its Web PKI.
func TestWebProfileFetch(t *testing.T) {
	p := newPKI(t)
	want := p.bundle(t, 7)
	chain, key := p.leaf(t, pki.ECP256)
	certFile, keyFile := writePair(t, t.TempDir(), chain, key)
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: want}, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile})

	got, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithWebPKIRoots(p.pool()))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Errorf("fetched bundle differs from the served one\n got: %s\nwant: %s", marshal(t, got), marshal(t, want))
	}

	other := newPKI(t)
	_, err = federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithWebPKIRoots(other.pool()))
	if want := "tls: failed to verify certificate: x509: certificate signed by unknown authority"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("fetch trusting another root: error = %v, want one containing %q", err, want)
	}
}

// TestWebReload replaces the https_web files step by step under an injected
// clock: a change is noticed only once a second has passed since the last
// look, a good replacement is served from the next handshake, and a bad one
// is logged once while the last good certificate stays in use.
func TestWebReload(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	chainA, keyA := p.leaf(t, pki.ECP256)
	chainB, keyB := p.leaf(t, pki.ECP256)
	chainC, keyC := p.leaf(t, pki.RSA2048)
	certFile, keyFile := writePair(t, dir, chainA, keyA)
	keyCPEM, err := pemfile.EncodePrivateKey(keyC)
	if err != nil {
		t.Fatal(err)
	}

	clk := newClock()
	var l logs
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: p.bundle(t, 1)}, Profile: bundleendpoint.ProfileWeb,
		CertFile: certFile, KeyFile: keyFile, Clock: clk.Now, Logger: l.logger()})

	reloaded := func(c *x509.Certificate) string {
		return fmt.Sprintf("INFO bundle endpoint: reloaded the https_web certificate cert_file=%s serial=%x not_after=%s",
			certFile, c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339))
	}
	keeping := func(reason string) string {
		return fmt.Sprintf("ERROR bundle endpoint: keeping the current https_web certificate: its replacement does not load cert_file=%s key_file=%s error=%s",
			certFile, keyFile, reason)
	}
	// mtime gives each in-place write a distinct modification time, so the
	// test does not depend on the file system's timestamp granularity.
	mtime := clk.Now().Add(-time.Hour)
	inPlace := func(path string, data []byte) {
		writeFile(t, path, data)
		mtime = mtime.Add(time.Second)
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}

	steps := []struct {
		name    string
		change  func()
		advance time.Duration
		served  *x509.Certificate
		log     []string
	}{
		{"initial pair", nil, 0, chainA[0], nil},
		{"replaced by rename, checked under a second ago", func() { writePair(t, dir, chainB, keyB) }, 0, chainA[0], nil},
		{"999ms later: still not looked at", nil, 999 * time.Millisecond, chainA[0], nil},
		{"1s later: new pair served", nil, time.Millisecond, chainB[0], []string{reloaded(chainB[0])}},
		{"nothing changed: no reload, no log", nil, time.Second, chainB[0], nil},
		{"key file overwritten with garbage", func() { inPlace(keyFile, []byte("not a key\n")) }, time.Second, chainB[0],
			[]string{keeping(keyFile + ": pemfile: no PEM private key block found")}},
		{"bad replacement unchanged: logged once", nil, time.Second, chainB[0], nil},
		{"key of another certificate", func() { inPlace(keyFile, keyCPEM) }, time.Second, chainB[0],
			[]string{keeping("the key in " + keyFile + " does not belong to the first certificate in " + certFile + "; put the server certificate first and give its own key")}},
		{"its certificate written in place: pair complete", func() { inPlace(certFile, pemfile.EncodeCertificates(chainC...)) }, time.Second, chainC[0],
			[]string{reloaded(chainC[0])}},
		{"certificate file removed", func() {
			if err := os.Remove(certFile); err != nil {
				t.Fatal(err)
			}
		}, time.Second, chainC[0], []string{keeping("pemfile: open " + certFile + ": no such file or directory")}},
		{"certificate file back", func() { writePair(t, dir, chainA, keyA) }, time.Second, chainA[0], []string{reloaded(chainA[0])}},
	}
	for _, st := range steps {
		n := l.count()
		if st.change != nil {
			st.change()
		}
		clk.advance(st.advance)
		got := servedLeaf(t, s)
		if got.SerialNumber.Cmp(st.served.SerialNumber) != 0 {
			t.Fatalf("%s: served serial %x, want %x", st.name, got.SerialNumber, st.served.SerialNumber)
		}
		if got := l.since(n); !slices.Equal(got, st.log) {
			t.Fatalf("%s: log\n got: %q\nwant: %q", st.name, got, st.log)
		}
	}
}

// TestWebReloadServesFetchers: after a reload, a Web PKI fetcher verifies
// the new certificate (here, from a new root the client now trusts).
func TestWebReloadServesFetchers(t *testing.T) {
	p, q := newPKI(t), newPKI(t)
	want := p.bundle(t, 3)
	dir := t.TempDir()
	chain, key := p.leaf(t, pki.ECP256)
	certFile, keyFile := writePair(t, dir, chain, key)
	clk := newClock()
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: want}, Profile: bundleendpoint.ProfileWeb,
		CertFile: certFile, KeyFile: keyFile, Clock: clk.Now})

	chainQ, keyQ := q.leaf(t, pki.ECP256)
	writePair(t, dir, chainQ, keyQ)
	clk.advance(time.Second)
	got, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithWebPKIRoots(q.pool()))
	if err != nil {
		t.Fatalf("fetch trusting the new certificate's root: %v", err)
	}
	if !got.Equal(want) {
		t.Errorf("fetched bundle differs from the served one")
	}
}
