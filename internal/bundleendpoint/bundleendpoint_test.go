package bundleendpoint_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundleendpoint"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

func TestNewRefusesBadConfig(t *testing.T) {
	p := newPKI(t)
	src := &bundleSource{bundle: p.bundle(t, 1)}
	svids := newSVIDSource(p.svid(t, endpointID))
	dir := t.TempDir()
	chain, key := p.leaf(t, pki.ECP256)
	certFile, keyFile := writePair(t, dir, chain, key)
	_, otherKey := p.leaf(t, pki.ECP256)
	_, otherKeyFile := writePair(t, t.TempDir(), chain, otherKey)
	missing := filepath.Join(dir, "missing.pem")

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyAddr := busy.Addr().String()

	tests := []struct {
		name string
		cfg  bundleendpoint.Config
		want string
	}{
		{"no trust domain", bundleendpoint.Config{Addr: "127.0.0.1:0", Bundles: src, SVIDSource: svids},
			"bundleendpoint: a trust domain is required"},
		{"no bundle source", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, SVIDSource: svids},
			"bundleendpoint: a bundle source is required"},
		{"unknown profile", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: "https"},
			`bundleendpoint: unknown profile "https"; use https_spiffe or https_web`},
		{"spiffe without SVID source", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src},
			"bundleendpoint: profile https_spiffe needs an SVID source"},
		{"spiffe with files", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, SVIDSource: svids, CertFile: certFile, KeyFile: keyFile},
			"bundleendpoint: profile https_spiffe presents the server's SVID; certificate and key files are for https_web"},
		{"web without key file", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: certFile},
			"bundleendpoint: profile https_web needs a certificate file and a key file"},
		{"web with SVID source", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile, SVIDSource: svids},
			"bundleendpoint: profile https_web presents the certificate from files; an SVID source is for https_spiffe"},
		{"web cert file missing", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: missing, KeyFile: keyFile},
			"bundleendpoint: https_web certificate: pemfile: open " + missing + ": no such file or directory"},
		{"web key of another certificate", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: otherKeyFile},
			"bundleendpoint: https_web certificate: the key in " + otherKeyFile + " does not belong to the first certificate in " + certFile + "; put the server certificate first and give its own key"},
		{"web certificate expired", bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile,
			Clock: func() time.Time { return chain[0].NotAfter.Add(time.Second) }},
			"bundleendpoint: https_web certificate: the certificate in " + certFile + " expired at " + chain[0].NotAfter.UTC().Format(time.RFC3339) + "; issue a new one"},
		{"address and listener", bundleendpoint.Config{Addr: "127.0.0.1:0", Listener: busy, TrustDomain: east, Bundles: src, SVIDSource: svids},
			"bundleendpoint: give a listen address or a listener, not both"},
		{"no address", bundleendpoint.Config{TrustDomain: east, Bundles: src, SVIDSource: svids},
			"bundleendpoint: a listen address is required"},
		{"address in use", bundleendpoint.Config{Addr: busyAddr, TrustDomain: east, Bundles: src, SVIDSource: svids},
			"bundleendpoint: listen tcp " + busyAddr + ": bind: address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bundleendpoint.New(tt.cfg)
			if err == nil {
				s.Run(canceled())
				t.Fatalf("New succeeded, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Fatalf("New error\n got: %s\nwant: %s", err, tt.want)
			}
		})
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestSPIFFEProfileFetch fetches with go-spiffe's own federation client, as a
// foreign trust domain would.
func TestSPIFFEProfileFetch(t *testing.T) {
	p := newPKI(t)
	want := p.bundle(t, 7)
	src := &bundleSource{bundle: want}
	s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID))})

	got, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithSPIFFEAuth(want, endpointID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Errorf("fetched bundle differs from the served one\n got: %s\nwant: %s", marshal(t, got), marshal(t, want))
	}
	if seq, ok := got.SequenceNumber(); !ok || seq != 7 {
		t.Errorf("spiffe_sequence = %d, %t; want 7, true", seq, ok)
	}
	if hint, ok := got.RefreshHint(); !ok || hint != 5*time.Minute {
		t.Errorf("spiffe_refresh_hint = %s, %t; want 5m0s, true", hint, ok)
	}
	if n := src.callCount(); n != 1 {
		t.Errorf("bundle source called %d times, want 1", n)
	}
}

