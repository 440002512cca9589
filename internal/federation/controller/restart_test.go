package controller

import (
	"context"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testsync"
)

// A restart from the state file keeps spent tokens spent, unspent ones
// usable, members joined and the rotation where it was; the state holds no
// token and no key.
func TestRestartKeepsTokensMembersAndRotation(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: t0}
	h := start(t, dir, clock, nil)
	spent := h.token(east)
	spare := h.token(west)
	e := h.member(east)
	if err := e.join(spent); err != nil {
		t.Fatal(err)
	}
	before := rotate(t, h, false)
	h.stop()

	h2 := start(t, dir, clock, nil)
	after := h2.status()
	if after.GetRotationPhase() != "publishing" || after.GetGeneration() != 2 || !slices.Equal(rootsOf(after), rootsOf(before)) {
		t.Fatalf("after the restart: phase %s, generation %d, roots %v; before: %v", after.GetRotationPhase(), after.GetGeneration(), rootsOf(after), rootsOf(before))
	}
	if ms := after.GetMembers()[0]; !ms.GetJoined() || ms.GetIntermediateSerial() != e.inter.SerialNumber.Text(16) {
		t.Errorf("east after the restart: %v", ms)
	}
	e.h = h2
	e.roots = h2.rootsFile()
	if got, want := statusText(e.join(spent)), "Unauthenticated: federation controller: join token sha256:"+hashPrefix(spent)+" is unknown, expired or already used"; got != want {
		t.Errorf("the spent token after the restart:\n got %s\nwant %s", got, want)
	}
	e.mustReport(&pb.MemberReport{AppliedGeneration: 2}) // still a member: its SVID is accepted
	if err := h2.member(west).join(spare); err != nil {
		t.Errorf("the unspent token after the restart: %v", err)
	}

	state, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{spent, spare} {
		if strings.Contains(string(state), tok) {
			t.Error("the state file holds a token")
		}
	}
	if strings.Contains(string(state), "PRIVATE KEY") {
		t.Error("the state file holds a key")
	}
	for name, want := range map[string]os.FileMode{".": 0o700 | os.ModeDir, stateFile: 0o600, "root-1.key": 0o600, "root-2.key": 0o600, rootCertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %s, want %s", name, fi.Mode(), want)
		}
	}
}

func TestNewRefusals(t *testing.T) {
	used := t.TempDir()
	h := start(t, used, &fakeClock{now: t0}, nil)
	h.stop()
	other := strings.Replace(testMesh, "name: virtual-mesh", "name: other-mesh", 1)
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no mesh", Config{DataDir: t.TempDir()}, "federation controller: no VirtualMesh"},
		{"no data dir", Config{Mesh: mesh(t, testMesh)}, "federation controller: no data dir"},
		{"data dir of another VirtualMesh", Config{Mesh: mesh(t, other), DataDir: used, Listen: "127.0.0.1:0"},
			`federation controller: data dir ` + used + ` belongs to VirtualMesh "virtual-mesh", not "other-mesh"; give another --data-dir`},
		{"token TTL", Config{Mesh: mesh(t, testMesh), DataDir: t.TempDir(), TokenTTL: 8 * day}, "federation controller: token TTL 192h0m0s is longer than 168h0m0s"},
		{"bad listen", Config{Mesh: mesh(t, testMesh), DataDir: t.TempDir(), Listen: "127.0.0.1:http-nope"},
			"federation controller: listen: listen tcp: lookup tcp/http-nope: unknown port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Clock = func() time.Time { return t0 }
			c, err := New(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("New accepted it")
			}
			if err.Error() != tc.want {
				t.Errorf("New:\n got %s\nwant %s", err, tc.want)
			}
		})
	}
}

