package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// pipeChunk is the size of each write of the bulk benchmarks.
const pipeChunk = 64 << 10

// BenchmarkPipe measures a bulk stream through an outbound and an inbound
// sidecar in one process (app → outbound → mTLS → inbound → app, all on
// loopback TCP), and, as the ceiling, the same stream over one direct TLS
// connection with the same SVIDs and ServerTLS/ClientTLS. MB/s is what to
// compare; both run in one process, so the proxied figure also pays for
// the two extra loopback hops the app's side of each proxy adds.
func BenchmarkPipe(b *testing.B) {
	p := newPipeWorld(b)
	b.Run("direct", func(b *testing.B) { benchBulk(b, p.dialDirect) })
	b.Run("proxy", func(b *testing.B) { benchBulk(b, p.dialProxy) })
}

// BenchmarkPingPong measures the round trip of a 64-byte message, one
// outstanding, over one persistent connection through both sidecars and,
// as the ceiling, over one direct TLS connection; ns/op is the round trip.
func BenchmarkPingPong(b *testing.B) {
	p := newPipeWorld(b)
	b.Run("direct", func(b *testing.B) { benchPingPong(b, p.dialDirect) })
	b.Run("proxy", func(b *testing.B) { benchPingPong(b, p.dialProxy) })
}

// BenchmarkNewConns measures new connections, each exchanging one byte
// and closing, one at a time: through both sidecars (the outbound one
// resumes its TLS session with the inbound one after the first), and, as
// ceilings, direct TLS with the same configurations, resumed (the same
// client session cache) and full handshakes (no cache).
func BenchmarkNewConns(b *testing.B) {
	p := newPipeWorld(b)
	full := p.clientTLS.Clone()
	full.ClientSessionCache = nil
	dialFull := func() (net.Conn, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: waitBudget}, Config: full}
		return d.Dial("tcp", p.directAddr)
	}
	for _, bc := range []struct {
		name string
		dial func() (net.Conn, error)
	}{{"direct-full", dialFull}, {"direct-resumed", p.dialDirect}, {"proxy", p.dialProxy}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := bc.dial()
				if err != nil {
					b.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(waitBudget))
				var one [1]byte
				if _, err := c.Write([]byte{'E', 'x'}); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}

// BenchmarkIdleConns measures the memory an idle connection holds: heap and
// goroutine stacks in use after a GC, per connection, with 500 connections
// open that each exchanged 64 bytes. plain is the app and its client alone
// (plaintext, direct); direct-tls adds both ends' TLS; proxy adds both
// sidecars (plaintext to and from them). The metric is the growth per
// connection over plain: what TLS costs an app, and what the two sidecars
// together cost.
func BenchmarkIdleConns(b *testing.B) {
	const n = 500
	p := newPipeWorld(b)
	app := func() (net.Conn, error) { return net.DialTimeout("tcp", p.appAddr, waitBudget) }
	measure := func(b *testing.B, dial func() (net.Conn, error)) float64 {
		var perConn float64
		for b.Loop() {
			before := liveBytes()
			var conns []net.Conn
			for range n {
				c, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, c)
				if _, err := c.Write([]byte{'E'}); err != nil {
					b.Fatal(err)
				}
				if err := roundTrip(c, make([]byte, 64)); err != nil {
					b.Fatal(err)
				}
			}
			// Let every goroutine of the connections settle into its read.
			time.Sleep(100 * time.Millisecond)
			perConn = float64(liveBytes()-before) / n
			for _, c := range conns {
				c.Close()
			}
		}
		return perConn
	}
	var plain float64
	b.Run("plain", func(b *testing.B) {
		plain = measure(b, app)
		b.ReportMetric(plain, "B/conn")
	})
	b.Run("direct-tls", func(b *testing.B) { b.ReportMetric(measure(b, p.dialDirect)-plain, "B/conn-over-plain") })
	b.Run("proxy", func(b *testing.B) { b.ReportMetric(measure(b, p.dialProxy)-plain, "B/conn-over-plain") })
}

func liveBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// pipeWorld is an app, a direct mTLS listener in front of the same app
// handler, and two sidecars: the client's (outbound) and the server's
// (inbound, PERMISSIVE: no policy), each with a Source of its own SVID.
type pipeWorld struct {
	appAddr, directAddr, outboundAddr string
	clientTLS                         *tls.Config
}

func newPipeWorld(b testing.TB) *pipeWorld {
	b.Helper()
	w := newWorld(b, pki.ECP256)
	serverSrc := w.source(w.caA.svid(b, idBackend, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(b, idFrontend, pki.ECP256, 3, pkix.Name{}))

	app := pipeListen(b, nil)
	inbound := startPipeSidecar(b, proxy.Config{Source: serverSrc,
		Inbound: []proxy.InboundConfig{{Name: "in", Listen: "127.0.0.1:0", ForwardTo: app, AllowedIDs: []string{idFrontend}}}})
	outbound := startPipeSidecar(b, proxy.Config{Source: clientSrc,
		Outbound: []proxy.OutboundConfig{{Name: "out", Listen: "127.0.0.1:0", Service: "backend", Upstream: inbound, AllowedIDs: []string{idBackend}}}})
	client := proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeID(mustID(idBackend)))
	client.ServerName = "backend"
	return &pipeWorld{
		appAddr:      app,
		directAddr:   pipeListen(b, proxy.ServerTLS(serverSrc, tlsconfig.AuthorizeID(mustID(idFrontend)))),
		outboundAddr: outbound,
		clientTLS:    client,
	}
}

