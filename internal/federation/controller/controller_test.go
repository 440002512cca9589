package controller

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// A member joins with a token and gets a name-constrained intermediate for
// its own trust domain under the shared root, with the federation's state.
func TestJoinSignsConstrainedIntermediate(t *testing.T) {
	h := newHarness(t, nil)
	roots := h.rootsFile()
	if len(roots) != 1 || roots[0].Subject.CommonName != "virtual-mesh root CA 1" || roots[0].Subject.Organization[0] != "service-mesh-hub" {
		t.Fatalf("root-cert.pem = %v", roots)
	}
	root := roots[0]
	if got := root.NotAfter.Sub(t0); got != 356*day {
		t.Errorf("root lifetime %s, want 356 days", got)
	}
	m := h.member(east)
	key := newKey(t)
	resp, err := m.client().Join(context.Background(), &pb.JoinRequest{
		Token: h.token(east), TrustDomain: "east.example", Csr: newCSR(t, key, nil), Address: "10.0.0.1:8443",
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetCertChain()); n != 2 {
		t.Fatalf("chain of %d certificates, want intermediate and root", n)
	}
	inter, _ := x509.ParseCertificate(resp.GetCertChain()[0])
	if !slices.Equal(resp.GetCertChain()[1], root.Raw) {
		t.Error("the chain does not end in the shared root")
	}
	if !inter.IsCA || len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://east.example" ||
		!slices.Equal(inter.PermittedURIDomains, []string{"east.example"}) || !inter.PermittedDNSDomainsCritical {
		t.Errorf("intermediate: CA %v, URIs %v, permitted %v", inter.IsCA, inter.URIs, inter.PermittedURIDomains)
	}
	if !samePublicKey(inter.PublicKey, key.Public()) {
		t.Error("the intermediate certifies another key than the CSR's")
	}
	if got := inter.NotAfter.Sub(t0); got != DefaultIntermediateTTL {
		t.Errorf("intermediate lifetime %s, want %s", got, DefaultIntermediateTTL)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by the root: %v", err)
	}
	st := resp.GetState()
	want := &pb.FederationState{Name: "virtual-mesh", Roots: [][]byte{root.Raw}, SigningRoot: root.Raw,
		TrustDomains: []string{"east.example", "west.example"}, EnforceAccessControl: true, RotationPhase: "stable", Generation: 1}
	if !proto.Equal(st, want) {
		t.Errorf("state = %v\nwant %v", st, want)
	}

	// The name constraint: an SVID for west.example made under east's
	// intermediate does not verify against the shared root.
	m.adopt(key, resp)
	own := m.issue(spiffeid.RequireFromString("spiffe://east.example/ns/x/sa/y"), m.ca)
	if _, _, err := pki.VerifyX509SVID(tlsChain(t, own), x509bundle.FromX509Authorities(east, roots), t0); err != nil {
		t.Errorf("east SVID under east's intermediate: %v", err)
	}
	forged := forgeUnder(t, m, spiffeid.RequireFromString("spiffe://west.example/ns/x/sa/y"))
	_, _, err = pki.VerifyX509SVID(forged, x509bundle.FromX509Authorities(west, roots), t0)
	if got, want := errText(err), "x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name: URI \"spiffe://west.example/ns/x/sa/y\" is not permitted by any constraint"; got != want {
		t.Errorf("a west SVID under east's intermediate:\n got %s\nwant %s", got, want)
	}
	// Nor can east issue the controller's own identity.
	forged = forgeUnder(t, m, h.c.ID())
	_, _, err = pki.VerifyX509SVID(forged, x509bundle.FromX509Authorities(h.c.ID().TrustDomain(), roots), t0)
	if got, want := errText(err), "x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name: URI \"spiffe://virtual-mesh/meshfed/federation-controller\" is not permitted by any constraint"; got != want {
		t.Errorf("the controller's SPIFFE ID under east's intermediate:\n got %s\nwant %s", got, want)
	}

	ms := h.status().GetMembers()[0]
	if !ms.GetJoined() || ms.GetAddress() != "10.0.0.1:8443" || ms.GetIntermediateSerial() != inter.SerialNumber.Text(16) ||
		ms.GetRootSubjectKeyId() != skid(root) || ms.GetLastContact() != t0.Unix() || ms.GetIntermediateExpiresAt() != inter.NotAfter.Unix() {
		t.Errorf("status of east = %v", ms)
	}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// forgeUnder signs a leaf for id with m's intermediate key directly,
// bypassing pki's refusal, as a thief of the key would.
func forgeUnder(t *testing.T, m *member, id spiffeid.ID) []*x509.Certificate {
	t.Helper()
	k := newKey(t)
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{}, URIs: []*url.URL{u},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.inter, k.Public(), m.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{leaf, m.inter}
}

func TestJoinRefusals(t *testing.T) {
	h := newHarness(t, nil)
	used := h.token(east)
	if err := h.member(east).join(used); err != nil {
		t.Fatal(err)
	}
	expiring := h.token(west)
	h.clock.Advance(DefaultTokenTTL)
	westToken := h.token(west)
	key := newKey(t)
	cases := []struct {
		name string
		req  *pb.JoinRequest
		want string
	}{
		{"no token", &pb.JoinRequest{TrustDomain: "east.example", Csr: newCSR(t, key, nil)},
			"Unauthenticated: federation controller: no join token; make one with meshfed federation token create"},
		{"unknown token", &pb.JoinRequest{Token: strings.Repeat("A", 43), TrustDomain: "east.example", Csr: newCSR(t, key, nil)},
			"Unauthenticated: federation controller: join token sha256:" + hashPrefix(strings.Repeat("A", 43)) + " is unknown, expired or already used"},
		{"token used before", &pb.JoinRequest{Token: used, TrustDomain: "east.example", Csr: newCSR(t, key, nil)},
			"Unauthenticated: federation controller: join token sha256:" + hashPrefix(used) + " is unknown, expired or already used"},
		{"expired token", &pb.JoinRequest{Token: expiring, TrustDomain: "west.example", Csr: newCSR(t, key, nil)},
			"Unauthenticated: federation controller: join token sha256:" + hashPrefix(expiring) + " is unknown, expired or already used"},
		{"token of another trust domain", &pb.JoinRequest{Token: westToken, TrustDomain: "east.example", Csr: newCSR(t, key, nil)},
			`PermissionDenied: federation controller: join token sha256:` + hashPrefix(westToken) + ` was made for trust domain "west.example", not "east.example"`},
		{"bad trust domain", &pb.JoinRequest{Token: westToken, TrustDomain: "West Example", Csr: newCSR(t, key, nil)},
			"InvalidArgument: federation controller: trust_domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		{"no CSR", &pb.JoinRequest{Token: westToken, TrustDomain: "west.example"}, "InvalidArgument: federation controller: no CSR"},
		{"CSR garbage", &pb.JoinRequest{Token: westToken, TrustDomain: "west.example", Csr: []byte{0x30, 0x03, 1, 2, 3}},
			"InvalidArgument: federation controller: CSR does not parse: asn1: structure error: tags don't match (16 vs {class:0 tag:1 length:2 isCompound:false}) {optional:false explicit:false application:false private:false defaultValue:<nil> tag:<nil> stringType:0 timeType:0 set:false omitEmpty:false} tbsCertificateRequest @2"},
		{"CSR for another trust domain", &pb.JoinRequest{Token: westToken, TrustDomain: "west.example",
			Csr: newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://east.example")}})},
			"InvalidArgument: federation controller: pki: CSR asks for spiffe://east.example, but the intermediate is for spiffe://west.example"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.member(west).client().Join(context.Background(), tc.req)
			if got := statusText(err); got != tc.want {
				t.Errorf("Join:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
	// None of the refusals spent west's token.
	if err := h.member(west).join(westToken); err != nil {
		t.Errorf("join with the unspent token: %v", err)
	}
	if err := h.member(west).join(westToken); statusText(err) != "Unauthenticated: federation controller: join token sha256:"+hashPrefix(westToken)+" is unknown, expired or already used" {
		t.Errorf("second join with the token: %v", err)
	}
}

// otherCA is an intermediate CA for td under a root that is not the
// VirtualMesh's.
func otherCA(t *testing.T, td spiffeid.TrustDomain) *pki.CA {
	t.Helper()
	key := newKey(t)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: key, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	rootCA, err := pki.NewCA(pki.CAConfig{Signer: key, Chain: []*x509.Certificate{root}, Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return underRoot(t, rootCA, td)
}

// underRoot is an intermediate CA for td signed by rootCA.
func underRoot(t *testing.T, rootCA *pki.CA, td spiffeid.TrustDomain) *pki.CA {
	t.Helper()
	k := newKey(t)
	chain, err := rootCA.SignIntermediate(pki.IntermediateRequest{PublicKey: k.Public(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(pki.CAConfig{Signer: k, Chain: chain, Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Every call but Join authenticates the member by its server SVID; each
// refusal says which rule failed.
func TestMemberAuthentication(t *testing.T) {
	h := newHarness(t, nil)
	e := h.member(east).mustJoin()
	h.c.mu.Lock()
	rootCA, err := h.c.rootCA(1)
	h.c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	server := func(td spiffeid.TrustDomain) spiffeid.ID { return spiffeid.RequireFromPath(td, MemberPath) }
	cases := []struct {
		name string
		td   spiffeid.TrustDomain
		svid *tls.Certificate
		want string
	}{
		{"no certificate", east, nil,
			"Unauthenticated: federation controller: this call needs the member's X.509-SVID spiffe://<trust domain>/meshfed/server as client certificate; a member without one joins first"},
		{"another SPIFFE ID of the member", east, e.issue(spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews"), e.ca),
			"PermissionDenied: federation controller: spiffe://east.example/ns/default/sa/reviews may not call the controller; members present spiffe://<trust domain>/meshfed/server"},
		{"not a member", north, e.issue(server(north), otherCA(t, north)),
			`PermissionDenied: federation controller: north.example is not a member of VirtualMesh "virtual-mesh" (spec.meshes)`},
		{"another root", east, e.issue(server(east), otherCA(t, east)),
			"Unauthenticated: federation controller: the SVID spiffe://east.example/meshfed/server does not verify against the VirtualMesh's roots: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority"},
		{"signed by the root itself", east, e.issue(server(east), rootCA),
			"PermissionDenied: federation controller: the SVID spiffe://east.example/meshfed/server is not issued through an intermediate for east.example"},
		{"member that has not joined", west, e.issue(server(west), underRoot(t, rootCA, west)),
			`FailedPrecondition: federation controller: west.example has not joined VirtualMesh "virtual-mesh"; join with a token first`},
		{"the member", east, e.svid, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &member{h: h, td: tc.td, roots: e.roots, svid: tc.svid}
			if got := statusText(m.report(&pb.MemberReport{})); got != tc.want {
				t.Errorf("Report:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestRenewIntermediate(t *testing.T) {
	h := newHarness(t, nil)
	e := h.member(east).mustJoin()
	first := e.inter
	firstKey := e.key
	h.clock.Advance(day)
	if err := e.renew(); err != nil {
		t.Fatal(err)
	}
	if e.inter.SerialNumber.Cmp(first.SerialNumber) == 0 || !e.inter.NotAfter.Equal(t0.Add(day+DefaultIntermediateTTL)) {
		t.Errorf("renewed intermediate: serial %x (first %x), not after %s", e.inter.SerialNumber, first.SerialNumber, e.inter.NotAfter)
	}
	ms := h.status().GetMembers()[0]
	if ms.GetIntermediateSerial() != e.inter.SerialNumber.Text(16) || ms.GetLastContact() != t0.Add(day).Unix() {
		t.Errorf("status after renewal: %v", ms)
	}
	cases := []struct {
		name string
		csr  []byte
		want string
	}{
		{"the current key", newCSR(t, e.key, nil),
			"InvalidArgument: federation controller: the CSR reuses the key of intermediate " + e.inter.SerialNumber.Text(16) + "; make a new key for every intermediate"},
		{"an earlier key", newCSR(t, firstKey, nil),
			"InvalidArgument: federation controller: the CSR reuses the key of intermediate " + first.SerialNumber.Text(16) + "; make a new key for every intermediate"},
		{"another trust domain", newCSR(t, newKey(t), &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://west.example")}}),
			"InvalidArgument: federation controller: pki: CSR asks for spiffe://west.example, but the intermediate is for spiffe://east.example"},
		{"too large", make([]byte, pemfile.MaxCSRBytes+1), "InvalidArgument: federation controller: CSR of 65537 bytes; at most 65536"},
	}
	for _, tc := range cases {
		_, err := e.client().RenewIntermediate(context.Background(), &pb.RenewIntermediateRequest{Csr: tc.csr})
		if got := statusText(err); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// sync takes up the state the controller sends first on Watch.
func (m *member) sync() *pb.FederationState {
	m.h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := m.client().Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		m.h.t.Fatal(err)
	}
	st, err := stream.Recv()
	if err != nil {
		m.h.t.Fatal(err)
	}
	m.apply(st)
	return st
}

func TestWatchSendsStateAtOnceAndOnEveryChange(t *testing.T) {
	h, e, stream := watchingMember(t)
	recv := func() *pb.FederationState {
		t.Helper()
		st, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	old := h.rootsFile()[0]
	if st := recv(); st.GetGeneration() != 1 || st.GetRotationPhase() != "stable" || len(st.GetRoots()) != 1 {
		t.Fatalf("first state: %v", st)
	}
	rotate(t, h, false)
	st := recv()
	if st.GetGeneration() != 2 || st.GetRotationPhase() != "publishing" || len(st.GetRoots()) != 2 || !slices.Equal(st.GetSigningRoot(), old.Raw) {
		t.Fatalf("after RotateRoot: generation %d, phase %s, %d roots", st.GetGeneration(), st.GetRotationPhase(), len(st.GetRoots()))
	}
	// A report changes no state: the next message is the next phase's.
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2})
	rotate(t, h, false)
	st = recv()
	if st.GetGeneration() != 3 || st.GetRotationPhase() != "reissuing" || !slices.Equal(st.GetSigningRoot(), st.GetRoots()[1]) {
		t.Fatalf("after the second RotateRoot: generation %d, phase %s", st.GetGeneration(), st.GetRotationPhase())
	}
}

// watchingMember is a harness with manual rotation, east joined, and
// east's Watch stream (closed when the test ends).
func watchingMember(t *testing.T) (*harness, *member, pb.Controller_WatchClient) {
	t.Helper()
	h := newHarness(t, func(c *Config) { c.ManualRotation = true })
	e := h.member(east).mustJoin()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := e.client().Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return h, e, stream
}

func rotate(t *testing.T, h *harness, force bool) *pb.StatusResponse {
	t.Helper()
	st, err := h.admin.RotateRoot(context.Background(), &pb.RotateRootRequest{Force: force})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

type rootView struct {
	skid  string
	state string
}

func rootsOf(st *pb.StatusResponse) []rootView {
	var out []rootView
	for _, r := range st.GetRoots() {
		out = append(out, rootView{r.GetSubjectKeyId(), r.GetState()})
	}
	return out
}

func checkStatus(t *testing.T, h *harness, phase string, roots []rootView, waiting string) *pb.StatusResponse {
	t.Helper()
	st := h.status()
	if st.GetRotationPhase() != phase || !slices.Equal(rootsOf(st), roots) || st.GetWaitingFor() != waiting {
		t.Fatalf("status: phase %s, roots %v, waiting for %q\nwant phase %s, roots %v, waiting for %q",
			st.GetRotationPhase(), rootsOf(st), st.GetWaitingFor(), phase, roots, waiting)
	}
	return st
}

// The whole rotation of the shared root, each phase ended by what the
// members report.
func TestRotationWalkDrivenByReports(t *testing.T) {
	h := newHarness(t, nil)
	e := h.member(east).mustJoin()
	w := h.member(west).mustJoin()
	oldRoot := h.rootsFile()[0]
	o := skid(oldRoot)
	checkStatus(t, h, "stable", []rootView{{o, "active"}}, "")

	st := rotate(t, h, false)
	newRoot, err := x509.ParseCertificate(st.GetRoots()[1].GetCertificate())
	if err != nil {
		t.Fatal(err)
	}
	n := skid(newRoot)
	if n == o || newRoot.Subject.String() == oldRoot.Subject.String() || newRoot.Subject.CommonName != "virtual-mesh root CA 2" {
		t.Fatalf("new root %s (%s) is not distinct from %s (%s)", newRoot.Subject, n, oldRoot.Subject, o)
	}
	if got := h.rootsFile(); len(got) != 2 || !got[1].Equal(newRoot) {
		t.Errorf("root-cert.pem holds %d roots during publishing", len(got))
	}
	checkStatus(t, h, "publishing", []rootView{{o, "active"}, {n, "published"}},
		"east.example has not applied generation 2 (the new root); west.example has not applied generation 2 (the new root)")

	e.sync()
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2, Agents: 3, AgentsCurrent: 1, LiveSvidsByRoot: map[string]int64{o: 5}})
	checkStatus(t, h, "publishing", []rootView{{o, "active"}, {n, "published"}},
		"east.example: 2 of 3 agents do not have the new root yet; west.example has not applied generation 2 (the new root)")
	_, err = h.admin.RotateRoot(context.Background(), &pb.RotateRootRequest{})
	if got, want := statusText(err), "FailedPrecondition: federation controller: the rotation cannot leave phase publishing yet; waiting for: east.example: 2 of 3 agents do not have the new root yet; west.example has not applied generation 2 (the new root) (force advances anyway)"; got != want {
		t.Errorf("RotateRoot too early:\n got %s\nwant %s", got, want)
	}
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2, Agents: 3, AgentsCurrent: 3, LiveSvidsByRoot: map[string]int64{o: 5}})
	w.sync()
	w.mustReport(&pb.MemberReport{AppliedGeneration: 2})

	// Every member and agent trusts the new root: it signs now.
	checkStatus(t, h, "reissuing", []rootView{{o, "retiring"}, {n, "active"}},
		"east.example: its intermediate chains to the old root; waiting for it to renew; west.example: its intermediate chains to the old root; waiting for it to renew")
	h.c.mu.Lock()
	serving := h.c.serving.Load().tls.Leaf
	h.c.mu.Unlock()
	if err := serving.CheckSignatureFrom(newRoot); err != nil {
		t.Errorf("the serving certificate is not re-issued by the new root: %v", err)
	}
	oldSVID := e.svid
	if st := e.sync(); st.GetGeneration() != 3 || !slices.Equal(st.GetSigningRoot(), newRoot.Raw) {
		t.Fatalf("state after publishing: %v", st)
	}
	if err := e.renew(); err != nil {
		t.Fatal(err)
	}
	if err := e.inter.CheckSignatureFrom(newRoot); err != nil {
		t.Fatalf("renewed intermediate is not under the new root: %v", err)
	}
	checkStatus(t, h, "reissuing", []rootView{{o, "retiring"}, {n, "active"}},
		"east.example has not reported since generation 3; west.example: its intermediate chains to the old root; waiting for it to renew")
	e.mustReport(&pb.MemberReport{AppliedGeneration: 3, LiveSvidsByRoot: map[string]int64{o: 5, n: 1}})
	w.sync()
	if err := w.renew(); err != nil {
		t.Fatal(err)
	}
	w.mustReport(&pb.MemberReport{AppliedGeneration: 3})

	// Every intermediate is under the new root: the old one is retiring.
	checkStatus(t, h, "retiring", []rootView{{o, "retiring"}, {n, "active"}},
		"east.example has not reported since generation 4; west.example has not reported since generation 4")
	e.sync()
	e.mustReport(&pb.MemberReport{AppliedGeneration: 4, LiveSvidsByRoot: map[string]int64{o: 2, n: 5}})
	w.sync()
	w.mustReport(&pb.MemberReport{AppliedGeneration: 4, LiveSvidsByRoot: map[string]int64{n: 1}})
	st = checkStatus(t, h, "retiring", []rootView{{o, "retiring"}, {n, "active"}}, "east.example: 2 live SVIDs chain to the old root")
	if ms := st.GetMembers()[0]; ms.GetLiveSvidsByRoot()[o] != 2 || ms.GetRootSubjectKeyId() != n || ms.GetAppliedGeneration() != 4 {
		t.Errorf("status of east: %v", ms)
	}
	e.mustReport(&pb.MemberReport{AppliedGeneration: 4, LiveSvidsByRoot: map[string]int64{n: 7}})

	// Nobody depends on the old root: it is gone.
	st = checkStatus(t, h, "stable", []rootView{{n, "active"}}, "")
	if st.GetGeneration() != 5 {
		t.Errorf("generation %d after the rotation, want 5", st.GetGeneration())
	}
	if got := h.rootsFile(); len(got) != 1 || !got[0].Equal(newRoot) {
		t.Errorf("root-cert.pem after the rotation holds %d roots", len(got))
	}
	if _, err := os.Stat(filepath.Join(h.dir, "root-1.key")); !os.IsNotExist(err) {
		t.Errorf("the retired root's key is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "root-2.key")); err != nil {
		t.Errorf("the active root's key: %v", err)
	}
	stale := &member{h: h, td: east, roots: e.roots, svid: oldSVID}
	if got := statusText(stale.report(&pb.MemberReport{})); !strings.HasPrefix(got, "Unauthenticated: federation controller: the SVID spiffe://east.example/meshfed/server does not verify against the VirtualMesh's roots") {
		t.Errorf("an SVID under the retired root: %s", got)
	}
	e.mustReport(&pb.MemberReport{AppliedGeneration: 5})
}

func TestRotateRootForce(t *testing.T) {
	logs := &testsync.Buffer{}
	h := newHarness(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	e := h.member(east).mustJoin()
	st := rotate(t, h, false)
	n := st.GetRoots()[1].GetSubjectKeyId()
	st = rotate(t, h, true)
	if st.GetRotationPhase() != "reissuing" || st.GetWaitingFor() != "east.example: its intermediate chains to the old root; waiting for it to renew" {
		t.Fatalf("forced: phase %s, waiting for %q", st.GetRotationPhase(), st.GetWaitingFor())
	}
	if !strings.Contains(logs.String(), `msg="rotation phase forced forward" virtual_mesh=virtual-mesh from=publishing to=reissuing generation=3 signing_root=`+n+` not_waited_for="east.example has not applied generation 2 (the new root)"`) {
		t.Errorf("log does not say what was forced:\n%s", logs.String())
	}
	rotate(t, h, true)
	st = rotate(t, h, true)
	if st.GetRotationPhase() != "stable" || !slices.Equal(rootsOf(st), []rootView{{n, "active"}}) {
		t.Fatalf("after forcing through: %v", rootsOf(st))
	}
	// East never renewed: its SVID chains to a root that is gone, and it
	// must join again.
	e.roots = h.rootsFile()
	if got := statusText(e.report(&pb.MemberReport{})); !strings.HasPrefix(got, "Unauthenticated: ") {
		t.Errorf("east after the forced rotation: %s", got)
	}
}

// TestWatchEndsWhenTheMemberSVIDExpires: a member's Watch stream outlives
// the SVID it was opened with; the next state after that SVID expired is
// not sent, the stream ends Unauthenticated, and the member reconnects
// with a current SVID.
func TestWatchEndsWhenTheMemberSVIDExpires(t *testing.T) {
	h, e, stream := watchingMember(t)
	if st, err := stream.Recv(); err != nil || st.GetGeneration() != 1 {
		t.Fatalf("first state: %v, %v", st, err)
	}
	h.clock.Advance(e.svid.Leaf.NotAfter.Sub(h.clock.Now()) + time.Second)
	rotate(t, h, false)
	st, err := stream.Recv()
	if got := statusText(err); !strings.HasPrefix(got, "Unauthenticated: federation controller: the SVID spiffe://east.example/meshfed/server does not verify against the VirtualMesh's roots") ||
		!strings.Contains(got, "expired") {
		t.Fatalf("after the member's SVID expired: generation %d sent, %s; want the stream ended, naming the expiry", st.GetGeneration(), got)
	}
}
