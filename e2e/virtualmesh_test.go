package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// The VirtualMesh of the Service Mesh Hub blog post (seed 000), with
// meshfed's one addition per mesh: its trust domain.
const virtualMeshYAML = `apiVersion: networking.smh.solo.io/v1alpha2
kind: VirtualMesh
metadata:
  name: virtual-mesh
  namespace: service-mesh-hub
spec:
  mtlsConfig:
    autoRestartPods: true
    shared:
      rootCertificateAuthority:
        generated: null
  federation: {}
  meshes:
  - name: istiod-istio-system-east
    namespace: service-mesh-hub
    trustDomain: east.example
  - name: istiod-istio-system-west
    namespace: service-mesh-hub
    trustDomain: west.example
`

// restartLine is a log line that mentions a restart.
var restartLine = regexp.MustCompile(`(?i)[^\n]*restart[^\n]*`)

// virtualMeshStatus is `meshfed federation status -o json`, in full.
type virtualMeshStatus struct {
	Generation    uint64 `json:"generation"`
	RotationPhase string `json:"rotation_phase"`
	WaitingFor    string `json:"waiting_for"`
	Roots         []struct {
		SubjectKeyID string `json:"subject_key_id"`
		State        string `json:"state"`
		Subject      string `json:"subject"`
		Certificate  string `json:"certificate"`
	} `json:"roots"`
	Members []struct {
		TrustDomain        string           `json:"trust_domain"`
		Joined             bool             `json:"joined"`
		IntermediateSerial string           `json:"intermediate_serial"`
		RootSubjectKeyID   string           `json:"root_subject_key_id"`
		AppliedGeneration  uint64           `json:"applied_generation"`
		LiveSVIDsByRoot    map[string]int64 `json:"live_svids_by_root"`
	} `json:"members"`
}

func virtualMeshStatusOf(t *testing.T, dir, sock string) virtualMeshStatus {
	t.Helper()
	var st virtualMeshStatus
	out := meshfed(t, dir, "federation", "status", "--admin-socket", sock, "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("federation status -o json: %v\n%s", err, out)
	}
	return st
}

// onlyRoot is the one root of a stable VirtualMesh.
func (st virtualMeshStatus) onlyRoot(t *testing.T) (*x509.Certificate, string) {
	t.Helper()
	if len(st.Roots) != 1 || st.Roots[0].State != "active" {
		t.Fatalf("VirtualMesh roots %+v, want one active root", st.Roots)
	}
	certs, err := pemfile.ParseCertificates([]byte(st.Roots[0].Certificate))
	if err != nil || len(certs) != 1 {
		t.Fatalf("the root in the status: %v", err)
	}
	return certs[0], st.Roots[0].SubjectKeyID
}

// serials are the members' current intermediates, by trust domain.
func (st virtualMeshStatus) serials() map[string]string {
	out := map[string]string{}
	for _, m := range st.Members {
		out[m.TrustDomain] = m.IntermediateSerial
	}
	return out
}

// gate stands between the members and the controller: a TCP forwarder that
// drops every connection until it is opened, as a network that is down.
type gate struct {
	ln   net.Listener
	open atomic.Bool
}

func startGate(t *testing.T, to string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at the end of the test
			}
			if !g.open.Load() {
				c.Close()
				continue
			}
			go forward(c, to)
		}
	}()
	return g
}