func TestSPIFFEProfileRefusedByWrongClient(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: b}, SVIDSource: newSVIDSource(p.svid(t, endpointID))})
	other := newPKI(t)

	tests := []struct {
		name    string
		bundle  *spiffebundle.Bundle
		id      spiffeid.ID
		wantErr string
	}{
		{"wrong endpoint SPIFFE ID", b, spiffeid.RequireFromString("spiffe://east.example/someone-else"),
			`unexpected ID "spiffe://east.example/meshfed/bundle-endpoint"`},
		{"bundle of another CA", other.bundle(t, 1), endpointID,
			"x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithSPIFFEAuth(tt.bundle, tt.id))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("FetchBundle error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestSVIDRotation: a new SVID from the source is what the next connection
// gets, with no restart, even for a client that keeps TLS sessions.
func TestSVIDRotation(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	first := p.svid(t, endpointID)
	svids := newSVIDSource(first)
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: b}, SVIDSource: svids})

	client := tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeMemberOf(east))
	client.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	chain, err := handshake(t, s, client)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chain[0].SerialNumber, first.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("first connection: served serial %x, want %x", got, want)
	}

	newID := spiffeid.RequireFromString("spiffe://east.example/meshfed/bundle-endpoint-2")
	second := p.svid(t, newID)
	svids.svid.Store(second)

	chain, err = handshake(t, s, client)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chain[0].SerialNumber, second.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("after rotation: served serial %x, want the new SVID's %x", got, want)
	}
	if _, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithSPIFFEAuth(b, newID)); err != nil {
		t.Fatalf("fetch expecting the new SVID's ID: %v", err)
	}
	_, err = federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithSPIFFEAuth(b, endpointID))
	if want := `unexpected ID "spiffe://east.example/meshfed/bundle-endpoint-2"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("fetch expecting the old SVID's ID: error = %v, want one containing %q", err, want)
	}
}

func TestSVIDSourceFailure(t *testing.T) {
	p := newPKI(t)
	var l logs
	svids := newSVIDSource(p.svid(t, endpointID))
	s := start(t, bundleendpoint.Config{Bundles: &bundleSource{bundle: p.bundle(t, 1)}, SVIDSource: svids, Logger: l.logger()})
	client := &tls.Config{InsecureSkipVerify: true} // which certificate, if any, is served is the question

	svids.fail(errors.New("workloadapi: no SVID yet"))
	for range 2 {
		if _, err := handshake(t, s, client); err == nil || err.Error() != "remote error: tls: internal error" {
			t.Fatalf("handshake while the source fails: error = %v, want remote error: tls: internal error", err)
		}
	}
	svids.recover()
	if _, err := handshake(t, s, client); err != nil {
		t.Fatalf("handshake after recovery: %v", err)
	}
	want := []string{
		"ERROR bundle endpoint: no SVID to present; TLS handshakes fail until there is one error=workloadapi: no SVID yet",
		"INFO bundle endpoint: presenting an SVID again spiffe_id=spiffe://east.example/meshfed/bundle-endpoint",
	}
	if got := l.since(0); !slices.Equal(got, want) {
		t.Errorf("log\n got: %q\nwant: %q", got, want)
	}
}

// httpClient trusts east.example's bundle and checks the endpoint's ID, as
// go-spiffe's federation client does, but shows the HTTP response.
func httpClient(t testing.TB, b *spiffebundle.Bundle) *http.Client {
	tr := &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(b, tlsconfig.AuthorizeID(endpointID))}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type response struct {
	code   int
	header http.Header
	body   string
	err    error
}

// get makes one request; it may run outside the test's goroutine.
func get(c *http.Client, method, u string) response {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return response{err: err}
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: string(body), err: err}
}

func do(t testing.TB, c *http.Client, method, u string) response {
	t.Helper()
	r := get(c, method, u)
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r
}

func TestMethodsAndPaths(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	src := &bundleSource{bundle: b}
	s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID))})
	c := httpClient(t, b)
	body := string(marshal(t, b))

	tests := []struct {
		method, path string
		code         int
		contentType  string
		allow        string
		body         string
	}{
		{"GET", "/", 200, "application/json", "", body},
		{"GET", "/?refresh=1", 200, "application/json", "", body},
		{"HEAD", "/", 200, "application/json", "", ""},
		{"POST", "/", 405, "text/plain; charset=utf-8", "GET, HEAD", "method not allowed\n"},
		{"PUT", "/", 405, "text/plain; charset=utf-8", "GET, HEAD", "method not allowed\n"},
		{"DELETE", "/", 405, "text/plain; charset=utf-8", "GET, HEAD", "method not allowed\n"},
		{"GET", "/other", 404, "text/plain; charset=utf-8", "", "not found\n"},
		{"GET", "/bundle.json", 404, "text/plain; charset=utf-8", "", "not found\n"},
		{"POST", "/other", 404, "text/plain; charset=utf-8", "", "not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := do(t, c, tt.method, url(s, tt.path))
			if r.code != tt.code || r.header.Get("Content-Type") != tt.contentType || r.header.Get("Allow") != tt.allow || r.body != tt.body {
				t.Errorf("got %d Content-Type=%q Allow=%q body=%q\nwant %d Content-Type=%q Allow=%q body=%q",
					r.code, r.header.Get("Content-Type"), r.header.Get("Allow"), r.body, tt.code, tt.contentType, tt.allow, tt.body)
			}
			if tt.method == "HEAD" {
				if got, want := r.header.Get("Content-Length"), strconv.Itoa(len(body)); got != want {
					t.Errorf("HEAD Content-Length = %q, want %q (the GET body's length)", got, want)
				}
			}
		})
	}
	if got, want := s.Requests(), map[int]uint64{200: 3, 404: 3, 405: 3}; !maps.Equal(got, want) {
		t.Errorf("Requests() = %v, want %v", got, want)
	}
	if n := src.callCount(); n != 3 {
		t.Errorf("bundle source called %d times, want 3 (once per GET or HEAD of /)", n)
	}
}

// TestBundleReadPerRequest: the source is asked on every request, so a new
// bundle (a sequence bump after a rotation) is served at once.
func TestBundleReadPerRequest(t *testing.T) {
	p := newPKI(t)
	b7, b8 := p.bundle(t, 7), p.bundle(t, 8)
	src := &bundleSource{bundle: b7}
	s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID))})
	for _, want := range []*spiffebundle.Bundle{b7, b8, b7} {
		src.set(want, nil)
		got, err := federation.FetchBundle(context.Background(), east, url(s, "/"), federation.WithSPIFFEAuth(b7, endpointID))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(want) {
			t.Fatalf("fetched\n%s\nwant\n%s", marshal(t, got), marshal(t, want))
		}
	}
}

func TestBundleSourceFailure(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	west := spiffeid.RequireTrustDomainFromString("west.example")
	westBundle := spiffebundle.FromX509Authorities(west, b.X509Authorities())

	tests := []struct {
		name    string
		bundle  *spiffebundle.Bundle
		err     error
		wantLog string
	}{
		{"source error", nil, errStore,
			"ERROR bundle endpoint: cannot get this trust domain's bundle; answering 503 until it can trust_domain=east.example error=store: database is locked"},
		{"bundle of another trust domain", westBundle, nil,
			`ERROR bundle endpoint: cannot get this trust domain's bundle; answering 503 until it can trust_domain=east.example error=the bundle source returned the bundle of "west.example"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l logs
			src := &bundleSource{}
			s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID)), Logger: l.logger()})
			c := httpClient(t, b)

			src.set(tt.bundle, tt.err)
			for range 2 {
				r := do(t, c, "GET", url(s, "/"))
				if r.code != 503 || r.body != "bundle unavailable\n" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
					t.Fatalf("got %d %q %q, want 503 \"bundle unavailable\\n\" text/plain", r.code, r.header.Get("Content-Type"), r.body)
				}
			}
			src.set(b, nil)
			if r := do(t, c, "GET", url(s, "/")); r.code != 200 || r.body != string(marshal(t, b)) {
				t.Fatalf("after recovery: got %d %q, want 200 and the bundle", r.code, r.body)
			}
			want := []string{tt.wantLog, "INFO bundle endpoint: serving the bundle again trust_domain=east.example"}
			if got := l.since(0); !slices.Equal(got, want) {
				t.Errorf("log\n got: %q\nwant: %q", got, want)
			}
			if got, want := s.Requests(), map[int]uint64{200: 1, 503: 2}; !maps.Equal(got, want) {
				t.Errorf("Requests() = %v, want %v", got, want)
			}
		})
	}
}

