package proxy_test

import (
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/hex"
	"reflect"
	"testing"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestXFCC(t *testing.T) {
	ca := newCA(t, pki.ECP256, 0, "root")
	by := spiffeid.RequireFromString("spiffe://cluster.local/ns/foo/sa/httpbin")
	tests := []struct {
		name    string
		subject pkix.Name
		want    string // with HASH for the peer's hash
	}{
		{"Istio SVID, empty subject", pkix.Name{},
			`By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=HASH;Subject="";URI=spiffe://cluster.local/ns/foo/sa/sleep`},
		{"subject with quote, comma and backslash", pkix.Name{CommonName: `a "b", c\d`, Organization: []string{"Lyft"}},
			`By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=HASH;Subject="CN=a \\\"b\\\"\\, c\\\\d,O=Lyft";URI=spiffe://cluster.local/ns/foo/sa/sleep`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid := ca.svid(t, "spiffe://cluster.local/ns/foo/sa/sleep", pki.ECP256, 1, tt.subject)
			leaf := svid.Certificates[0]
			sum := sha256.Sum256(leaf.Raw)
			hash := hex.EncodeToString(sum[:])
			got := proxy.XFCC(by, leaf)
			want := replace(tt.want, "HASH", hash)
			if got != want {
				t.Fatalf("XFCC:\n got %s\nwant %s", got, want)
			}
			els, err := proxy.ParseXFCC(got)
			if err != nil {
				t.Fatal(err)
			}
			wantEl := proxy.XFCCElement{By: by.String(), Hash: hash, Subject: leaf.Subject.String(), HasSubject: true, URI: "spiffe://cluster.local/ns/foo/sa/sleep"}
			if len(els) != 1 || !reflect.DeepEqual(els[0], wantEl) {
				t.Fatalf("parsed %#v\nwant %#v", els, wantEl)
			}
		})
	}
}

func replace(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + replace(s[i+len(old):], old, new)
		}
	}
	return s
}

func TestParseXFCC(t *testing.T) {
	tests := []struct {
		in   string
		want []proxy.XFCCElement
		err  string
	}{
		// Envoy's documented examples.
		{in: `By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com`,
			want: []proxy.XFCCElement{{By: "http://frontend.lyft.com", Hash: "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688", Subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client", HasSubject: true, URI: "http://testclient.lyft.com"}}},
		{in: `By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;URI=http://frontend.lyft.com`,
			want: []proxy.XFCCElement{
				{By: "http://frontend.lyft.com", Hash: "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688", URI: "http://testclient.lyft.com"},
				{By: "http://backend.lyft.com", Hash: "9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e", URI: "http://frontend.lyft.com"},
			}},
		{in: `By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com`,
			want: []proxy.XFCCElement{{By: "http://frontend.lyft.com", Hash: "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688", Subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client", HasSubject: true, URI: "http://testclient.lyft.com", DNS: []string{"lyft.com", "www.lyft.com"}}}},
		// Keys are case-insensitive; quoted values hold separators; Envoy's unescaped RFC 2253 backslash is kept.
		{in: `by=x;SUBJECT="CN=a\,b;c=d";uri="u,v"`,
			want: []proxy.XFCCElement{{By: "x", Subject: `CN=a\,b;c=d`, HasSubject: true, URI: "u,v"}}},
		{in: `Subject="say \"hi\" \\"`, want: []proxy.XFCCElement{{Subject: `say "hi" \`, HasSubject: true}}},
		{in: ``, err: "proxy: XFCC: element 1: at byte 0: want key=value"},
		{in: `By=a,`, err: "proxy: XFCC: element 2: at byte 5: want key=value"},
		{in: `By=a;By=b`, err: `proxy: XFCC: element 1: key "By" repeated`},
		{in: `Foo=a`, err: `proxy: XFCC: element 1: unknown key "Foo"`},
		{in: `Subject="abc`, err: "proxy: XFCC: element 1: unterminated quoted value starting at byte 8"},
		{in: `Subject="a"b`, err: "proxy: XFCC: element 1: at byte 11: want ';' or ',' after the value of Subject"},
		{in: `URI=a=b`, err: `proxy: XFCC: element 1: at byte 5: '=' in an unquoted value of URI`},
	}
	for _, tt := range tests {
		got, err := proxy.ParseXFCC(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseXFCC(%s): error %v, want %s", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseXFCC(%s):\n got %#v, %v\nwant %#v", tt.in, got, err, tt.want)
		}
	}
}