// forward copies both ways until either side closes.
func forward(c net.Conn, to string) {
	defer c.Close()
	up, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// vmMember is one member trust domain: its server, its agent, and the
// Workload API socket of the test's workload there.
type vmMember struct {
	td       spiffeid.TrustDomain
	id       spiffeid.ID
	sock     string
	server   *serverProc
	agent    *agentProc
	workload string
	selfRoot *x509.Certificate // the self-signed root it starts with
	// token is its one-time join token, and tokenFile where the server
	// looks for it (written only when the test lets the member join).
	token, tokenFile string
}

// startMember runs a server that is a member of the VirtualMesh behind
// controller, its join token not yet in its token file, and an agent whose
// one entry is the test process's uid as id (no --federates-with: the
// VirtualMesh federates every workload).
func startMember(t *testing.T, dir, controller, ctrlSock string, id spiffeid.ID) *vmMember {
	t.Helper()
	td := id.TrustDomain()
	name := strings.TrimSuffix(td.Name(), ".example")
	m := &vmMember{td: td, id: id, sock: filepath.Join(dir, name, "admin.sock"), workload: filepath.Join(dir, name+"-agent", "workload.sock")}
	m.token = meshfed(t, dir, "federation", "token", "create", "--admin-socket", ctrlSock, "--trust-domain", td.Name()).stdout
	m.tokenFile = filepath.Join(dir, name+"-vm-token")
	tokenFile := m.tokenFile
	// Short lifetimes, so that the SVIDs signed under the old root expire
	// within the test and the rotation's retiring phase can end.
	writeFile(t, filepath.Join(dir, name+".yaml"), fmt.Sprintf(`svid:
  default_ttl: 20s
  node_ttl: 20s
federation:
  virtual_mesh:
    controller: %s
    controller_ca_file: %s
    join_token_file: %s
`, controller, filepath.Join(dir, "ctrl", "root-cert.pem"), tokenFile))
	m.server = startServer(t, dir, "--config", name+".yaml", "--trust-domain", td.Name(), "--data-dir", name, "--admin-socket", m.sock)
	logOnFailure(t, td.Name()+" server", m.server.logs)
	self, err := pemfile.ReadCertificates(filepath.Join(dir, name, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	m.selfRoot = self[0]
	node := "spiffe://" + td.Name() + "/node/host-1"
	nodeToken := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", m.sock, "--spiffe-id", node).stdout)
	meshfed(t, dir, "entry", "create", "--admin-socket", m.sock, "--parent-id", node, "--spiffe-id", id.String(),
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	m.agent = startAgent(t, dir, "--server", m.server.listen, "--trust-bundle", filepath.Join(name, "ca", "ca.pem"), "--join-token", nodeToken,
		"--data-dir", name+"-agent", "--socket", m.workload)
	logOnFailure(t, td.Name()+" agent", m.agent.logs)
	return m
}

// startController runs 'meshfed federation run' on vm.yaml in dir (written
// with virtualMeshYAML), its data in dir/ctrl, intermediates of 10 minutes
// and no scheduled rotation, and waits until it serves. It returns the
// controller, its address, its admin socket and the address of its metrics.
func startController(t *testing.T, dir string) (ctrl *daemon, addr, sock, metrics string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "vm.yaml"), virtualMeshYAML)
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metrics = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctrl = startDaemon(t, dir, "federation controller", meshfedBin, "federation", "run", "--config", "vm.yaml", "--data-dir", "ctrl",
		"--listen", addr, "--intermediate-ttl", "10m", "--rotate-root-before", "off", "--metrics-listen", metrics)
	sock = filepath.Join(dir, "ctrl", "admin.sock")
	testsync.EventuallyWithin(t, 30*time.Second, "the controller's admin socket and root-cert.pem", func() bool {
		ctrl.mustRun(t)
		_, errSock := os.Stat(sock)
		_, errRoot := os.Stat(filepath.Join(dir, "ctrl", "root-cert.pem"))
		return errSock == nil && errRoot == nil && strings.Contains(ctrl.logs.String(), "federation controller started")
	})
	return ctrl, addr, sock, metrics
}

// chainsTo checks that src's SVID verifies against root alone.
func chainsTo(src *workloadapi.X509Source, root *x509.Certificate) error {
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	_, _, err = x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(svid.ID.TrustDomain(), []*x509.Certificate{root}))
	return err
}

// trustsOnly reports whether src's bundle of every td holds exactly root.
func trustsOnly(src *workloadapi.X509Source, root *x509.Certificate, tds ...spiffeid.TrustDomain) bool {
	for _, td := range tds {
		b, err := src.GetX509BundleForTrustDomain(td)
		if err != nil || len(b.X509Authorities()) != 1 || !b.HasX509Authority(root) {
			return false
		}
	}
	return true
}

// trusts reports whether src's bundle of every td holds root.
func trusts(src *workloadapi.X509Source, root *x509.Certificate, tds ...spiffeid.TrustDomain) bool {
	for _, td := range tds {
		b, err := src.GetX509BundleForTrustDomain(td)
		if err != nil || !b.HasX509Authority(root) {
			return false
		}
	}
	return true
}

// handshakesBack opens mTLS connections from west's workload to east's,
// the way handshakes.run does the other way, one listener per connection,
// until stop is closed; both sides check the other's exact SPIFFE ID.
func handshakesBack(h *handshakes, t *testing.T, client, server *workloadapi.X509Source, stop <-chan struct{}) {
	serverCfg := tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeID(ratingsWest))
	clientCfg := tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(reviewsEast))
	for {
		select {
		case <-stop:
			return
		default:
		}
		serverSaw, clientSaw, serverErr, clientErr := handshake(t, serverCfg, clientCfg)
		h.mu.Lock()
		if serverErr != nil || clientErr != nil || serverSaw != ratingsWest || clientSaw != reviewsEast {
			h.fail++
			if len(h.errs) < 5 {
				h.errs = append(h.errs, fmt.Sprintf("server saw %v (%v), client saw %v (%v)", serverSaw, serverErr, clientSaw, clientErr))
			}
		} else {
			h.ok++
		}
		h.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *handshakes) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ok + h.fail
}

