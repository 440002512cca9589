package proxy_test

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/proxy"
)

// FuzzSniff checks that Sniff never consumes a byte, whatever arrives and
// however it is split, and decides as LooksLikeTLS does on the same bytes.
func FuzzSniff(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}, uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		c := &chunkConn{data: append([]byte(nil), data...), chunk: int(chunk%8) + 1}
		isTLS, wrapped, err := proxy.Sniff(c, time.Second)
		if len(data) == 0 {
			if err == nil {
				t.Fatal("no error on an empty stream")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if isTLS != proxy.LooksLikeTLS(data) {
			t.Fatalf("isTLS %v, LooksLikeTLS %v", isTLS, !isTLS)
		}
		if isTLS && data[0] != 0x16 {
			t.Fatalf("TLS with first byte %#x", data[0])
		}
		all, err := io.ReadAll(wrapped)
		if err != nil || !bytes.Equal(all, data) {
			t.Fatalf("replayed %q, want %q", all, data)
		}
	})
}

// FuzzParseXFCC checks that the parser never fails uncontrolled, and that
// what it accepts survives formatting and parsing again unchanged.
func FuzzParseXFCC(f *testing.F) {
	f.Add(`By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=abc;Subject="";URI=spiffe://cluster.local/ns/foo/sa/sleep`)
	f.Fuzz(func(t *testing.T, header string) {
		els, err := proxy.ParseXFCC(header)
		if err != nil {
			return
		}
		var parts []string
		for _, e := range els {
			if e.String() == "" { // only empty values, which String leaves out
				return
			}
			parts = append(parts, e.String())
		}
		again, err := proxy.ParseXFCC(join(parts))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", join(parts), err)
		}
		if !reflect.DeepEqual(els, again) {
			t.Fatalf("round trip:\n%#v\n%#v", els, again)
		}
	})
}

// FuzzXFCCElement checks that any element formats to a header that parses
// back to it.
func FuzzXFCCElement(f *testing.F) {
	f.Add("spiffe://td/by", "CN=a\\,b,O=\"x\"", "spiffe://td/uri", "a.example", true)
	f.Fuzz(func(t *testing.T, by, subject, uri, dns string, hasSubject bool) {
		e := proxy.XFCCElement{By: by, Subject: subject, HasSubject: hasSubject || subject != "", URI: uri, DNS: []string{dns}}
		s := e.String()
		els, err := proxy.ParseXFCC(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		if len(els) != 1 || !reflect.DeepEqual(els[0], e) {
			t.Fatalf("%q parsed to %#v, want %#v", s, els, e)
		}
	})
}

func join(parts []string) string {
	var b bytes.Buffer
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p)
	}
	return b.String()
}
