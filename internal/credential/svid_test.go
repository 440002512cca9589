package credential_test

import (
	"crypto"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/pki"
)

// testCA is a root and an intermediate of one trust domain, made by pki at
// t0: the root lives 10 days, the intermediate 5, SVIDs one hour.
type testCA struct {
	root  *x509.Certificate
	inter *pki.CA
}

func newTestCA(t testing.TB, td spiffeid.TrustDomain) *testCA {
	t.Helper()
	now := func() time.Time { return t0 }
	rootKey := mustKey(t)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: rootKey, CommonName: td.Name() + " root", Now: t0, TTL: 10 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: rootKey, Chain: []*x509.Certificate{root}, Clock: now})
	if err != nil {
		t.Fatal(err)
	}
	intKey := mustKey(t)
	chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: intKey.Public(), TrustDomain: td, TTL: 5 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pki.NewCA(pki.CAConfig{Signer: intKey, Chain: chain, Roots: []*x509.Certificate{root}, Clock: now})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{root: root, inter: inter}
}

func mustKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (ca *testCA) bundle(td spiffeid.TrustDomain) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.root})
}

// svid is an X.509-SVID for id: the leaf and the intermediate.
func (ca *testCA) svid(t testing.TB, id spiffeid.ID) []*x509.Certificate {
	t.Helper()
	chain, err := ca.inter.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: mustKey(t).Public(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func TestSVIDVerify(t *testing.T) {
	eastCA, westCA, otherEastCA := newTestCA(t, east), newTestCA(t, west), newTestCA(t, east)
	workload := spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	good := eastCA.svid(t, workload)
	leaf := good[0]
	westSVID := westCA.svid(t, spiffeid.RequireFromString("spiffe://west.example/ns/default/sa/ratings"))
	gatewayCert, err := eastCA.inter.SignLeaf(pki.LeafRequest{PublicKey: mustKey(t).Public(), DNSNames: []string{"gw.east.example"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Both trust domains' bundles, as a federated server holds them.
	federated := x509bundle.NewSet(eastCA.bundle(east), westCA.bundle(west))

	tests := []struct {
		name   string
		chain  []*x509.Certificate
		bundle x509bundle.Source // federated if nil
		now    time.Time         // t0 if zero
		err    string            // "" for success
	}{
		{name: "valid", chain: good},
		{name: "valid one second before expiry", chain: good, now: leaf.NotAfter.Add(-time.Second)},
		{
			name:  "another trust domain, verifiable with its bundle",
			chain: westSVID,
			err:   `credential: SVID spiffe://west.example/ns/default/sa/ratings is of trust domain "west.example"; only SVIDs of "east.example" are renewed here`,
		},
		{
			name:  "expired",
			chain: good,
			now:   leaf.NotAfter.Add(time.Second),
			err:   "credential: SVID " + workload.String() + " expired at " + leaf.NotAfter.UTC().Format(time.RFC3339),
		},
		{
			name:  "not yet valid",
			chain: good,
			now:   leaf.NotBefore.Add(-time.Second),
			err:   "credential: SVID " + workload.String() + " is not valid before " + leaf.NotBefore.UTC().Format(time.RFC3339),
		},
		{
			name:   "wrong bundle",
			chain:  good,
			bundle: otherEastCA.bundle(east),
			err: `credential: SVID spiffe://east.example/ns/default/sa/reviews does not verify against the bundle of "east.example": ` +
				`x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority ` +
				`(possibly because of "x509: ECDSA verification failure" while trying to verify candidate authority certificate "east.example root")`,
		},
		{
			name:  "leaf without its intermediate",
			chain: good[:1],
			err: `credential: SVID spiffe://east.example/ns/default/sa/reviews does not verify against the bundle of "east.example": ` +
				`x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority`,
		},
		{
			name:   "no bundle for this trust domain",
			chain:  good,
			bundle: x509bundle.NewSet(westCA.bundle(west)),
			err: `credential: SVID spiffe://east.example/ns/default/sa/reviews does not verify against the bundle of "east.example": ` +
				`x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "east.example"`,
		},
		{
			name:  "not an SVID",
			chain: gatewayCert,
			err:   "credential: client certificate is not an X.509-SVID: certificate contains no URI SAN",
		},
		{
			name:  "an intermediate presented as the leaf",
			chain: good[1:],
			err:   `credential: SVID spiffe://east.example does not verify against the bundle of "east.example": x509svid: leaf certificate with CA flag set to true`,
		},
		{name: "no certificate", chain: nil, err: "credential: no client certificate presented"},
		{
			name:  "chain too long",
			chain: append(good, make([]*x509.Certificate, 15)...),
			err:   "credential: SVID chain has 17 certificates; the limit is 16",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := tt.now
			if now.IsZero() {
				now = t0
			}
			bundle := tt.bundle
			if bundle == nil {
				bundle = federated
			}
			v := credential.SVIDVerifier{TrustDomain: east, Bundle: bundle, Clock: func() time.Time { return now }}
			got, err := v.Verify(tt.chain)
			if tt.err != "" {
				credError(t, err, credential.KindSVID, tt.err)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := credential.Identity{ID: workload, Kind: credential.KindSVID, Caller: "svid serial " + leaf.SerialNumber.Text(16), Expires: leaf.NotAfter}
			if got != want {
				t.Errorf("identity %+v; want %+v", got, want)
			}
		})
	}
}

func TestSVIDVerifierNeedsConfig(t *testing.T) {
	_, err := credential.SVIDVerifier{TrustDomain: east}.Verify(nil)
	if err == nil || err.Error() != "credential: SVID verifier needs a trust domain and a bundle source" {
		t.Errorf("error %v", err)
	}
	if _, ok := errors.AsType[*credential.Error](err); ok {
		t.Error("a configuration error is a *credential.Error (it would be answered as Unauthenticated)")
	}
}