func (p *pipeWorld) dialDirect() (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: waitBudget}, Config: p.clientTLS}
	return d.Dial("tcp", p.directAddr)
}

func (p *pipeWorld) dialProxy() (net.Conn, error) {
	return net.DialTimeout("tcp", p.outboundAddr, waitBudget)
}

// startPipeSidecar runs a sidecar with one listener until the benchmark
// ends and returns that listener's address.
func startPipeSidecar(b testing.TB, cfg proxy.Config) string {
	b.Helper()
	s, err := proxy.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	return s.Listeners()[0].Addr
}

// pipeListen serves the app on loopback, over TLS if cfg is set: each
// connection's first byte picks sink ('S': read to EOF, answer the count,
// 8 bytes big endian) or echo ('E').
func pipeListen(b testing.TB, cfg *tls.Config) string {
	b.Helper()
	return serve(b, cfg, func(c net.Conn) {
		var mode [1]byte
		if _, err := io.ReadFull(c, mode[:]); err != nil {
			return
		}
		buf := make([]byte, pipeChunk)
		var n uint64
		for {
			nr, err := c.Read(buf)
			n += uint64(nr)
			if mode[0] == 'E' && nr > 0 {
				if _, err := c.Write(buf[:nr]); err != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
		if mode[0] == 'S' {
			_, _ = c.Write(binary.BigEndian.AppendUint64(nil, n))
		}
	})
}

func benchBulk(b *testing.B, dial func() (net.Conn, error)) {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{'S'}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, pipeChunk)
	b.SetBytes(pipeChunk)
	b.ReportAllocs()
	var sent uint64
	b.ResetTimer()
	for range b.N {
		n, err := c.Write(buf)
		sent += uint64(n)
		if err != nil {
			b.Fatal(err)
		}
	}
	// The clock covers the stream's arrival at the sink.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitBudget))
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		b.Fatal(err)
	}
	if n := binary.BigEndian.Uint64(got[:]); n != sent {
		b.Fatalf("the sink received %d bytes, %d were sent", n, sent)
	}
}

func benchPingPong(b *testing.B, dial func() (net.Conn, error)) {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{'E'}); err != nil {
		b.Fatal(err)
	}
	out, in := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTPNewConns: one HTTP request per new connection of the app.
// Directly, each is a new mTLS connection (full handshake, or resumed);
// through an HTTP outbound and an HTTP inbound sidecar, the app's
// connection is plaintext to the outbound listener, which sends the request
// over its pool of mTLS connections: no handshake per request.
func BenchmarkHTTPNewConns(b *testing.B) {
	w := newWorld(b, pki.ECP256)
	serverSrc := w.source(w.caA.svid(b, idBackend, pki.ECP256, 2, pkix.Name{}))
	clientSrc := w.source(w.caA.svid(b, idFrontend, pki.ECP256, 3, pkix.Name{}))
	app := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "ok") }), ReadHeaderTimeout: waitBudget}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go app.Serve(appLn)
	b.Cleanup(func() { app.Close() })
	directLn, err := tls.Listen("tcp", "127.0.0.1:0", func() *tls.Config {
		c := proxy.ServerTLS(serverSrc, tlsconfig.AuthorizeID(mustID(idFrontend)))
		c.NextProtos = []string{"http/1.1"}
		return c
	}())
	if err != nil {
		b.Fatal(err)
	}
	direct := &http.Server{Handler: app.Handler, ReadHeaderTimeout: waitBudget}
	go direct.Serve(directLn)
	b.Cleanup(func() { direct.Close() })
	inbound := startPipeSidecar(b, proxy.Config{Source: serverSrc,
		Inbound: []proxy.InboundConfig{{Name: "in", Listen: "127.0.0.1:0", ForwardTo: appLn.Addr().String(), Protocol: proxy.ProtocolHTTP}}})
	outbound := startPipeSidecar(b, proxy.Config{Source: clientSrc,
		Outbound: []proxy.OutboundConfig{{Name: "out", Listen: "127.0.0.1:0", Service: "backend", Upstream: inbound, AllowedIDs: []string{idBackend}, Protocol: proxy.ProtocolHTTP}}})
	clientTLS := func(resume bool) *tls.Config {
		c := proxy.ClientTLS(clientSrc, tlsconfig.AuthorizeID(mustID(idBackend)))
		c.ServerName, c.NextProtos = "backend", []string{"http/1.1"}
		if !resume {
			c.ClientSessionCache = nil
		}
		return c
	}
	for _, bc := range []struct {
		name, url string
		tr        *http.Transport
	}{
		{"direct-full", "https://" + directLn.Addr().String() + "/", &http.Transport{TLSClientConfig: clientTLS(false), DisableKeepAlives: true}},
		{"direct-resumed", "https://" + directLn.Addr().String() + "/", &http.Transport{TLSClientConfig: clientTLS(true), DisableKeepAlives: true}},
		{"proxy", "http://" + outbound + "/", &http.Transport{DisableKeepAlives: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			client := &http.Client{Transport: bc.tr, Timeout: waitBudget}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := client.Get(bc.url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
		})
	}
}