// An operator's root given as files is used as it is, its key left in
// place; a rotation makes the next root like it.
func TestRootFromFiles(t *testing.T) {
	op := t.TempDir()
	key := newKey(t)
	root, err := pki.CreateRoot(pki.RootRequest{Signer: key, Organization: "acme", CommonName: "acme root", TTL: 100 * day, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	pemKey, _ := pemfile.EncodePrivateKey(key)
	if err := pemfile.WriteFiles(op, pemfile.File{Name: "root.pem", Data: pemfile.EncodeCertificates(root), Mode: 0o644},
		pemfile.File{Name: "root.key", Data: pemKey, Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	yaml := strings.Replace(testMesh, "generated: {ttlDays: 356, orgName: service-mesh-hub}",
		"files: {rootCertFile: "+filepath.Join(op, "root.pem")+", rootKeyFile: "+filepath.Join(op, "root.key")+"}", 1)
	h := newHarness(t, func(c *Config) { c.Mesh = mesh(t, yaml) })
	if got := h.rootsFile(); len(got) != 1 || !got[0].Equal(root) {
		t.Fatalf("root-cert.pem does not hold the operator's root")
	}
	e := h.member(east).mustJoin()
	if err := e.inter.CheckSignatureFrom(root); err != nil || e.inter.Subject.Organization[0] != "acme" {
		t.Errorf("intermediate %s not signed by the operator's root: %v", e.inter.Subject, err)
	}
	rotate(t, h, false)
	st := rotate(t, h, true)
	st = rotate(t, h, true)
	st = rotate(t, h, true)
	if st.GetRotationPhase() != "stable" || len(st.GetRoots()) != 1 {
		t.Fatalf("after the rotation: %s, %d roots", st.GetRotationPhase(), len(st.GetRoots()))
	}
	next := h.rootsFile()[0]
	if next.Subject.Organization[0] != "acme" || next.NotAfter.Sub(next.NotBefore) != root.NotAfter.Sub(root.NotBefore)+pki.Backdate || pki.DescribeKey(next.PublicKey) != "ECDSA P-256" {
		t.Errorf("next root: %s, %s to %s, %s", next.Subject, next.NotBefore, next.NotAfter, pki.DescribeKey(next.PublicKey))
	}
	if _, err := os.Stat(filepath.Join(op, "root.key")); err != nil {
		t.Errorf("the operator's key file after its root retired: %v", err)
	}
}

func TestScheduledRotation(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RotateRootBefore = 30 * day })
	h.member(east).mustJoin()
	h.clock.Advance(356*day - 30*day - time.Second)
	h.c.tick()
	if st := h.status(); st.GetRotationPhase() != "stable" {
		t.Fatalf("phase %s a second before the schedule", st.GetRotationPhase())
	}
	h.clock.Advance(time.Second)
	h.c.tick()
	if st := h.status(); st.GetRotationPhase() != "publishing" || len(st.GetRoots()) != 2 {
		t.Fatalf("phase %s with %d roots at the schedule", st.GetRotationPhase(), len(st.GetRoots()))
	}
}

func TestRotationDue(t *testing.T) {
	nb := t0
	na := t0.Add(100 * day)
	cases := []struct {
		now    time.Time
		before time.Duration
		want   bool
	}{
		{t0, 0, false},
		{na.Add(-time.Second), 0, false},
		{na.Add(-30*day - time.Second), 30 * day, false},
		{na.Add(-30 * day), 30 * day, true},
		{na, 30 * day, true},
		// capped at half the lifetime: a 90-day margin on a 100-day root
		// starts at day 50, not day 10
		{t0.Add(49 * day), 90 * day, false},
		{t0.Add(50 * day), 90 * day, true},
	}
	for _, tc := range cases {
		if got := rotationDue(nb, na, tc.now, tc.before); got != tc.want {
			t.Errorf("rotationDue(now %s, before %s) = %v", tc.now.Sub(t0), tc.before, got)
		}
	}
}

func TestServingCertificate(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ServingTTL = 2 * time.Hour })
	cur := func() (serial string, c *servingCert) {
		s := h.c.serving.Load()
		return s.tls.Leaf.SerialNumber.Text(16), s
	}
	first, s := cur()
	l := s.tls.Leaf
	if len(l.URIs) != 1 || l.URIs[0].String() != "spiffe://virtual-mesh/meshfed/federation-controller" ||
		len(l.IPAddresses) != 1 || l.IPAddresses[0].String() != "127.0.0.1" || !l.NotAfter.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("serving certificate: URIs %v, IPs %v, not after %s", l.URIs, l.IPAddresses, l.NotAfter)
	}
	if err := l.CheckSignatureFrom(h.rootsFile()[0]); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	// Half its life, counted from its backdated start.
	h.clock.Advance(time.Hour - pki.Backdate/2 - time.Second)
	h.c.tick()
	if got, _ := cur(); got != first {
		t.Error("re-issued before half its life")
	}
	h.clock.Advance(time.Second)
	h.c.tick()
	second, _ := cur()
	if second == first {
		t.Error("not re-issued at half its life")
	}
	// Members see the new certificate on their next connection.
	e := h.member(east).mustJoin()
	e.mustReport(&pb.MemberReport{})
}

