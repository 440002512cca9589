package inspect

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestDescribeBundle(t *testing.T) {
	p := newTestPKI(t)
	eastInter, westInter := p.svid[1], p.westSVID[1]
	k384, err := pki.GenerateKey(pki.ECP384)
	if err != nil {
		t.Fatal(err)
	}
	p384 := k384.Public()
	full := spiffebundle.FromX509Authorities(east, []*x509.Certificate{p.root})
	full.SetSequenceNumber(7)
	full.SetRefreshHint(5 * time.Minute)
	for kid, key := range map[string]crypto.PublicKey{"k1": mustKey(t).Public(), "a0": p384} {
		if err := full.AddJWTAuthority(kid, key); err != nil {
			t.Fatal(err)
		}
	}
	fullJSON, err := bundle.Marshal(full, bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	jwtOnly, err := spiffebundle.FromJWTAuthorities(east, map[string]crypto.PublicKey{"k1": mustKey(t).Public()}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	seven, hint := uint64(7), int64(300)

	tests := []struct {
		name    string
		data    []byte
		td      spiffeid.TrustDomain
		want    *Bundle
		wantErr string
		unknown bool // the error wraps ErrUnknownTrustDomain
	}{
		{
			name: "SPIFFE JSON round trip",
			data: fullJSON,
			td:   east,
			want: &Bundle{
				Source: "src", Format: bundle.FormatSPIFFE, TrustDomain: "east.example", TrustDomainFrom: TrustDomainGiven,
				Sequence: &seven, RefreshHint: &hint,
				X509Authorities: Describe([]*x509.Certificate{p.root}, t0),
				JWTAuthorities:  []JWTAuthority{{KeyID: "a0", Key: "ECDSA P-384"}, {KeyID: "k1", Key: "ECDSA P-256"}},
			},
		},
		{
			name: "PEM, trust domain inferred from the intermediate",
			data: pemfile.EncodeCertificates(eastInter),
			want: &Bundle{
				Source: "src", Format: bundle.FormatPEM, TrustDomain: "east.example", TrustDomainFrom: TrustDomainInferred,
				X509Authorities: Describe([]*x509.Certificate{eastInter}, t0),
			},
		},
		{
			name:    "PEM root without a URI SAN",
			data:    pemfile.EncodeCertificates(p.root),
			wantErr: "inspect: cannot tell which trust domain src is for: the trust domain of the bundle is unknown: CA certificate 1 (CN=meshfed root CA,O=meshfed) has no single spiffe:// URI SAN (no URI SAN)",
			unknown: true,
		},
		{
			name:    "PEM with two trust domains",
			data:    pemfile.EncodeCertificates(eastInter, westInter),
			wantErr: `inspect: cannot tell which trust domain src is for: the trust domain of the bundle is unknown: its CA certificates name both "east.example" and "west.example"`,
			unknown: true,
		},
		{
			name:    "JWT authorities only",
			data:    jwtOnly,
			wantErr: "inspect: cannot tell which trust domain src is for: the trust domain of the bundle is unknown: it holds no CA certificates to infer it from",
			unknown: true,
		},
		{
			name: "JWT authorities only, trust domain given",
			data: jwtOnly,
			td:   west,
			want: &Bundle{
				Source: "src", Format: bundle.FormatSPIFFE, TrustDomain: "west.example", TrustDomainFrom: TrustDomainGiven,
				X509Authorities: []Certificate{},
				JWTAuthorities:  []JWTAuthority{{KeyID: "k1", Key: "ECDSA P-256"}},
			},
		},
		{
			name:    "leaf in a bundle",
			data:    pemfile.EncodeCertificates(p.tlsLeaf[0]),
			td:      east,
			wantErr: `inspect: src: bundle: x509-svid authority 1 (CN=localhost) is not a CA certificate; a bundle holds roots, not leaves`,
		},
		{
			name:    "malformed JSON",
			data:    []byte(`{"keys": [`),
			wantErr: "inspect: src: bundle: spiffebundle: unable to parse JWKS: unexpected end of JSON input",
		},
		{
			name:    "malformed PEM",
			data:    []byte("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
			td:      east,
			wantErr: "inspect: src: bundle: pemfile: certificates: malformed PEM block after 0 good block(s): bad base64, headers or END line",
		},
		{
			name:    "too large",
			data:    make([]byte, bundle.MaxBytes+1),
			wantErr: fmt.Sprintf("inspect: src: bundle: input exceeds size limit of %d bytes", bundle.MaxBytes),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DescribeBundle("src", tt.data, tt.td, t0)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				if errors.Is(err, ErrUnknownTrustDomain) != tt.unknown {
					t.Errorf("errors.Is(err, ErrUnknownTrustDomain) = %v, want %v", !tt.unknown, tt.unknown)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DescribeBundle:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestBundleJSONFieldNames(t *testing.T) {
	seq, hint := uint64(3), int64(60)
	raw, err := json.Marshal(Bundle{TrustDomain: "east.example", Sequence: &seq, RefreshHint: &hint,
		JWTAuthorities: []JWTAuthority{{KeyID: "k1", Key: "ECDSA P-256"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"trust_domain":"east.example"`, `"spiffe_sequence":3`, `"spiffe_refresh_hint":60`, `"jwt_authorities":[{"kid":"k1","key":"ECDSA P-256"}]`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("%s lacks %s", raw, want)
		}
	}
}

func TestFetchBundle(t *testing.T) {
	p := newTestPKI(t)
	doc, err := bundle.Marshal(spiffebundle.FromX509Authorities(east, []*x509.Certificate{p.root}), bundle.FormatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write(doc) })
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, bundle.MaxBytes+1)) })
	mux.HandleFunc("/gone", http.NotFound)

	web := httptest.NewUnstartedServer(mux)
	web.Config.ErrorLog = log.New(io.Discard, "", 0)
	web.StartTLS()
	defer web.Close()
	webRoots := x509.NewCertPool()
	webRoots.AddCert(web.Certificate())
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+r.Host+"/", http.StatusFound)
	})

	// The https_spiffe endpoint presents the reviews SVID.
	spiffeSrv := httptest.NewUnstartedServer(mux)
	spiffeSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	spiffeSrv.TLS = &tls.Config{Certificates: []tls.Certificate{tlsCert(p.svid, p.svidKey)}}
	spiffeSrv.StartTLS()
	defer spiffeSrv.Close()
	eastBundle := spiffebundle.FromX509Authorities(east, []*x509.Certificate{p.root})
	otherBundle := spiffebundle.FromX509Authorities(east, []*x509.Certificate{p.otherRoot})
	otherID := spiffeid.RequireFromString("spiffe://east.example/spire/server")

	tests := []struct {
		name    string
		cfg     FetchConfig
		wantErr string
	}{
		{name: "https_web", cfg: FetchConfig{URL: web.URL, Roots: webRoots}},
		{name: "https_web, untrusted server", cfg: FetchConfig{URL: web.URL, Roots: x509.NewCertPool()},
			wantErr: fmt.Sprintf(`inspect: fetch bundle: Get "%s": tls: failed to verify certificate: x509: certificate signed by unknown authority`, web.URL)},
		{name: "https_spiffe", cfg: FetchConfig{URL: spiffeSrv.URL, EndpointID: reviewsID, EndpointBundle: eastBundle}},
		{name: "https_spiffe, another SPIFFE ID", cfg: FetchConfig{URL: spiffeSrv.URL, EndpointID: otherID, EndpointBundle: eastBundle},
			wantErr: fmt.Sprintf(`inspect: fetch bundle: Get "%s": unexpected ID "spiffe://east.example/ns/default/sa/reviews"`, spiffeSrv.URL)},
		{name: "https_spiffe, wrong bundle", cfg: FetchConfig{URL: spiffeSrv.URL, EndpointID: reviewsID, EndpointBundle: otherBundle},
			wantErr: fmt.Sprintf(`inspect: fetch bundle: Get "%s": x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority`, spiffeSrv.URL)},
		{name: "https_spiffe without a bundle", cfg: FetchConfig{URL: spiffeSrv.URL, EndpointID: reviewsID},
			wantErr: "inspect: the https_spiffe profile needs both the endpoint's SPIFFE ID and its trust domain's bundle"},
		{name: "body over the bound", cfg: FetchConfig{URL: web.URL + "/huge", Roots: webRoots},
			wantErr: fmt.Sprintf("inspect: fetch bundle from %s/huge: input exceeds size limit of %d bytes", web.URL, bundle.MaxBytes)},
		{name: "not found", cfg: FetchConfig{URL: web.URL + "/gone", Roots: webRoots},
			wantErr: fmt.Sprintf("inspect: fetch bundle from %s/gone: the server answered 404 Not Found", web.URL)},
		{name: "redirect off https", cfg: FetchConfig{URL: web.URL + "/redirect", Roots: webRoots},
			wantErr: fmt.Sprintf(`inspect: fetch bundle: Get "http://%s/": redirect to http://%s/ leaves https`, web.Listener.Addr(), web.Listener.Addr())},
		{name: "plain http", cfg: FetchConfig{URL: "http://bundle.example/"},
			wantErr: `inspect: bundle endpoint "http://bundle.example/" is not an https:// URL`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FetchBundle(context.Background(), tt.cfg)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v\nwant %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(doc) {
				t.Errorf("fetched %q, want %q", got, doc)
			}
		})
	}
}

func tlsCert(chain []*x509.Certificate, key crypto.Signer) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}