// TestVirtualMeshJoinAndRootRotationNoFailedHandshakes tells the story of
// seed 000 with real processes: two trust domains, each with its own
// self-signed root, cannot verify each other; they join a VirtualMesh
// (`meshfed federation run`) without a restart and then do, under one shared
// root. Then the shared root is rotated, one command, while a workload of
// each side keeps opening mTLS connections to the other: every handshake
// succeeds, no process restarts, and the VirtualMesh ends with one new root
// that every SVID and bundle has moved to.
func TestVirtualMeshJoinAndRootRotationNoFailedHandshakes(t *testing.T) {
	start := time.Now()
	dir := t.TempDir()
	eastTD, westTD := reviewsEast.TrustDomain(), ratingsWest.TrustDomain()

	// 1. The controller, with a generated root. Intermediates live longer
	// than the test (a member renews at half their life), so the only
	// re-issue is the rotation's; no rotation starts on a schedule.
	ctrl, ctrlAddr, ctrlSock, _ := startController(t, dir)
	root1, skid1 := virtualMeshStatusOf(t, dir, ctrlSock).onlyRoot(t)
	if got, _ := pemfile.ReadCertificates(filepath.Join(dir, "ctrl", "root-cert.pem")); len(got) != 1 || !got[0].Equal(root1) {
		t.Fatal("root-cert.pem does not hold exactly the root the status shows")
	}

	// 2. The members start before they have a join token, and while the
	// controller is unreachable, so the moment before the join lasts until
	// the test lets it end.
	g := startGate(t, ctrlAddr)
	east := startMember(t, dir, g.ln.Addr().String(), ctrlSock, reviewsEast)
	west := startMember(t, dir, g.ln.Addr().String(), ctrlSock, ratingsWest)
	for _, m := range []*vmMember{east, west} {
		testsync.EventuallyWithin(t, 10*time.Second, m.td.Name()+"'s first join attempt to fail", func() bool {
			return strings.Contains(m.server.logs.String(), "VirtualMesh membership stopped; signing with the CA in use and retrying")
		})
	}
	eastSrc, westSrc := x509Source(t, east.workload), x509Source(t, west.workload)
	for _, c := range []struct {
		src  *workloadapi.X509Source
		m    *vmMember
		peer spiffeid.TrustDomain
	}{{eastSrc, east, westTD}, {westSrc, west, eastTD}} {
		if err := chainsTo(c.src, c.m.selfRoot); err != nil {
			t.Errorf("before the join, %s's workload SVID does not chain to its self-signed root: %v", c.m.td, err)
		}
		if _, err := c.src.GetX509BundleForTrustDomain(c.peer); err == nil {
			t.Errorf("before the join, %s's workload has a bundle of %s", c.m.td, c.peer)
		}
	}
	for _, tc := range []struct {
		name                 string
		client, server       *workloadapi.X509Source
		clientID, serverID   spiffeid.ID
		clientErr, serverErr string
	}{
		{"east dials west", eastSrc, westSrc, reviewsEast, ratingsWest,
			`x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "west.example"`, "remote error: tls: bad certificate"},
		{"west dials east", westSrc, eastSrc, ratingsWest, reviewsEast,
			`x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "east.example"`, "remote error: tls: bad certificate"},
	} {
		_, _, serverErr, clientErr := handshake(t,
			tlsconfig.MTLSServerConfig(tc.server, tc.server, tlsconfig.AuthorizeID(tc.clientID)),
			tlsconfig.MTLSClientConfig(tc.client, tc.client, tlsconfig.AuthorizeID(tc.serverID)))
		if fmt.Sprint(clientErr) != tc.clientErr || fmt.Sprint(serverErr) != tc.serverErr {
			t.Errorf("before the join, %s: client error %v, server error %v; want %q and %q", tc.name, clientErr, serverErr, tc.clientErr, tc.serverErr)
		}
	}
	if st := virtualMeshStatusOf(t, dir, ctrlSock); st.Members[0].Joined || st.Members[1].Joined {
		t.Fatalf("a member joined through a closed gate: %+v", st.Members)
	}

	// 3. The network comes up: both running servers join on their next
	// retry (the token file is read again at each), and move onto the
	// shared root, with no restart.
	joinAt := time.Now()
	for _, m := range []*vmMember{east, west} {
		writeFile(t, m.tokenFile, m.token)
	}
	g.open.Store(true)
	testsync.EventuallyWithin(t, 45*time.Second, "both members to join", func() bool {
		st := virtualMeshStatusOf(t, dir, ctrlSock)
		time.Sleep(100 * time.Millisecond)
		return len(st.Members) == 2 && st.Members[0].Joined && st.Members[1].Joined
	})
	// 4. Both workloads get SVIDs under the shared root and both bundles.
	testsync.EventuallyWithin(t, 45*time.Second, "both workloads to hold SVIDs under the shared root and both bundles", func() bool {
		return chainsTo(eastSrc, root1) == nil && chainsTo(westSrc, root1) == nil &&
			trusts(eastSrc, root1, eastTD, westTD) && trusts(westSrc, root1, eastTD, westTD)
	})
	t.Logf("joined and serving under the shared root %.1fs after the gate opened", time.Since(joinAt).Seconds())
	before := virtualMeshStatusOf(t, dir, ctrlSock)
	serials1 := before.serials()
	pids := map[string]int{"controller": ctrl.cmd.Process.Pid}
	for _, m := range []*vmMember{east, west} {
		pids[m.td.Name()+" server"], pids[m.td.Name()+" agent"] = m.server.cmd.Process.Pid, m.agent.cmd.Process.Pid
	}

	var forth, back handshakes
	stop := make(chan struct{})
	forthDone, backDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(forthDone); forth.run(t, eastSrc, westSrc, stop) }()
	go func() { defer close(backDone); handshakesBack(&back, t, westSrc, eastSrc, stop) }()
	testsync.EventuallyWithin(t, 10*time.Second, "the first handshakes both ways", func() bool { return forth.count() >= 5 && back.count() >= 5 })

	rotateAt := time.Now()
	out := meshfed(t, dir, "federation", "rotate-root", "--admin-socket", ctrlSock).stdout
	if !strings.Contains(out, "publishing") {
		t.Fatalf("rotate-root:\n%s", out)
	}
	phases := map[string]bool{}
	var final virtualMeshStatus
	testsync.EventuallyWithin(t, 90*time.Second, "the rotation to go back to stable with every member under the new root", func() bool {
		final = virtualMeshStatusOf(t, dir, ctrlSock)
		phases[final.RotationPhase] = true
		time.Sleep(200 * time.Millisecond)
		if final.RotationPhase != "stable" || !phases["retiring"] || len(final.Roots) != 1 {
			return false
		}
		for _, m := range final.Members {
			if m.RootSubjectKeyID != final.Roots[0].SubjectKeyID || m.AppliedGeneration != final.Generation {
				return false
			}
		}
		return true
	})
	root2, skid2 := final.onlyRoot(t)
	t.Logf("rotation back to stable %.1fs after rotate-root (phases seen: %v)", time.Since(rotateAt).Seconds(), phases)
	// Keep the traffic going until both workloads trust the new root alone.
	testsync.EventuallyWithin(t, 30*time.Second, "both workloads' bundles to hold only the new root", func() bool {
		return trustsOnly(eastSrc, root2, eastTD, westTD) && trustsOnly(westSrc, root2, eastTD, westTD)
	})
	close(stop)
	<-forthDone
	<-backDone

	// 5. What the rotation must have done.
	for _, c := range []struct {
		name string
		h    *handshakes
	}{{"east to west", &forth}, {"west to east", &back}} {
		c.h.mu.Lock()
		t.Logf("%s: %d handshakes during the rotation, %d failed", c.name, c.h.ok+c.h.fail, c.h.fail)
		if c.h.fail != 0 || c.h.ok < 100 {
			t.Errorf("%s: %d handshakes succeeded, %d failed: %v", c.name, c.h.ok, c.h.fail, c.h.errs)
		}
		c.h.mu.Unlock()
	}
	if skid2 == skid1 || root2.Subject.String() == root1.Subject.String() {
		t.Errorf("the root after the rotation, %q (%s), is not a new one; before: %q (%s)", root2.Subject, skid2, root1.Subject, skid1)
	}
	if root2.Subject.CommonName != "virtual-mesh root CA 2" {
		t.Errorf("the new root is %q, want the VirtualMesh's second root", root2.Subject.CommonName)
	}
	if got, _ := pemfile.ReadCertificates(filepath.Join(dir, "ctrl", "root-cert.pem")); len(got) != 1 || !got[0].Equal(root2) {
		t.Error("root-cert.pem does not hold exactly the new root")
	}
	for _, m := range final.Members {
		if m.LiveSVIDsByRoot[skid1] != 0 || m.LiveSVIDsByRoot[skid2] == 0 {
			t.Errorf("%s reports live SVIDs by root %v; want none under the old root %s and some under the new %s", m.TrustDomain, m.LiveSVIDsByRoot, skid1, skid2)
		}
	}
	serials2 := final.serials()
	for _, m := range []*vmMember{east, west} {
		td := m.td.Name()
		if serials2[td] == "" || serials2[td] == serials1[td] {
			t.Errorf("%s's intermediate was not re-issued: %s before, %s after", td, serials1[td], serials2[td])
		}
	}
	for _, c := range []struct {
		m   *vmMember
		src *workloadapi.X509Source
	}{{east, eastSrc}, {west, westSrc}} {
		td := c.m.td.Name()
		if err := chainsTo(c.src, root2); err != nil {
			t.Errorf("%s's workload SVID does not chain to the new root: %v", td, err)
		}
		if err := chainsTo(c.src, root1); err == nil {
			t.Errorf("%s's workload SVID still chains to the old root", td)
		}
		if svid, err := c.src.GetX509SVID(); err == nil && (len(svid.Certificates) < 2 || svid.Certificates[1].SerialNumber.Text(16) != serials2[td]) {
			t.Errorf("%s's workload SVID is not issued by its new intermediate %s", td, serials2[td])
		}
	}
	ctrl.mustRun(t)
	if pids["controller"] != ctrl.cmd.Process.Pid {
		t.Error("the controller was restarted")
	}
	for _, m := range []*vmMember{east, west} {
		td := m.td.Name()
		m.agent.mustRun(t)
		if m.server.cmd.ProcessState != nil {
			t.Errorf("%s server exited", td)
		}
		if pids[td+" server"] != m.server.cmd.Process.Pid || pids[td+" agent"] != m.agent.cmd.Process.Pid {
			t.Errorf("a %s process was restarted", td)
		}
		logs := m.server.logs.String()
		if n := len(startedLine.FindAllString(logs, -1)); n != 1 {
			t.Errorf("%s server started %d times", td, n)
		}
		if restart := restartLine.FindString(logs); restart != "" {
			t.Errorf("%s server's log mentions a restart: %s", td, restart)
		}
	}
	t.Logf("the test took %.1fs", time.Since(start).Seconds())
}

