package inspect

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestVerify(t *testing.T) {
	p := newTestPKI(t)
	inter := p.svid[1]
	anyTD := spiffeid.TrustDomain{}
	rootTrust := func(td spiffeid.TrustDomain, roots ...*x509.Certificate) *Trust {
		if len(roots) == 0 {
			roots = []*x509.Certificate{p.root}
		}
		return &Trust{Source: "bundle.pem", TrustDomain: td, Roots: roots}
	}
	noDigitalSignature := svidTemplate("spiffe://east.example/ns/default/sa/batch")
	noDigitalSignature.KeyUsage = x509.KeyUsageKeyEncipherment
	// The west intermediate signs an east identity: its name constraint
	// permits only west.example.
	smuggled := craftBy(t, p.westCA, svidTemplate("spiffe://east.example/ns/default/sa/admin"))
	later := t0.Add(2 * time.Hour)
	svidOK := Verdict{
		Status:      StatusOK,
		Method:      MethodSVID,
		Against:     "bundle.pem",
		SPIFFEID:    reviewsID.String(),
		TrustDomain: "east.example",
		Chain:       []string{reviewsID.String(), eastCAName, rootName},
	}
	svidFailed := func(reason string) Verdict {
		return Verdict{Status: StatusFailed, Method: MethodSVID, Against: "bundle.pem",
			SPIFFEID: reviewsID.String(), TrustDomain: "east.example", Reason: reason}
	}

	tests := []struct {
		name  string
		chain []*x509.Certificate
		trust *Trust
		opts  VerifyOptions
		want  Verdict
	}{
		{
			name:  "SVID with the shared root, trust domain from the leaf",
			chain: p.svid,
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0},
			want:  svidOK,
		},
		{
			name:  "SVID with its own trust domain's bundle",
			chain: p.svid,
			trust: rootTrust(east),
			opts:  VerifyOptions{Now: t0},
			want:  svidOK,
		},
		{
			name:  "SVID anchored at its intermediate",
			chain: p.svid[:1],
			trust: rootTrust(east, inter),
			opts:  VerifyOptions{Now: t0},
			want: func() Verdict {
				v := svidOK
				v.Chain = []string{reviewsID.String(), eastCAName}
				return v
			}(),
		},
		{
			name:  "SVID with another trust domain's bundle",
			chain: p.svid,
			trust: rootTrust(west),
			opts:  VerifyOptions{Now: t0},
			want: svidFailed(`the leaf spiffe://east.example/ns/default/sa/reviews is in trust domain "east.example" ` +
				`but bundle.pem is the bundle of trust domain "west.example"; verify a peer only with its own trust domain's bundle`),
		},
		{
			name:  "SVID expired",
			chain: p.svid,
			trust: rootTrust(east),
			opts:  VerifyOptions{Now: later},
			want: svidFailed(fmt.Sprintf("x509svid: could not verify leaf certificate: x509: certificate has expired or is not yet valid: current time %s is after %s",
				later.Format(time.RFC3339), p.svid[0].NotAfter.Format(time.RFC3339))),
		},
		{
			name:  "SVID against the wrong root",
			chain: p.svid,
			trust: rootTrust(east, p.otherRoot),
			opts:  VerifyOptions{Now: t0},
			want:  svidFailed("x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"),
		},
		{
			name:  "SVID without its intermediate",
			chain: p.svid[:1],
			trust: rootTrust(east),
			opts:  VerifyOptions{Now: t0},
			want:  svidFailed("x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"),
		},
		{
			name:  "SVID outside its intermediate's name constraint",
			chain: []*x509.Certificate{smuggled, p.westSVID[1]},
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusFailed, Method: MethodSVID, Against: "bundle.pem",
				SPIFFEID: "spiffe://east.example/ns/default/sa/admin", TrustDomain: "east.example",
				Reason: `x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name: URI "spiffe://east.example/ns/default/sa/admin" is not permitted by any constraint`},
		},
		{
			name:  "SVID that breaks a leaf rule",
			chain: []*x509.Certificate{p.craft(t, noDigitalSignature), inter},
			trust: rootTrust(east),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusFailed, Method: MethodSVID, Against: "bundle.pem",
				SPIFFEID: "spiffe://east.example/ns/default/sa/batch", TrustDomain: "east.example",
				Reason: "pki: X.509-SVID spiffe://east.example/ns/default/sa/batch does not conform: X509-SVID §4.3: leaf without digitalSignature"},
		},
		{
			name:  "two URI SANs",
			chain: []*x509.Certificate{p.craft(t, svidTemplate("spiffe://east.example/a", "spiffe://east.example/b")), inter},
			trust: rootTrust(east),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusFailed, Method: MethodSVID, Against: "bundle.pem",
				Reason: "the leaf is not an X.509-SVID: 2 URI SANs; an SVID carries exactly one"},
		},
		{
			name:  "plain TLS leaf for its DNS name",
			chain: p.tlsLeaf,
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0, ServerName: "localhost", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
			want: Verdict{Status: StatusOK, Method: MethodX509, Against: "bundle.pem", ServerName: "localhost",
				Chain: []string{"CN=localhost", rootName}},
		},
		{
			name:  "plain TLS leaf for its IP address",
			chain: p.tlsLeaf,
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0, ServerName: "127.0.0.1"},
			want: Verdict{Status: StatusOK, Method: MethodX509, Against: "bundle.pem", ServerName: "127.0.0.1",
				Chain: []string{"CN=localhost", rootName}},
		},
		{
			name:  "plain TLS leaf for another name",
			chain: p.tlsLeaf,
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0, ServerName: "reviews.east.example"},
			want: Verdict{Status: StatusFailed, Method: MethodX509, Against: "bundle.pem", ServerName: "reviews.east.example",
				Reason: "x509: certificate is valid for localhost, not reviews.east.example"},
		},
		{
			name:  "plain TLS leaf against the wrong root",
			chain: p.tlsLeaf,
			trust: rootTrust(anyTD, p.otherRoot),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusFailed, Method: MethodX509, Against: "bundle.pem",
				Reason: "x509: certificate signed by unknown authority"},
		},
		{
			name:  "intermediate CA to its root",
			chain: []*x509.Certificate{inter},
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusOK, Method: MethodX509, Against: "bundle.pem",
				Chain: []string{eastCAName, rootName}},
		},
		{
			name:  "intermediate CA against the wrong root",
			chain: []*x509.Certificate{inter},
			trust: rootTrust(anyTD, p.otherRoot),
			opts:  VerifyOptions{Now: t0},
			want: Verdict{Status: StatusFailed, Method: MethodX509, Against: "bundle.pem",
				Reason: "x509: certificate signed by unknown authority"},
		},
		{
			name:  "no certificates",
			trust: rootTrust(anyTD),
			opts:  VerifyOptions{Now: t0},
			want:  Verdict{Status: StatusFailed, Method: MethodX509, Against: "bundle.pem", Reason: "no certificates to verify"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Verify(tt.chain, tt.trust, tt.opts)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Verify:\n got %+v\nwant %+v", got, tt.want)
			}
			if got.OK() != (tt.want.Status == StatusOK) {
				t.Errorf("OK() = %v for status %s", got.OK(), got.Status)
			}
		})
	}
}