func TestServingNames(t *testing.T) {
	cases := []struct{ listen, dns, ips string }{
		{"127.0.0.1:9443", "", "127.0.0.1"},
		{"[::1]:9443", "", "::1"},
		{"federation.example:9443", "federation.example", ""},
		{":9443", "localhost", "127.0.0.1,::1"},
		{"0.0.0.0:9443", "localhost", "127.0.0.1,::1"},
	}
	for _, tc := range cases {
		dns, ips := servingNames(tc.listen)
		var ipText []string
		for _, ip := range ips {
			ipText = append(ipText, ip.String())
		}
		if strings.Join(dns, ",") != tc.dns || strings.Join(ipText, ",") != tc.ips {
			t.Errorf("servingNames(%s) = %v, %v", tc.listen, dns, ipText)
		}
	}
}

func TestAdminRefusals(t *testing.T) {
	h := newHarness(t, nil)
	e := h.member(east).mustJoin()
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"token for a non-member", func() error {
			_, err := h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: "north.example"})
			return err
		}, `InvalidArgument: federation controller: north.example is not a member of VirtualMesh "virtual-mesh"; add it to spec.meshes and restart the controller`},
		{"token for no trust domain", func() error {
			_, err := h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{})
			return err
		}, "InvalidArgument: federation controller: trust_domain: trust domain is missing"},
		{"token TTL too long", func() error {
			_, err := h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: "east.example", TtlSeconds: int64(8 * day / time.Second)})
			return err
		}, "InvalidArgument: federation controller: token TTL 192h0m0s; give 1s to 168h0m0s"},
		{"report with more current agents than agents", func() error {
			return e.report(&pb.MemberReport{Agents: 1, AgentsCurrent: 2})
		}, "InvalidArgument: federation controller: report: agents 1, agents_current 2: want 0 <= agents_current <= agents"},
		{"report with a negative count", func() error {
			return e.report(&pb.MemberReport{LiveSvidsByRoot: map[string]int64{"ab": -1}})
		}, "InvalidArgument: federation controller: report: live_svids_by_root: a key longer than 128 characters or a negative count"},
	}
	for _, tc := range cases {
		if got := statusText(tc.call()); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	resp, err := h.admin.CreateToken(context.Background(), &pb.CreateTokenRequest{TrustDomain: "west.example", TtlSeconds: 600})
	if err != nil || len(resp.GetToken()) != 43 || resp.GetExpiresAt() != t0.Add(10*time.Minute).Unix() {
		t.Errorf("CreateToken 10m = %v, %v", resp, err)
	}
}

func TestAdminSocketAllowsOnlyAllowedUIDs(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AllowedUIDs = []int{os.Getuid() + 1} })
	_, err := h.admin.Status(context.Background(), &pb.StatusRequest{})
	if got, want := statusText(err), "PermissionDenied: federation controller: uid "+strconv.Itoa(os.Getuid())+" may not use the admin socket"; got != want {
		t.Errorf("Status:\n got %s\nwant %s", got, want)
	}
	fi, err := os.Stat(h.c.AdminSocket())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, %v", fi.Mode(), err)
	}
}

// A retiring root never signs again, so a restart accepts it expired.
func TestRestartWithExpiredRetiringRoot(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{now: t0}
	short := strings.Replace(testMesh, "ttlDays: 356", "ttlDays: 2", 1)
	manual := func(c *Config) { c.Mesh = mesh(t, short); c.ManualRotation = true }
	h := start(t, dir, clock, manual)
	h.member(east).mustJoin()
	clock.Advance(day)
	rotate(t, h, false)
	rotate(t, h, true)
	st := rotate(t, h, true)
	if st.GetRotationPhase() != "retiring" {
		t.Fatalf("phase %s", st.GetRotationPhase())
	}
	h.stop()
	clock.Advance(day + time.Hour) // the first root expired an hour ago
	h2 := start(t, dir, clock, manual)
	if got := h2.status(); got.GetRotationPhase() != "retiring" || !slices.Equal(rootsOf(got), rootsOf(st)) {
		t.Errorf("after the restart: %s, %v", got.GetRotationPhase(), rootsOf(got))
	}
}