// TestVirtualMeshMemberRemovedAndAddedBackWithoutRestart: east and west join a
// VirtualMesh, and a TCP connection from east's workload goes through east's
// outbound proxy and west's inbound proxy to an echo app of west. The
// operator then removes west from spec.meshes in the file the controller
// runs with, and restarts nothing: the controller reads the file again and
// refuses west, east's server stops federating with west, the bundle leaves
// east's workloads, and east's proxy closes the open connection; a new one
// is refused. West is then added back and given a new token in its token
// file: it joins again by itself, and connections go through once more.
func TestVirtualMeshMemberRemovedAndAddedBackWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	eastTD, westTD := reviewsEast.TrustDomain(), ratingsWest.TrustDomain()
	ctrl, ctrlAddr, ctrlSock, ctrlMetrics := startController(t, dir)
	root, _ := virtualMeshStatusOf(t, dir, ctrlSock).onlyRoot(t)
	east := startMember(t, dir, ctrlAddr, ctrlSock, reviewsEast)
	west := startMember(t, dir, ctrlAddr, ctrlSock, ratingsWest)
	for _, m := range []*vmMember{east, west} {
		writeFile(t, m.tokenFile, m.token) // read at the member's next try
	}
	eastSrc, westSrc := x509Source(t, east.workload), x509Source(t, west.workload)
	testsync.EventuallyWithin(t, 45*time.Second, "both workloads to hold SVIDs under the shared root and both bundles", func() bool {
		return chainsTo(eastSrc, root) == nil && chainsTo(westSrc, root) == nil &&
			trusts(eastSrc, root, eastTD, westTD) && trusts(westSrc, root, eastTD, westTD)
	})
	p := echoThroughProxies(t, dir, east.workload, west.workload)
	// JWT-SVIDs too: east's workload validates west's, with the keys west
	// reported to the controller.
	testsync.EventuallyWithin(t, 30*time.Second, "east's workload to validate a JWT-SVID of west", func() bool {
		return jwtAcross(t, west.workload, east.workload) == nil
	})

	removedAt := time.Now()
	serial1 := virtualMeshStatusOf(t, dir, ctrlSock).serials()["west.example"]
	writeFile(t, filepath.Join(dir, "vm.yaml"), strings.Replace(virtualMeshYAML, `  - name: istiod-istio-system-west
    namespace: service-mesh-hub
    trustDomain: west.example
`, "", 1))
	hangup(t, ctrl.cmd.Process) // read it now, not at the next poll
	testsync.EventuallyWithin(t, 30*time.Second, "west's bundle to leave east's workloads", func() bool {
		_, err := eastSrc.GetX509BundleForTrustDomain(westTD)
		return err != nil
	})
	left := time.Since(removedAt)
	p.waitClosed(t)
	t.Logf("west left east's workloads %s after the file was written, and the open connection was closed %s after it",
		left.Round(time.Millisecond), time.Since(removedAt).Round(time.Millisecond))
	p.refusesNew(t)
	testsync.EventuallyWithin(t, 10*time.Second, "east's proxy to say why", func() bool {
		s := p.client.logs.String()
		return strings.Contains(s, "closed a connection: its peer is no longer trusted") &&
			strings.Contains(s, "peer="+ratingsWest.String()) && strings.Contains(s, "trust domain west.example is no longer trusted")
	})
	if !strings.Contains(ctrl.logs.String(), "msg=\"VirtualMesh reloaded\" virtual_mesh=virtual-mesh file=vm.yaml members=east.example added=\"\" removed=west.example") {
		t.Errorf("the controller does not log the reload:\n%s", ctrl.logs.String())
	}
	if st := virtualMeshStatusOf(t, dir, ctrlSock); len(st.Members) != 1 || st.Members[0].TrustDomain != "east.example" {
		t.Errorf("status members after the removal: %+v", st.Members)
	}
	if metrics, _ := curl(t, dir, "-sS", "--max-time", "10", "http://"+ctrlMetrics+"/metrics"); !strings.Contains(metrics, `meshfed_federation_member_joined{trust_domain="east.example"} 1`) ||
		strings.Contains(metrics, `trust_domain="west.example"`) {
		t.Errorf("the controller's metrics after the removal:\n%s", metrics)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "west's server to be told it is no longer a member", func() bool {
		return strings.Contains(west.server.logs.String(), `west.example is not a member of VirtualMesh \"virtual-mesh\" (spec.meshes)`)
	})
	if err := jwtAcross(t, west.workload, east.workload); err == nil || !strings.Contains(err.Error(), `jwtsvid: no bundle found for trust domain "west.example"`) {
		t.Errorf("east validating west's JWT-SVID after the removal: %v", err)
	}
	// East still trusts its own domain through the shared root.
	if !trusts(eastSrc, root, eastTD) || chainsTo(eastSrc, root) != nil {
		t.Error("east's workload lost its own trust domain's bundle or SVID")
	}

	// West added back: the controller knows the domain again but not the
	// member, which joins again with the new token written to its file.
	addedAt := time.Now()
	writeFile(t, filepath.Join(dir, "vm.yaml"), virtualMeshYAML)
	hangup(t, ctrl.cmd.Process)
	testsync.EventuallyWithin(t, 30*time.Second, "the controller to read west back", func() bool {
		return len(virtualMeshStatusOf(t, dir, ctrlSock).Members) == 2
	})
	writeFile(t, west.tokenFile, meshfed(t, dir, "federation", "token", "create", "--admin-socket", ctrlSock, "--trust-domain", "west.example").stdout)
	testsync.EventuallyWithin(t, 90*time.Second, "west to join again and east's workload to trust it", func() bool {
		st := virtualMeshStatusOf(t, dir, ctrlSock)
		_, err := eastSrc.GetX509BundleForTrustDomain(westTD)
		return len(st.Members) == 2 && st.Members[1].Joined && err == nil
	})
	if serial2 := virtualMeshStatusOf(t, dir, ctrlSock).serials()["west.example"]; serial2 == "" || serial2 == serial1 {
		t.Errorf("west's intermediate after joining again: %q, before: %q", serial2, serial1)
	}
	testsync.EventuallyWithin(t, 30*time.Second, "a new connection through both proxies to echo", func() bool { return p.echoesNew() == nil })
	t.Logf("west joined again and served %s after it was added back", time.Since(addedAt).Round(time.Millisecond))
	if !strings.Contains(west.server.logs.String(), "joined the VirtualMesh again") {
		t.Error("west's server does not log joining again")
	}
	if n := strings.Count(ctrl.logs.String(), "SIGHUP: reading the VirtualMesh file again"); n != 2 {
		t.Errorf("the controller logged %d SIGHUPs, want 2", n)
	}
	// SIGHUP stops no daemon: the agent and the proxy (which has no policy
	// directory) reread nothing, and go on serving.
	hangup(t, east.agent.cmd.Process)
	hangup(t, p.client.cmd.Process)
	testsync.EventuallyWithin(t, 10*time.Second, "the agent and the proxy to log their SIGHUP", func() bool {
		const nothing = "SIGHUP: nothing is read again; restart to change the configuration"
		return strings.Contains(east.agent.logs.String(), nothing) && strings.Contains(p.client.logs.String(), nothing)
	})
	if err := p.echoesNew(); err != nil {
		t.Errorf("through both proxies after SIGHUP: %v", err)
	}
	ctrl.mustRun(t)
	for _, d := range []*daemon{p.client, p.server} {
		d.mustRun(t)
	}
	for _, m := range []*vmMember{east, west} {
		m.agent.mustRun(t)
		if m.server.cmd.ProcessState != nil {
			t.Errorf("%s server exited", m.td)
		}
	}
}

// jwtAcross fetches a JWT-SVID for audience "across" from the Workload API
// at from and validates it with the one at to, both with go-spiffe's client.
func jwtAcross(t *testing.T, from, to string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "across"}, workloadapi.WithAddr("unix://"+from))
	if err != nil {
		t.Fatalf("fetching a JWT-SVID from %s: %v", from, err)
	}
	_, err = workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), "across", workloadapi.WithAddr("unix://"+to))
	return err
}

// hangup sends SIGHUP to a daemon.
func hangup(t *testing.T, p *os.Process) {
	t.Helper()
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}
