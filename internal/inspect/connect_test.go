package inspect

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var tls13Suites = []string{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

// peerIDs lists the SPIFFE ID inspect reads from each certificate a server
// sent.
func peerIDs(chain []*x509.Certificate) []string {
	var ids []string
	for _, c := range Describe(chain, t0) {
		ids = append(ids, c.SPIFFEID)
	}
	return ids
}

// serveOnce accepts one TLS connection on a new 127.0.0.1 listener, completes
// the handshake and reports the client's SPIFFE ID (or the handshake error).
func serveOnce(t *testing.T, conf *tls.Config) (addr string, client <-chan string) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			seen <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			seen <- "handshake: " + err.Error()
			return
		}
		peers := tc.ConnectionState().PeerCertificates
		if len(peers) == 0 {
			seen <- "no client certificate"
			return
		}
		seen <- Describe(peers, t0)[0].SPIFFEID
	}()
	return ln.Addr().String(), seen
}

func TestConnectGoServer(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	certFile := writeCerts(t, dir, "product.pem", p.westSVID...)
	keyFile := writeKey(t, dir, "product-key.pem", p.westSVIDKey)
	clientCert, err := LoadClientCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.root)
	trust := &Trust{Source: "bundle.pem", Roots: []*x509.Certificate{p.root}}

	t.Run("mTLS with a client SVID", func(t *testing.T) {
		addr, seen := serveOnce(t, &tls.Config{
			Certificates: []tls.Certificate{tlsCert(p.svid, p.svidKey)},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    roots,
			NextProtos:   []string{"h2", "http/1.1"},
		})
		conn, err := Connect(context.Background(), ConnectConfig{
			Address:           addr,
			ServerName:        "reviews.east.example",
			ClientCertificate: clientCert,
			NextProtos:        []string{"h2"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := <-seen; got != productID.String() {
			t.Errorf("server saw client %q, want %s", got, productID)
		}
		if got, want := peerIDs(conn.PeerChain), []string{reviewsID.String(), "spiffe://east.example"}; !reflect.DeepEqual(got, want) {
			t.Errorf("peer chain IDs = %q, want %q", got, want)
		}
		if !slices.Contains(tls13Suites, conn.CipherSuite) {
			t.Errorf("cipher suite %q is not a TLS 1.3 suite", conn.CipherSuite)
		}
		got := *conn
		got.PeerChain, got.CipherSuite = nil, ""
		want := Connection{
			Address:           addr,
			ServerName:        "reviews.east.example",
			Version:           "TLS 1.3",
			ALPN:              "h2",
			ClientCertificate: ClientCertSent,
			ClientID:          productID.String(),
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("connection:\n got %+v\nwant %+v", got, want)
		}
		if v := Verify(conn.PeerChain, trust, VerifyOptions{Now: t0}); !v.OK() || v.SPIFFEID != reviewsID.String() {
			t.Errorf("verdict = %+v, want OK for %s", v, reviewsID)
		}
	})

	t.Run("plain TLS server, client certificate requested but none configured", func(t *testing.T) {
		addr, seen := serveOnce(t, &tls.Config{
			Certificates: []tls.Certificate{tlsCert(p.tlsLeaf, p.tlsLeafKey)},
			ClientAuth:   tls.RequestClientCert,
		})
		conn, err := Connect(context.Background(), ConnectConfig{Address: addr})
		if err != nil {
			t.Fatal(err)
		}
		if got := <-seen; got != "no client certificate" {
			t.Errorf("server saw %q", got)
		}
		if got, want := peerIDs(conn.PeerChain), []string{"", ""}; !reflect.DeepEqual(got, want) {
			t.Errorf("peer chain IDs = %q, want %q", got, want)
		}
		if conn.ServerName != "" || conn.ClientCertificate != ClientCertNoneSent || conn.ALPN != "" || conn.Resumed {
			t.Errorf("connection = %+v, want no SNI for an IP, %q, no ALPN, not resumed", conn, ClientCertNoneSent)
		}
		want := Verdict{Status: StatusOK, Method: MethodX509, Against: "bundle.pem", ServerName: "127.0.0.1",
			Chain: []string{"CN=localhost", rootName}}
		if v := Verify(conn.PeerChain, trust, VerifyOptions{Now: t0, ServerName: "127.0.0.1"}); !reflect.DeepEqual(v, want) {
			t.Errorf("verdict:\n got %+v\nwant %+v", v, want)
		}
	})
}

func TestConnectErrors(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	certFile := writeCerts(t, dir, "product.pem", p.westSVID...)
	otherKey := writeKey(t, dir, "other-key.pem", mustKey(t))

	// A port nobody listens on: bind one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	// A server that accepts TCP and never speaks TLS.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // kept open, silent, until the listener closes
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()

	t.Run("refused", func(t *testing.T) {
		_, err := Connect(context.Background(), ConnectConfig{Address: closed})
		want := "inspect: connect " + closed + ": dial tcp " + closed + ": connect: connection refused"
		if err == nil || err.Error() != want {
			t.Errorf("error = %v, want %s", err, want)
		}
	})
	t.Run("handshake times out", func(t *testing.T) {
		_, err := Connect(context.Background(), ConnectConfig{Address: silent.Addr().String(), Timeout: 50 * time.Millisecond})
		if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "inspect: connect "+silent.Addr().String()+": ") {
			t.Errorf("error = %v, want the deadline named under inspect: connect", err)
		}
	})
	t.Run("not HOST:PORT", func(t *testing.T) {
		_, err := Connect(context.Background(), ConnectConfig{Address: "reviews.east.example"})
		want := `inspect: "reviews.east.example" is not HOST:PORT: address reviews.east.example: missing port in address`
		if err == nil || err.Error() != want {
			t.Errorf("error = %v, want %s", err, want)
		}
	})
	t.Run("key of another certificate", func(t *testing.T) {
		_, err := LoadClientCertificate(certFile, otherKey)
		want := "inspect: the private key in " + otherKey + " does not belong to the certificate in " + certFile
		if err == nil || err.Error() != want {
			t.Errorf("error = %v, want %s", err, want)
		}
	})
}

// TestConnectOpenSSL connects to a real openssl s_server serving the SVID
// chain, so the peer chain is read from another TLS stack's wire format.
func TestConnectOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is not on PATH (%v): run ./scripts/test, which installs it", err)
	}
	p := newTestPKI(t)
	dir := t.TempDir()
	cmd := exec.Command(openssl, "s_server",
		"-accept", "127.0.0.1:0",
		"-cert", writeCerts(t, dir, "leaf.pem", p.svid[0]),
		"-cert_chain", writeCerts(t, dir, "chain.pem", p.svid[1:]...),
		"-key", writeKey(t, dir, "key.pem", p.svidKey),
		"-alpn", "h2",
		"-naccept", "1")
	stdin, err := cmd.StdinPipe() // held open: s_server stops at EOF on stdin
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-drained
		cmd.Wait()
	})

	// s_server prints "ACCEPT 127.0.0.1:PORT" once it listens.
	accept := make(chan string, 1)
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
				accept <- a
				break
			}
		}
		close(accept)
		io.Copy(io.Discard, stdout)
	}()
	var addr string
	select {
	case addr = <-accept:
	case <-time.After(10 * time.Second):
	}
	if addr == "" {
		t.Fatalf("openssl s_server did not start listening; stderr:\n%s", stderr.String())
	}

	conn, err := Connect(context.Background(), ConnectConfig{Address: addr, ServerName: "reviews.east.example", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := peerIDs(conn.PeerChain), []string{reviewsID.String(), "spiffe://east.example"}; !reflect.DeepEqual(got, want) {
		t.Errorf("peer chain IDs = %q, want %q", got, want)
	}
	if conn.Version != "TLS 1.3" || conn.ALPN != "h2" || conn.ClientCertificate != ClientCertNotRequested {
		t.Errorf("connection = %+v, want TLS 1.3, ALPN h2, no client certificate requested", conn)
	}
	tests := []struct {
		name string
		td   spiffeid.TrustDomain
		want Verdict
	}{
		{name: "own trust domain", td: east, want: Verdict{
			Status: StatusOK, Method: MethodSVID, Against: "bundle.pem", SPIFFEID: reviewsID.String(), TrustDomain: "east.example",
			Chain: []string{reviewsID.String(), eastCAName, rootName},
		}},
		{name: "another trust domain's bundle", td: west, want: Verdict{
			Status: StatusFailed, Method: MethodSVID, Against: "bundle.pem", SPIFFEID: reviewsID.String(), TrustDomain: "east.example",
			Reason: `the leaf spiffe://east.example/ns/default/sa/reviews is in trust domain "east.example" but bundle.pem is the bundle of trust domain "west.example"; verify a peer only with its own trust domain's bundle`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trust := &Trust{Source: "bundle.pem", TrustDomain: tt.td, Roots: []*x509.Certificate{p.root}}
			if got := Verify(conn.PeerChain, trust, VerifyOptions{Now: t0}); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("verdict:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