// TestLargeHeaderRefused: a header block over the bound gets 431 from
// net/http before the handler runs.
func TestLargeHeaderRefused(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	src := &bundleSource{bundle: b}
	s := start(t, bundleendpoint.Config{Bundles: src, SVIDSource: newSVIDSource(p.svid(t, endpointID))})
	c := httpClient(t, b)
	req, err := http.NewRequest("GET", url(s, "/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("a", 64<<10))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", resp.StatusCode)
	}
	if n := src.callCount(); n != 0 {
		t.Errorf("bundle source called %d times, want 0", n)
	}
}

// TestTLSParameters: TLS 1.2 and up, the mesh's cipher suites and no
// others, and no client certificate requested.
func TestTLSParameters(t *testing.T) {
	p := newPKI(t)
	src := &bundleSource{bundle: p.bundle(t, 1)}
	servers := map[pki.KeyType]*bundleendpoint.Server{}
	for _, kt := range []pki.KeyType{pki.ECP256, pki.RSA2048} {
		chain, key := p.leaf(t, kt)
		certFile, keyFile := writePair(t, t.TempDir(), chain, key)
		servers[kt] = start(t, bundleendpoint.Config{Bundles: src, Profile: bundleendpoint.ProfileWeb, CertFile: certFile, KeyFile: keyFile})
	}

	tls12 := func(suite uint16) *tls.Config {
		return &tls.Config{RootCAs: p.pool(), MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}}
	}
	tests := []struct {
		name    string
		key     pki.KeyType
		conf    *tls.Config
		version uint16
		suite   uint16
		wantErr string
	}{
		{"TLS 1.3", pki.ECP256, &tls.Config{RootCAs: p.pool()}, tls.VersionTLS13, 0, ""}, // Go picks the TLS 1.3 suite
		{"ECDHE-ECDSA-AES256-GCM-SHA384", pki.ECP256, tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384), tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, ""},
		{"ECDHE-ECDSA-AES128-GCM-SHA256", pki.ECP256, tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ""},
		{"ECDHE-RSA-AES256-GCM-SHA384", pki.RSA2048, tls12(tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384), tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, ""},
		{"ECDHE-RSA-AES128-GCM-SHA256", pki.RSA2048, tls12(tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ""},
		{"AES256-GCM-SHA384", pki.RSA2048, tls12(tls.TLS_RSA_WITH_AES_256_GCM_SHA384), tls.VersionTLS12, tls.TLS_RSA_WITH_AES_256_GCM_SHA384, ""},
		{"AES128-GCM-SHA256", pki.RSA2048, tls12(tls.TLS_RSA_WITH_AES_128_GCM_SHA256), tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, ""},
		{"ECDHE-RSA-CHACHA20 refused", pki.RSA2048, tls12(tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256), 0, 0, "remote error: tls: handshake failure"},
		{"ECDHE-ECDSA-AES128-CBC refused", pki.ECP256, tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA), 0, 0, "remote error: tls: handshake failure"},
		{"AES128-CBC refused", pki.RSA2048, tls12(tls.TLS_RSA_WITH_AES_128_CBC_SHA), 0, 0, "remote error: tls: handshake failure"},
		{"TLS 1.1 refused", pki.ECP256, &tls.Config{RootCAs: p.pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, 0, 0, "remote error: tls: protocol version not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asked := false
			tt.conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked = true
				return &tls.Certificate{}, nil
			}
			conn, err := tls.Dial("tcp", servers[tt.key].Addr().String(), tt.conf)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("handshake error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			st := conn.ConnectionState()
			if st.Version != tt.version || (tt.suite != 0 && st.CipherSuite != tt.suite) {
				t.Errorf("negotiated %s %s, want %s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), tls.VersionName(tt.version), tls.CipherSuiteName(tt.suite))
			}
			if asked {
				t.Error("the server asked for a client certificate")
			}
		})
	}
}

