package attest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// unixPair returns the two ends of a connected unix socket pair.
func unixPair(t testing.TB) (server, client *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestTellRefused: a refused client's first request is answered with
// RESOURCE_EXHAUSTED and the reason, then GOAWAY.
func TestTellRefused(t *testing.T) {
	server, client := unixPair(t)
	var in bytes.Buffer
	in.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&in, nil)
	fr.WriteSettings()
	fr.WriteWindowUpdate(0, 1<<20)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}, EndHeaders: true})
	if _, err := client.Write(in.Bytes()); err != nil {
		t.Fatal(err)
	}
	newRefusals().tell(server, errors.New("admit: 100% full\n"))
	server.Close()

	out, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	fr = http2.NewFramer(nil, bytes.NewReader(out))
	var got []string
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				got = append(got, "SETTINGS ack")
			} else {
				got = append(got, "SETTINGS")
			}
		case *http2.HeadersFrame:
			if f.StreamID != 1 || !f.StreamEnded() || !f.HeadersEnded() {
				t.Errorf("HEADERS on stream %d, end stream %v", f.StreamID, f.StreamEnded())
			}
			got = append(got, "HEADERS")
			fields, err := decodeFields(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			if want := ":status=200 content-type=application/grpc grpc-status=8 grpc-message=admit: 100%25 full%0A"; fields != want {
				t.Errorf("response headers %q, want %q", fields, want)
			}
		case *http2.GoAwayFrame:
			got = append(got, "GOAWAY")
			if f.LastStreamID != 1 || f.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY last stream %d code %v", f.LastStreamID, f.ErrCode)
			}
		default:
			t.Errorf("unexpected frame %v", f)
		}
	}
	if want := "SETTINGS,SETTINGS ack,HEADERS,GOAWAY"; strings.Join(got, ",") != want {
		t.Errorf("frames %s, want %s", strings.Join(got, ","), want)
	}
}

// FuzzTellRefused: whatever a refused client sends, tell returns (here on
// the end of its input, at most after maxRefusalFrames frames) and never
// panics.
func FuzzTellRefused(f *testing.F) {
	var in bytes.Buffer
	in.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&in, nil)
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}, EndHeaders: true})
	f.Add(in.Bytes())
	f.Add([]byte(http2.ClientPreface))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		server, client := unixPair(t)
		go func() {
			client.Write(data)
			client.CloseWrite()
			io.Copy(io.Discard, client)
		}()
		newRefusals().tell(server, errors.New("refused"))
	})
}

// decodeFields is an HPACK header block as "name=value" pairs.
func decodeFields(block []byte) (string, error) {
	fields, err := hpack.NewDecoder(4096, nil).DecodeFull(block)
	if err != nil {
		return "", err
	}
	var out []string
	for _, f := range fields {
		out = append(out, f.Name+"="+f.Value)
	}
	return strings.Join(out, " "), nil
}
