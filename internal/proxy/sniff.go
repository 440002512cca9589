package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// sniffLen is how many bytes Sniff reads at most: a TLS record header (type,
// version, length) and the handshake type that follows it. It is the whole
// bound on what an unauthenticated peer can make Sniff buffer.
const sniffLen = 6

// maxRecordLen is the largest TLS record payload a ClientHello may arrive in
// (RFC 8446 §5.1: 2^14, plus the 2048 bytes RFC 5246 allowed for expansion).
const maxRecordLen = 1<<14 + 2048

// Sniff tells a TLS ClientHello from plaintext by the first bytes of conn, for
// a port in PERMISSIVE mode. It reads at most 6 bytes, under a read deadline
// of timeout, and returns a conn that replays them before the rest of the
// stream, so nothing is consumed. The read deadline is cleared on return.
//
// It reports TLS when the bytes that arrived, at least one, are a prefix of a
// TLS handshake record holding a ClientHello: content type 22, version 3.x
// (x ≤ 4), a length of 1 to 18432 and handshake type 1. Any other first byte
// is plaintext at once, without waiting for more. If nothing arrives before
// the deadline the peer waits for us to speak, which a TLS client never
// does, so Sniff reports plaintext with a nil error. The error is non-nil only
// if the connection failed or closed before any byte arrived.
func Sniff(conn net.Conn, timeout time.Duration) (isTLS bool, wrapped net.Conn, err error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return false, conn, fmt.Errorf("proxy: sniff: set read deadline: %w", err)
	}
	var buf [sniffLen]byte
	n := 0
	var readErr error
	for empty := 0; n < sniffLen && clientHelloPrefix(buf[:n]); {
		var m int
		m, readErr = conn.Read(buf[n:])
		n += m
		if readErr != nil {
			break
		}
		if m == 0 {
			if empty++; empty == 100 { // as io.ReadAtLeast gives up
				readErr = io.ErrNoProgress
				break
			}
		}
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil && readErr == nil {
		readErr = err
	}
	wrapped = &replayConn{Conn: conn, buf: append([]byte(nil), buf[:n]...)}
	if n == 0 {
		if errors.Is(readErr, os.ErrDeadlineExceeded) {
			return false, wrapped, nil
		}
		return false, wrapped, fmt.Errorf("proxy: sniff: nothing read: %w", readErr)
	}
	return LooksLikeTLS(buf[:n]), wrapped, nil
}

// LooksLikeTLS reports whether b, at least one byte, is a prefix of a TLS
// record carrying a ClientHello. Only the first 6 bytes are looked at.
func LooksLikeTLS(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	if len(b) > sniffLen {
		b = b[:sniffLen]
	}
	return clientHelloPrefix(b)
}

// clientHelloPrefix reports whether b (at most 6 bytes) could begin a TLS
// ClientHello record. The empty prefix could.
func clientHelloPrefix(b []byte) bool {
	if len(b) > 0 && b[0] != 22 { // handshake
		return false
	}
	if len(b) > 1 && b[1] != 3 { // SSL 3.0 .. TLS 1.3 all say 3.x
		return false
	}
	if len(b) > 2 && b[2] > 4 {
		return false
	}
	if len(b) > 3 && b[3] > maxRecordLen>>8 {
		return false
	}
	if len(b) > 4 {
		l := int(b[3])<<8 | int(b[4])
		if l == 0 || l > maxRecordLen {
			return false
		}
	}
	if len(b) > 5 && b[5] != 1 { // client_hello
		return false
	}
	return true
}

// replayConn returns buf before reading on from Conn.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
