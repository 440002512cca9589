package attest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Bounds on telling refused clients why.
const (
	// refusalWait bounds how long a refused connection is kept open to tell
	// its client why: a local client sends its preface and first request at
	// once, but a loaded machine may take a while to run it.
	refusalWait = 5 * time.Second
	// maxTelling bounds the refused connections kept open at once to be
	// told; past it a refused connection is closed at once, untold, so that
	// a flood of connections cannot hold more than this many descriptors.
	maxTelling = 16
	// maxRefusalFrames bounds the frames read from a refused client before
	// its first request.
	maxRefusalFrames = 8
)

// refusals tells the clients of refused connections why, at most
// maxTelling at once.
type refusals struct{ slots chan struct{} }

func newRefusals() refusals { return refusals{slots: make(chan struct{}, maxTelling)} }

// tell answers the first gRPC request on c, a connection refused before
// gRPC read anything from it, with RESOURCE_EXHAUSTED and reason, so that
// the workload's own error names the limit (a bare close would read as
// "connection reset by peer"), then sends GOAWAY. It speaks just enough
// HTTP/2 for that: it reads the client's preface and SETTINGS, sends its own
// and their acknowledgement, skips up to maxRefusalFrames frames until the
// client's first HEADERS, and answers that stream in one trailers-only
// response. It gives up silently on anything else or after refusalWait.
// The caller closes c.
func (r refusals) tell(c *net.UnixConn, reason error) {
	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	default:
		return
	}
	c.SetDeadline(time.Now().Add(refusalWait))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.SetMaxReadFrameSize(16 << 10)
	if err := fr.WriteSettings(); err != nil {
		return
	}
	for range maxRefusalFrames {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			var block bytes.Buffer
			enc := hpack.NewEncoder(&block)
			for _, h := range []hpack.HeaderField{
				{Name: ":status", Value: "200"},
				{Name: "content-type", Value: "application/grpc"},
				{Name: "grpc-status", Value: "8"}, // RESOURCE_EXHAUSTED
				{Name: "grpc-message", Value: grpcMessage(reason.Error())},
			} {
				enc.WriteField(h)
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
			fr.WriteGoAway(f.StreamID, http2.ErrCodeNo, []byte("refused"))
			return
		}
	}
}

// grpcMessage percent-encodes s as the grpc-message header requires: bytes
// outside printable ASCII, and '%', as %XX.
func grpcMessage(s string) string {
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
