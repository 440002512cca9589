package attest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/peer"
)

// BenchmarkAttest is the cost of attesting one caller (this process) by pid
// from the real /proc, the standalone path.
func BenchmarkAttest(b *testing.B) {
	a, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	pid, uid, gid := int32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), pid, uid, gid); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttestPeer is the cost of attesting the caller of a request on a
// connection accepted through the transport credentials (this process, over
// a real unix socket): what every Workload API and SDS call pays.
func BenchmarkAttestPeer(b *testing.B) {
	a, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(b.TempDir(), "agent.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	raw, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	conn, info, err := a.TransportCredentials().ServerHandshake(raw)
	if err != nil {
		raw.Close()
		b.Fatal(err)
	}
	defer conn.Close()
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: conn.RemoteAddr(), AuthInfo: info})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.AttestPeer(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