// failingListener fails every Accept, as a listener whose socket broke.
type failingListener struct{ net.Listener }

func (l failingListener) Accept() (net.Conn, error) { return nil, errors.New("accept: socket broke") }

func TestRunReturnsServeError(t *testing.T) {
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := bundleendpoint.New(bundleendpoint.Config{Listener: failingListener{ln}, TrustDomain: east,
		Bundles: &bundleSource{bundle: p.bundle(t, 1)}, SVIDSource: newSVIDSource(p.svid(t, endpointID))})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background())
	if want := "bundleendpoint: serve: accept: socket broke"; err == nil || err.Error() != want {
		t.Fatalf("Run error = %v, want %q", err, want)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on the listener after Run: %v, want it closed", err)
	}
	if err := s.Run(context.Background()); err == nil || err.Error() != "bundleendpoint: Run called twice; make a new Server" {
		t.Errorf("second Run error = %v", err)
	}
}

// TestRunStopsOnCancel: a request in flight when the context is cancelled
// is answered, Run returns nil, and the address is released.
func TestRunStopsOnCancel(t *testing.T) {
	p := newPKI(t)
	b := p.bundle(t, 7)
	src := &bundleSource{bundle: b, entered: make(chan struct{}), release: make(chan struct{})}
	var l logs
	s, err := bundleendpoint.New(bundleendpoint.Config{Addr: "127.0.0.1:0", TrustDomain: east, Bundles: src,
		SVIDSource: newSVIDSource(p.svid(t, endpointID)), Logger: l.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()

	answered := make(chan response, 1)
	c := httpClient(t, b)
	go func() { answered <- get(c, "GET", url(s, "/")) }()
	<-src.entered // the request is in the handler
	cancel()
	close(src.release)

	if r := <-answered; r.err != nil || r.code != 200 || r.body != string(marshal(t, b)) {
		t.Errorf("request in flight at shutdown: got %d %q (error %v), want 200 and the bundle", r.code, r.body, r.err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if conn, err := net.Dial("tcp", s.Addr().String()); err == nil {
		conn.Close()
		t.Error("the address still accepts connections after Run returned")
	}
	want := []string{"INFO bundle endpoint serving addr=" + s.Addr().String() + " profile=https_spiffe trust_domain=east.example"}
	if l.mu.Lock(); !slices.Equal(l.serving, want) {
		t.Errorf("log\n got: %q\nwant: %q", l.serving, want)
	}
	l.mu.Unlock()
}
