package grpcflow

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// recorder keeps every byte written to its connection.
type recorder struct {
	net.Conn
	mu  *sync.Mutex
	out *bytes.Buffer
}

func (r recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.out.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

type recordingListener struct {
	net.Listener
	mu  sync.Mutex
	out bytes.Buffer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return recorder{c, &l.mu, &l.out}, nil
}

func (l *recordingListener) written() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.out.Bytes())
}

// pings counts the PING frames (not acknowledgements) in one direction of
// an HTTP/2 connection, as written.
func pings(t *testing.T, wire []byte) int {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	n := 0
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return n
		}
		if err != nil {
			t.Fatalf("reading the recorded frames: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			n++
		}
	}
}

// announcedWindow returns the initial stream window the first SETTINGS frame
// of wire announces, or HTTP/2's 65 535 if it announces none.
func announcedWindow(t *testing.T, wire []byte) uint32 {
	t.Helper()
	f, err := http2.NewFramer(nil, bytes.NewReader(wire)).ReadFrame()
	if err != nil {
		t.Fatalf("reading the server's first frame: %v", err)
	}
	s, ok := f.(*http2.SettingsFrame)
	if !ok || s.IsAck() {
		t.Fatalf("the server's first frame is %v, not its SETTINGS", f.Header())
	}
	if v, ok := s.Value(http2.SettingInitialWindowSize); ok {
		return v
	}
	return 65535
}

// TestFixedWindowsSendNoPings makes ten unary calls one after another and
// counts the PINGs each side sent: with gRPC's defaults both estimate the
// bandwidth-delay product with PINGs; with the windows fixed neither does.
func TestFixedWindowsSendNoPings(t *testing.T) {
	for _, tc := range []struct {
		name       string
		window     int32 // 0: gRPC's defaults
		wantPings  bool
		wantWindow uint32 // the stream window the server announces
	}{
		{"defaults", 0, true, 65535},
		{"fixed", 1 << 20, false, 1 << 20},
		{"below HTTP/2's initial window", 1, false, 65535},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rl := &recordingListener{Listener: ln}
			var sopts []grpc.ServerOption
			dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
			if tc.window != 0 {
				sopts = ServerOptions(tc.window)
				dopts = append(dopts, DialOptions(tc.window)...)
			}
			srv := grpc.NewServer(sopts...)
			healthpb.RegisterHealthServer(srv, health.NewServer())
			go srv.Serve(rl)
			defer srv.Stop()

			var (
				mu        sync.Mutex
				clientOut bytes.Buffer
			)
			dopts = append(dopts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				return recorder{c, &mu, &clientOut}, nil
			}))
			conn, err := grpc.NewClient(ln.Addr().String(), dopts...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			client := healthpb.NewHealthClient(conn)
			for range 10 {
				if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
					t.Fatal(err)
				}
			}

			mu.Lock()
			fromClient := bytes.Clone(clientOut.Bytes())
			mu.Unlock()
			if !bytes.HasPrefix(fromClient, []byte(http2.ClientPreface)) {
				t.Fatal("the client's bytes do not start with the HTTP/2 preface")
			}
			fromServer := rl.written()
			if got := announcedWindow(t, fromServer); got != tc.wantWindow {
				t.Errorf("server announced a stream window of %d, want %d", got, tc.wantWindow)
			}
			serverPings := pings(t, fromServer)
			clientPings := pings(t, fromClient[len(http2.ClientPreface):])
			if got := serverPings > 0; got != tc.wantPings {
				t.Errorf("server sent %d PINGs in 10 calls; want some: %v", serverPings, tc.wantPings)
			}
			if got := clientPings > 0; got != tc.wantPings {
				t.Errorf("client sent %d PINGs in 10 calls; want some: %v", clientPings, tc.wantPings)
			}
		})
	}
}