// A VirtualMesh whose root is given as files rotates to the next root
// given as files: the operator points the files at the next root (the
// controller reads the file again) and starts the rotation. A file that
// still holds the root in use makes the next root generated, as before;
// one holding a root with the key of a root in use, or a root a rotation
// retired, is refused.
func TestRotationToNextRootFromFiles(t *testing.T) {
	op := t.TempDir()
	writeRoot := func(name string, key crypto.Signer, cn string) *x509.Certificate {
		t.Helper()
		root, err := pki.CreateRoot(pki.RootRequest{Signer: key, Organization: "acme", CommonName: cn, TTL: 100 * day, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		pemKey, _ := pemfile.EncodePrivateKey(key)
		if err := pemfile.WriteFiles(op, pemfile.File{Name: name + ".pem", Data: pemfile.EncodeCertificates(root), Mode: 0o644},
			pemfile.File{Name: name + ".key", Data: pemKey, Mode: 0o600}); err != nil {
			t.Fatal(err)
		}
		return root
	}
	key1 := newKey(t)
	root1 := writeRoot("root1", key1, "acme root 1")
	writeRoot("root1-again", key1, "acme root 1 again") // the same key
	root2 := writeRoot("root2", newKey(t), "acme root 2")
	filesMesh := func(name string) string {
		return strings.Replace(testMesh, "generated: {ttlDays: 356, orgName: service-mesh-hub}",
			"files: {rootCertFile: "+filepath.Join(op, name+".pem")+", rootKeyFile: "+filepath.Join(op, name+".key")+"}", 1)
	}
	dir := t.TempDir()
	writeMesh(t, filepath.Join(dir, "vm.yaml"), filesMesh("root1"))
	logs := &testsync.Buffer{}
	h, file := fileHarness(t, dir, &fakeClock{now: t0}, logs)
	if got := h.rootsFile(); len(got) != 1 || !got[0].Equal(root1) {
		t.Fatal("root-cert.pem does not hold the operator's first root")
	}
	h.member(east).mustJoin()

	writeMesh(t, file, filesMesh("root1-again"))
	h.mustReload(true)
	_, err := h.admin.RotateRoot(context.Background(), &pb.RotateRootRequest{})
	if got := statusText(err); !strings.Contains(got, "the next root in "+filepath.Join(op, "root1-again.pem")+" has the subject key ID "+skid(root1)+" of a root in use; the next root needs a key of its own") {
		t.Errorf("a next root with the old key: %s", got)
	}

	writeMesh(t, file, filesMesh("root2"))
	h.mustReload(true)
	st := rotate(t, h, false)
	if !slices.Equal(rootsOf(st), []rootView{{skid(root1), "active"}, {skid(root2), "published"}}) {
		t.Fatalf("after rotate-root: %v", rootsOf(st))
	}
	if !strings.Contains(logs.String(), "source=files") {
		t.Errorf("the log does not say where the new root came from:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(h.dir, "root-2.key")); !os.IsNotExist(err) {
		t.Errorf("the operator's next key was copied into the data dir: %v", err)
	}
	rotate(t, h, true)
	rotate(t, h, true)
	st = rotate(t, h, true)
	if st.GetRotationPhase() != "stable" || !slices.Equal(rootsOf(st), []rootView{{skid(root2), "active"}}) {
		t.Fatalf("after the rotation: %s, %v", st.GetRotationPhase(), rootsOf(st))
	}
	if got := h.rootsFile(); len(got) != 1 || !got[0].Equal(root2) {
		t.Error("root-cert.pem does not hold the operator's second root alone")
	}
	for _, name := range []string{"root1.key", "root2.key"} {
		if _, err := os.Stat(filepath.Join(op, name)); err != nil {
			t.Errorf("the operator's %s: %v", name, err)
		}
	}

	// The retired first root is not taken back.
	writeMesh(t, file, filesMesh("root1"))
	h.mustReload(true)
	_, err = h.admin.RotateRoot(context.Background(), &pb.RotateRootRequest{})
	if got := statusText(err); !strings.Contains(got, "the next root in "+filepath.Join(op, "root1.pem")+" is root "+skid(root1)+", which a rotation retired; a retired root is not trusted again") {
		t.Errorf("the retired root as the next one: %s", got)
	}
	writeMesh(t, file, filesMesh("root2"))
	h.mustReload(true)

	// The files still hold the root in use: the next one is generated.
	st = rotate(t, h, false)
	if len(st.GetRoots()) != 2 || !strings.HasSuffix(st.GetRoots()[1].GetState(), "published") {
		t.Fatalf("the next rotation: %v", rootsOf(st))
	}
	if _, err := os.Stat(filepath.Join(h.dir, "root-3.key")); err != nil {
		t.Errorf("the generated root's key: %v", err)
	}
}
