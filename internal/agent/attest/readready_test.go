package attest

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
)

// countingPool is a mem.BufferPool that counts the buffers out of it.
type countingPool struct {
	mu   sync.Mutex
	out  int
	gets int
}

func (p *countingPool) Get(n int) *[]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out++
	p.gets++
	b := make([]byte, n)
	return &b
}

func (p *countingPool) Put(*[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out--
}

func (p *countingPool) outstanding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out
}

var _ mem.BufferPool = (*countingPool)(nil)

// ReadOnReady reads what arrived into a buffer from the pool, at most size
// bytes at a time, and at the end of the stream gives io.EOF with every
// buffer back in the pool.
func TestReadOnReady(t *testing.T) {
	server, client := unixPair(t)
	pc := newPeerConn(server, &peerState{dir: -1})
	pool := &countingPool{}

	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf, n, err := pc.ReadOnReady(16, pool)
	if err != nil || n != 5 || string((*buf)[:n]) != "hello" || len(*buf) != 16 {
		t.Fatalf("ReadOnReady = %q, %d, %v; want \"hello\", 5, nil from a 16-byte buffer", (*buf)[:n], n, err)
	}
	if got := pool.outstanding(); got != 1 {
		t.Fatalf("%d buffers out of the pool, want the 1 returned", got)
	}
	pool.Put(buf)

	if _, err := client.Write(make([]byte, 40)); err != nil {
		t.Fatal(err)
	}
	client.Close()
	var total int
	for {
		buf, n, err := pc.ReadOnReady(16, pool)
		if errors.Is(err, io.EOF) {
			if buf != nil || n != 0 {
				t.Fatalf("at EOF: a buffer of %d bytes, want none", n)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n > 16 {
			t.Fatalf("read %d bytes into a 16-byte buffer", n)
		}
		total += n
		pool.Put(buf)
	}
	if total != 40 {
		t.Fatalf("read %d bytes before EOF, want 40", total)
	}
	if got := pool.outstanding(); got != 0 {
		t.Fatalf("%d buffers still out of the pool after EOF, want 0", got)
	}
}

// A read deadline or Close ends a waiting read with the connection's own
// errors, and no buffer is kept from the pool.
func TestReadOnReadyDeadlineAndClose(t *testing.T) {
	server, _ := unixPair(t)
	pc := newPeerConn(server, &peerState{dir: -1})
	pool := &countingPool{}

	pc.SetReadDeadline(time.Unix(1, 0))
	if _, _, err := pc.ReadOnReady(16, pool); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past the read deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	pc.SetReadDeadline(time.Time{})
	pc.Close()
	if _, _, err := pc.ReadOnReady(16, pool); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("after Close: %v, want net.ErrClosed", err)
	}
	if got := pool.outstanding(); got != 0 {
		t.Fatalf("%d buffers out of the pool, want 0", got)
	}
}

// recordingCreds passes the handshake to the attestor's credentials and
// keeps the connections they hand gRPC.
type recordingCreds struct {
	credentials.TransportCredentials
	mu    sync.Mutex
	conns []net.Conn
}

func (r *recordingCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := r.TransportCredentials.ServerHandshake(c)
	if err == nil {
		r.mu.Lock()
		r.conns = append(r.conns, conn)
		r.mu.Unlock()
	}
	return conn, info, err
}

// gRPC reads an attested connection through ReadOnReady, with buffers from
// its pool, instead of through a 32 KiB bufio.Reader held for the
// connection's life. Should a gRPC upgrade stop looking for the method,
// this fails.
func TestGRPCReadsAttestedConnOnReady(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	creds := &recordingCreds{TransportCredentials: a.TransportCredentials()}
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	defer srv.Stop()

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop() // gRPC's reader is done with the connection

	creds.mu.Lock()
	defer creds.mu.Unlock()
	if len(creds.conns) != 1 {
		t.Fatalf("%d connections handshaken, want 1", len(creds.conns))
	}
	pc, ok := creds.conns[0].(*peerConn)
	if !ok {
		t.Fatalf("the handshake gave gRPC a %T, want *peerConn", creds.conns[0])
	}
	if pc.rd.size == 0 {
		t.Fatal("gRPC never called ReadOnReady on the attested connection: it reads it through a buffer of its own")
	}
}