func TestLoadTrust(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	rootPEM := writeCerts(t, dir, "root.pem", p.root)
	leafPEM := writeCerts(t, dir, "leaf.pem", p.svid[0])
	jwtBundle, err := spiffebundle.FromJWTAuthorities(east, map[string]crypto.PublicKey{"k1": mustKey(t).Public()}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	jwtOnly := writeFile(t, dir, "jwt.json", jwtBundle)
	tests := []struct {
		name    string
		load    func(string, spiffeid.TrustDomain) (*Trust, error)
		path    string
		td      spiffeid.TrustDomain
		want    *Trust
		wantErr string
	}{
		{name: "bundle PEM, trust domain given", load: LoadBundle, path: rootPEM, td: east,
			want: &Trust{Source: rootPEM, TrustDomain: east, Roots: []*x509.Certificate{p.root}}},
		{name: "bundle PEM, no trust domain", load: LoadBundle, path: rootPEM,
			want: &Trust{Source: rootPEM, Roots: []*x509.Certificate{p.root}}},
		{name: "root PEM", load: LoadRoots, path: rootPEM, td: west,
			want: &Trust{Source: rootPEM, TrustDomain: west, Roots: []*x509.Certificate{p.root}}},
		{name: "bundle holding a leaf", load: LoadBundle, path: leafPEM, td: east,
			wantErr: "inspect: " + leafPEM + fmt.Sprintf(": bundle: x509-svid authority 1 (serial %x) is not a CA certificate; a bundle holds roots, not leaves", p.svid[0].SerialNumber)},
		{name: "bundle holding a leaf, no trust domain", load: LoadBundle, path: leafPEM,
			wantErr: "inspect: " + leafPEM + ": certificate 1 (spiffe://east.example/ns/default/sa/reviews) is not a CA certificate; trust anchors are the roots (or CAs) that sign chains, not leaves"},
		{name: "root file holding a leaf", load: LoadRoots, path: leafPEM,
			wantErr: "inspect: " + leafPEM + ": certificate 1 (spiffe://east.example/ns/default/sa/reviews) is not a CA certificate; trust anchors are the roots (or CAs) that sign chains, not leaves"},
		{name: "bundle with only JWT keys", load: LoadBundle, path: jwtOnly, td: east,
			wantErr: "inspect: " + jwtOnly + ": the bundle holds no X.509 authorities, so it cannot verify a certificate"},
		{name: "missing file", load: LoadRoots, path: dir + "/none.pem",
			wantErr: "inspect: pemfile: open " + dir + "/none.pem: no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.load(tt.path, tt.td)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
