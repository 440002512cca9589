package proxy_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"crypto/x509/pkix"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// chunkConn is a net.Conn that returns data a few bytes per Read, as a slow
// peer would, then EOF. Deadlines are accepted and ignored.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.chunk, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) SetReadDeadline(time.Time) error { return nil }

func TestSniff(t *testing.T) {
	clientHello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}
	tests := []struct {
		name  string
		data  []byte
		isTLS bool
	}{
		{"ClientHello", clientHello, true},
		{"ClientHello record version 3.3", []byte{0x16, 0x03, 0x03, 0x00, 0x80, 0x01, 0xff}, true},
		{"HTTP/1.1", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
		{"HTTP/2 preface", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), false},
		{"handshake but ServerHello", []byte{0x16, 0x03, 0x03, 0x00, 0x80, 0x02}, false},
		{"record version 2.0", []byte{0x16, 0x02, 0x00, 0x00, 0x80, 0x01}, false},
		{"record version 3.5", []byte{0x16, 0x03, 0x05, 0x00, 0x80, 0x01}, false},
		{"zero length", []byte{0x16, 0x03, 0x01, 0x00, 0x00, 0x01}, false},
		{"oversized record", []byte{0x16, 0x03, 0x01, 0x48, 0x01, 0x01}, false},
		{"application data record", []byte{0x17, 0x03, 0x03, 0x00, 0x10}, false},
		{"SSLv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, false},
		{"one byte 0x16 then EOF", []byte{0x16}, true},
		{"one byte 'G' then EOF", []byte("G"), false},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 2, 64} {
			c := &chunkConn{data: append([]byte(nil), tt.data...), chunk: chunk}
			isTLS, wrapped, err := proxy.Sniff(c, time.Second)
			if err != nil {
				t.Errorf("%s/chunk %d: %v", tt.name, chunk, err)
				continue
			}
			if isTLS != tt.isTLS {
				t.Errorf("%s/chunk %d: isTLS %v, want %v", tt.name, chunk, isTLS, tt.isTLS)
			}
			all, err := io.ReadAll(wrapped)
			if err != nil || !bytes.Equal(all, tt.data) {
				t.Errorf("%s/chunk %d: replayed %q (%v), want %q", tt.name, chunk, all, err, tt.data)
			}
		}
	}
}

func TestSniffSilentPeerIsPlaintext(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	start := time.Now()
	isTLS, wrapped, err := proxy.Sniff(a, 50*time.Millisecond)
	if err != nil || isTLS {
		t.Fatalf("silent peer: isTLS %v, err %v; want plaintext, nil", isTLS, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Sniff took %s", d)
	}
	// The deadline was cleared: a later write arrives intact.
	go func() { _, _ = b.Write([]byte("220 smtp ready")) }()
	buf := make([]byte, 14)
	if _, err := io.ReadFull(wrapped, buf); err != nil || string(buf) != "220 smtp ready" {
		t.Fatalf("read after sniff: %q, %v", buf, err)
	}
}

func TestSniffClosedBeforeAnyByte(t *testing.T) {
	c := &chunkConn{chunk: 1}
	_, _, err := proxy.Sniff(c, time.Second)
	if err == nil || err.Error() != "proxy: sniff: nothing read: EOF" {
		t.Fatalf("got %v", err)
	}
}

// TestSniffThenServe is permissive mode end to end: one listener, a TLS client
// and a plaintext client, each served on its own path.
func TestSniffThenServe(t *testing.T) {
	w := newWorld(t, pki.ECP256)
	server := proxy.ServerTLS(w.source(w.caA.svid(t, idBackend, pki.ECP256, 2, pkix.Name{})), tlsconfig.AuthorizeAny())
	addr := serve(t, nil, func(c net.Conn) {
		isTLS, wrapped, err := proxy.Sniff(c, time.Second)
		if err != nil {
			return
		}
		reply := "plain"
		if isTLS {
			tc := tls.Server(wrapped, server)
			if tc.Handshake() != nil {
				return
			}
			wrapped, reply = tc, "tls"
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(wrapped, buf); err == nil {
			_, _ = wrapped.Write(append(buf, " "+reply...))
		}
	})
	roundTrip := func(c net.Conn) string {
		t.Helper()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(c)
		return string(b)
	}
	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(plain); got != "ping plain" {
		t.Errorf("plaintext client got %q", got)
	}
	client := proxy.ClientTLS(w.source(w.caA.svid(t, idFrontend, pki.ECP256, 3, pkix.Name{})), tlsconfig.AuthorizeAny())
	tc, err := tls.Dial("tcp", addr, client)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(tc); got != "ping tls" {
		t.Errorf("TLS client got %q", got)
	}
}
