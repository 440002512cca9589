// Package demo tells meshfed's story on one machine with real processes:
// it runs the meshfed binary it is given as a server and an agent per trust
// domain and as a VirtualMesh controller, and plays the workloads itself,
// through go-spiffe's Workload API client on each agent's socket (a reviews
// client in one domain, a built-in ratings HTTPS app in the other).
//
// Every claim the story prints is a check it just ran; a step that does not
// turn out as told makes Run fail and names the step. Run stops every
// process it started before it returns (also when ctx ends), writes only into
// the directory it is given, and never prints a key or a token.
package demo

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/freeport"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Config configures a run of the demo.
type Config struct {
	Out    io.Writer // the story; required
	Binary string    // the meshfed binary to run; required
	Dir    string    // an existing directory for the processes' files; required
	// Logs, if set, receives the processes' logs, each line prefixed with
	// the process's name.
	Logs io.Writer
	// Keep leaves everything running after the story, prints commands to
	// look at it, and waits for ctx to end.
	Keep bool
	// TTL is the lifetime of the SVIDs and node SVIDs the servers sign:
	// short, so that the rotation's last phase (waiting for every
	// certificate under the old root to expire) ends within the demo.
	// Default 10s.
	TTL time.Duration
}

var (
	east, west   = spiffeid.RequireTrustDomainFromString("east.example"), spiffeid.RequireTrustDomainFromString("west.example")
	north, south = spiffeid.RequireTrustDomainFromString("north.example"), spiffeid.RequireTrustDomainFromString("south.example")
)

func reviewsIn(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/default/sa/reviews")
}

func ratingsIn(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/default/sa/ratings")
}

// The lines meshfed's processes print once they serve.
var (
	serverStarted     = regexp.MustCompile(`meshfed server for (\S+): signing API (\S+), bundle endpoint (\S+), admin socket (\S+)`)
	agentStarted      = regexp.MustCompile(`meshfed agent (\S+): Workload API on (\S+)`)
	controllerStarted = regexp.MustCompile(`federation controller started`)
)

// The seeds' VirtualMesh (Service Mesh Hub), with meshfed's one addition per
// mesh: its trust domain.
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

// domain is one trust domain: its server, its agent, and the demo's
// workload there.
type domain struct {
	td           spiffeid.TrustDomain
	name         string // short: its data directory, e.g. "east"
	sock         string // admin socket, relative to the directory
	server       *proc
	agent        *proc
	listen       string // the server's signing API
	workloadSock string // absolute
	id           spiffeid.ID
	src          *workloadapi.X509Source
}

type story struct {
	cfg   Config
	procs *procs
	start time.Time

	mu      sync.Mutex // serializes the story's lines
	domains map[spiffeid.TrustDomain]*domain
	ctrl    *proc
	ctrlAt  string
	apps    []*ratings
	// west's and south's ratings apps
	westApp, southApp *ratings
	// step 5: south's ratings behind a sidecar, and that sidecar
	plainApps    []*plainRatings
	ratingsProxy *proc
	reviewsOut   string // north reviews' outbound listener
}

func (s *story) say(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.cfg.Out, format+"\n", args...)
}

// Run tells the story. It returns an error naming the step that did not
// turn out as told, or errInterrupted-wrapped ctx.Err() if ctx ended first.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Out == nil || cfg.Binary == "" || cfg.Dir == "" {
		return errors.New("demo: Out, Binary and Dir are required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Second
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	cfg.Dir = dir
	s := &story{cfg: cfg, procs: &procs{bin: cfg.Binary, dir: dir, logs: cfg.Logs}, start: time.Now(), domains: map[spiffeid.TrustDomain]*domain{}}
	defer s.stop()

	s.say("meshfed demo: identity federation between meshes, with real meshfed processes on this machine")
	s.say("(working in %s)", dir)
	steps := []struct {
		n     int
		title string
		run   func(context.Context) error
	}{
		{1, "two meshes, each workload's certificate chains to its own domain's root", s.step1},
		{2, "the cross-domain call fails", s.step2},
		{3, "model A: a VirtualMesh with a shared root; no process restarts", s.step3},
		{4, "model B: bundles exchanged over bundle endpoints, no shared root", s.step4},
		{5, "Istio policy at the sidecars: STRICT mTLS, AuthorizationPolicy, and why", s.step5},
		{6, "the shared root rotates under continuous cross-domain traffic", s.step6},
	}
	for _, st := range steps {
		s.say("\nStep %d. %s  [%.1fs]", st.n, st.title, time.Since(s.start).Seconds())
		if err := st.run(ctx); err != nil {
			if ctx.Err() != nil {
				s.say("\ninterrupted during step %d; stopping every process", st.n)
				return fmt.Errorf("%w during step %d", errInterrupted, st.n)
			}
			s.say("\nFAIL: step %d (%s) did not turn out as told:\n  %v", st.n, st.title, err)
			return fmt.Errorf("demo: step %d (%s) did not turn out as told: %w", st.n, st.title, err)
		}
	}
	s.say("\nThe story held, every step checked, in %.1fs.", time.Since(s.start).Seconds())
	if cfg.Keep {
		s.poke()
		<-ctx.Done()
		s.say("\nstopping")
	}
	return nil
}

// stop closes the workloads and stops every process.
func (s *story) stop() {
	for _, a := range s.apps {
		a.close()
	}
	for _, a := range s.plainApps {
		a.close()
	}
	for _, d := range s.domains {
		if d.src != nil {
			d.src.Close()
		}
	}
	pids := s.procs.stopAll()
	if len(pids) > 0 {
		s.say("stopped %d meshfed processes (pids %s)", len(pids), strings.Trim(fmt.Sprint(pids), "[]"))
	}
}

// startDomain runs a server with config (YAML) and an agent whose one entry
// is this process's uid as reviews or ratings, and connects to the agent's
// Workload API.
func (s *story) startDomain(ctx context.Context, td spiffeid.TrustDomain, id spiffeid.ID, config, bundleListen string, federatesWith ...string) (*domain, error) {
	name := strings.TrimSuffix(td.Name(), ".example")
	d := &domain{td: td, name: name, sock: filepath.Join(name, "admin.sock"), workloadSock: filepath.Join(s.cfg.Dir, name+"-agent", "workload.sock"), id: id}
	if err := writeFile(filepath.Join(s.cfg.Dir, name+".yaml"), config); err != nil {
		return nil, err
	}
	var err error
	d.server, err = s.procs.start(td.Name()+" server", "server", "--config", name+".yaml", "--trust-domain", td.Name(), "--data-dir", name,
		"--admin-socket", d.sock, "--listen", "127.0.0.1:0", "--bundle-listen", bundleListen, "--metrics-listen", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m, err := d.server.waitLine(ctx, serverStarted, 30*time.Second)
	if err != nil {
		return nil, err
	}
	d.listen = m[2]
	node := "spiffe://" + td.Name() + "/node/host-1"
	token, err := s.procs.cli(ctx, "token", "create", "--admin-socket", d.sock, "--spiffe-id", node)
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(s.cfg.Dir, name+"-node.token"), token); err != nil {
		return nil, err
	}
	args := []string{"entry", "create", "--admin-socket", d.sock, "--parent-id", node, "--spiffe-id", id.String(),
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid())}
	for _, f := range federatesWith {
		args = append(args, "--federates-with", f)
	}
	if _, err := s.procs.cli(ctx, args...); err != nil {
		return nil, err
	}
	d.agent, err = s.procs.start(td.Name()+" agent", "agent", "--server", d.listen, "--trust-bundle", filepath.Join(name, "ca", "ca.pem"),
		"--join-token-file", name+"-node.token", "--data-dir", name+"-agent", "--socket", d.workloadSock)
	if err != nil {
		return nil, err
	}
	if _, err := d.agent.waitLine(ctx, agentStarted, 30*time.Second); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d.src, err = workloadapi.NewX509Source(sctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+d.workloadSock)))
	if err != nil {
		return nil, fmt.Errorf("the Workload API of %s's agent: %w", td, err)
	}
	s.mu.Lock()
	s.domains[td] = d
	s.mu.Unlock()
	return d, nil
}

// startDomains starts two domains at once.
func (s *story) startDomains(ctx context.Context, start func(context.Context, int) (*domain, error)) (*domain, *domain, error) {
	var ds [2]*domain
	var errs [2]error
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { ds[i], errs[i] = start(ctx, i) })
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return nil, nil, err
	}
	for _, d := range ds {
		s.say("  %s: meshfed server (pid %d, signing API %s) and meshfed agent (pid %d, Workload API %s)",
			d.td, d.server.pid(), d.listen, d.agent.pid(), filepath.Base(filepath.Dir(d.workloadSock))+"/workload.sock")
	}
	return ds[0], ds[1], nil
}

func (s *story) step1(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.ctrlAt = fmt.Sprintf("127.0.0.1:%d", port)
	// Members of the VirtualMesh of step 3 from the start: their servers
	// retry the join, re-reading the token file, which does not exist yet.
	config := func(name string) string {
		return fmt.Sprintf(`svid:
  default_ttl: %s
  node_ttl: %s
federation:
  virtual_mesh:
    controller: %s
    controller_ca_file: ctrl/root-cert.pem
    join_token_file: %s-vm.token
`, s.cfg.TTL, s.cfg.TTL, s.ctrlAt, name)
	}
	s.say("  starting a server and an agent per domain; each server is configured to join a VirtualMesh controller")
	s.say("  at %s with a token file that does not exist yet (the servers retry, re-reading it)", s.ctrlAt)
	e, w, err := s.startDomains(ctx, func(ctx context.Context, i int) (*domain, error) {
		td := []spiffeid.TrustDomain{east, west}[i]
		id := []spiffeid.ID{reviewsIn(east), ratingsIn(west)}[i]
		return s.startDomain(ctx, td, id, config(strings.TrimSuffix(td.Name(), ".example")), "127.0.0.1:0")
	})
	if err != nil {
		return err
	}
	var roots []*x509.Certificate
	for _, d := range []*domain{e, w} {
		svid, chain, err := chainOf(d.src)
		if err != nil {
			return fmt.Errorf("%s's workload SVID does not verify with its own bundle: %w", d.td, err)
		}
		if svid.ID != d.id {
			return fmt.Errorf("%s's workload got %s, want %s", d.td, svid.ID, d.id)
		}
		s.say("\n  %s (%s), its SVID from %s's agent, verified with its own bundle:", strings.TrimPrefix(svid.ID.Path(), "/ns/default/sa/"), svid.ID, d.td)
		for _, l := range describeChain(chain) {
			s.say("  %s", l)
		}
		roots = append(roots, chain[len(chain)-1])
	}
	if roots[0].Equal(roots[1]) {
		return errors.New("both domains' chains end at the same root")
	}
	// East's root, taken as west's bundle, does not verify ratings.
	wsvid, err := w.src.GetX509SVID()
	if err != nil {
		return err
	}
	_, _, err = x509svid.Verify(wsvid.Certificates, x509bundle.FromX509Authorities(west, []*x509.Certificate{roots[0]}))
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		return fmt.Errorf("east.example's root verified ratings' certificate (%v)", err)
	}
	s.say("\n  ✓ two different roots: %q and %q; east's root does not verify ratings: %v", roots[0].Subject.CommonName, roots[1].Subject.CommonName, err)
	return nil
}

func (s *story) step2(ctx context.Context) error {
	e, w := s.domains[east], s.domains[west]
	app, err := startRatings("ratings (west.example)", w.src, e.id, s.say)
	if err != nil {
		return err
	}
	s.apps = append(s.apps, app)
	s.westApp = app
	s.say("  ratings (%s) serves HTTPS with mTLS on %s, with its SVID and bundles from its agent; it allows only %s", w.td, app.addr(), e.id)
	s.say("  reviews (%s) calls GET https://%s/ratings/0 with its SVID, accepting only %s", e.td, app.addr(), w.id)
	_, err = newClient(e.src, w.id).get(ctx, app.addr())
	const want = `no X.509 bundle for trust domain "west.example"`
	if err == nil || !strings.Contains(err.Error(), want) {
		return fmt.Errorf("the call did not fail for want of west.example's bundle: %v", err)
	}
	s.say("  ✓ the call fails; reviews' verifier: %v", err)
	var seen []string
	poll(ctx, time.Second, 20*time.Millisecond, "", func() (bool, error) { seen = app.handshakeErrors(); return len(seen) > 0, nil })
	if len(seen) > 0 {
		s.say("    (ratings' side of the handshake: %s)", seen[0])
	}
	return nil
}

// virtualMeshStatus is `meshfed federation status -o json`, in part.
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
	Members []vmMember `json:"members"`
}

// vmMember is one member in the VirtualMesh's status.
type vmMember struct {
	TrustDomain        string `json:"trust_domain"`
	Joined             bool   `json:"joined"`
	IntermediateSerial string `json:"intermediate_serial"`
	RootSubjectKeyID   string `json:"root_subject_key_id"`
	AppliedGeneration  uint64 `json:"applied_generation"`
}

func (s *story) vmStatus(ctx context.Context) (*virtualMeshStatus, error) {
	out, err := s.procs.cli(ctx, "federation", "status", "--admin-socket", "ctrl/admin.sock", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st virtualMeshStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("federation status -o json: %w", err)
	}
	return &st, nil
}

// activeRoot is the one root of a stable VirtualMesh.
func (st *virtualMeshStatus) activeRoot() (*x509.Certificate, error) {
	if len(st.Roots) != 1 || st.Roots[0].State != "active" {
		return nil, fmt.Errorf("the VirtualMesh has %d roots, want one active", len(st.Roots))
	}
	certs, err := pemfile.ParseCertificates([]byte(st.Roots[0].Certificate))
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("the root in the status: %v", err)
	}
	return certs[0], nil
}

// chainsTo reports whether src's SVID verifies against root alone.
func chainsTo(src source, root *x509.Certificate) bool {
	svid, err := src.GetX509SVID()
	if err != nil {
		return false
	}
	_, _, err = x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(svid.ID.TrustDomain(), []*x509.Certificate{root}))
	return err == nil
}

// trusts reports whether src's bundle of each td holds root (and only root,
// if only).
func trusts(src source, root *x509.Certificate, only bool, tds ...spiffeid.TrustDomain) bool {
	for _, td := range tds {
		b, err := src.GetX509BundleForTrustDomain(td)
		if err != nil || !b.HasX509Authority(root) || only && len(b.X509Authorities()) != 1 {
			return false
		}
	}
	return true
}

func (s *story) step3(ctx context.Context) error {
	e, w := s.domains[east], s.domains[west]
	if err := writeFile(filepath.Join(s.cfg.Dir, "vm.yaml"), virtualMeshYAML); err != nil {
		return err
	}
	var err error
	s.ctrl, err = s.procs.start("VirtualMesh controller", "federation", "run", "--config", "vm.yaml", "--data-dir", "ctrl",
		"--listen", s.ctrlAt, "--intermediate-ttl", "10m", "--rotate-root-before", "off")
	if err != nil {
		return err
	}
	if _, err := s.ctrl.waitLine(ctx, controllerStarted, 30*time.Second); err != nil {
		return err
	}
	st, err := s.vmStatus(ctx)
	if err != nil {
		return err
	}
	root1, err := st.activeRoot()
	if err != nil {
		return err
	}
	s.say("  $ meshfed federation run --config vm.yaml --data-dir ctrl --listen %s   (pid %d)", s.ctrlAt, s.ctrl.pid())
	s.say("    the seeds' VirtualMesh (Service Mesh Hub) with a generated shared root %q", root1.Subject.String())
	pids := map[*proc]int{}
	for _, p := range []*proc{e.server, e.agent, w.server, w.agent} {
		pids[p] = p.pid()
	}
	for _, d := range []*domain{e, w} {
		token, err := s.procs.cli(ctx, "federation", "token", "create", "--admin-socket", "ctrl/admin.sock", "--trust-domain", d.td.Name())
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(s.cfg.Dir, d.name+"-vm.token"), token); err != nil {
			return err
		}
		s.say("  $ meshfed federation token create --admin-socket ctrl/admin.sock --trust-domain %s > %s-vm.token", d.td, d.name)
	}
	joinAt := time.Now()
	err = poll(ctx, 45*time.Second, 200*time.Millisecond, "both servers to join the VirtualMesh", func() (bool, error) {
		st, err := s.vmStatus(ctx)
		if err != nil {
			return false, err
		}
		return len(st.Members) == 2 && st.Members[0].Joined && st.Members[1].Joined, nil
	})
	if err != nil {
		return err
	}
	err = poll(ctx, 45*time.Second, 50*time.Millisecond, "both workloads to hold SVIDs under the shared root and both domains' bundles", func() (bool, error) {
		return chainsTo(e.src, root1) && chainsTo(w.src, root1) && trusts(e.src, root1, false, east, west) && trusts(w.src, root1, false, east, west), nil
	})
	if err != nil {
		return err
	}
	s.say("  ✓ both running servers joined on their next retry and their workloads moved under the shared root, %.1fs after the tokens were written", time.Since(joinAt).Seconds())
	st, err = s.vmStatus(ctx)
	if err != nil {
		return err
	}
	if err := s.intermediatesFromCSRs(st, root1, e, w); err != nil {
		return err
	}
	for p, pid := range pids {
		if done, err := p.exited(); done || p.pid() != pid {
			return fmt.Errorf("%s exited (%v)", p.name, err)
		}
	}
	for _, d := range []*domain{e, w} {
		if n := len(serverStarted.FindAllString(d.server.logs.String(), -1)); n != 1 {
			return fmt.Errorf("%s started %d times", d.server.name, n)
		}
	}
	s.say("  ✓ no process restarted: servers (pids %d, %d) and agents (pids %d, %d) are the ones started in step 1, each started once",
		e.server.pid(), w.server.pid(), e.agent.pid(), w.agent.pid())

	res, err := newClient(e.src, w.id).get(ctx, s.westApp.addr())
	if err != nil {
		return fmt.Errorf("the call from reviews to ratings failed: %w", err)
	}
	s.say("  ✓ reviews -> ratings: %d %s", res.status, res.body)
	if got, want := s.westApp.lastRequest().principal, sourcePrincipal(e.id); got != want {
		return fmt.Errorf("ratings saw source.principal %q, want %q", got, want)
	}
	s.say("  ✓ ratings saw source.principal %q", sourcePrincipal(e.id))
	_, chain, err := chainOf(e.src)
	if err != nil {
		return err
	}
	if !chain[len(chain)-1].Equal(root1) {
		return errors.New("reviews' chain does not end at the shared root")
	}
	s.say("\n  reviews (%s), its SVID from east.example's agent now:", e.id)
	for _, l := range describeChain(chain) {
		s.say("  %s", l)
	}
	s.say("  ✓ it ends at the shared root, which verifies ratings too (its chain: %s)", chainSummary(w.src))
	return nil
}

// intermediatesFromCSRs checks and says that each member signs with an
// intermediate of the shared root, limited to its trust domain, whose key
// it made and kept: the controller holds no key but its roots'.
func (s *story) intermediatesFromCSRs(st *virtualMeshStatus, root *x509.Certificate, ds ...*domain) error {
	ctrlKeys, err := privateKeysIn(filepath.Join(s.cfg.Dir, "ctrl"))
	if err != nil {
		return err
	}
	for _, d := range ds {
		dir := filepath.Join(d.name, "virtualmesh")
		certs, err := pemfile.ReadCertificates(filepath.Join(s.cfg.Dir, dir, "ca-cert.pem"))
		if err != nil {
			return err
		}
		inter := certs[0]
		key, err := pemfile.ReadPrivateKey(filepath.Join(s.cfg.Dir, dir, "ca-key.pem"))
		if err != nil {
			return err
		}
		if !samePublicKey(key.Public(), inter.PublicKey) {
			return fmt.Errorf("%s's intermediate does not match the key in %s/ca-key.pem", d.td, dir)
		}
		for _, k := range ctrlKeys {
			if samePublicKey(k.Public(), inter.PublicKey) {
				return fmt.Errorf("the controller holds %s's intermediate key", d.td)
			}
		}
		if err := inter.CheckSignatureFrom(root); err != nil {
			return fmt.Errorf("%s's intermediate is not signed by the shared root: %w", d.td, err)
		}
		if !slices.Equal(inter.PermittedURIDomains, []string{d.td.Name()}) {
			return fmt.Errorf("%s's intermediate permits URIs in %v", d.td, inter.PermittedURIDomains)
		}
		serial := inter.SerialNumber.Text(16)
		if !slices.ContainsFunc(st.Members, func(m vmMember) bool {
			return m.TrustDomain == d.td.Name() && m.IntermediateSerial == serial
		}) {
			return fmt.Errorf("the controller does not list %s's intermediate %s", d.td, serial)
		}
		s.say("  ✓ %s: new intermediate %s %q, signed by the shared root from %s's CSR, limited to URIs in %s;",
			d.td, short(serial), inter.Subject.CommonName, d.name, d.td)
		s.say("      its key is in %s/ca-key.pem only (the controller holds %d key, its root's)", dir, len(ctrlKeys))
	}
	return nil
}

func (s *story) step4(ctx context.Context) error {
	ports := make([]int, 2)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	config := func(peer spiffeid.TrustDomain, port int) string {
		return fmt.Sprintf(`svid:
  default_ttl: %s
  node_ttl: %s
bundle_endpoint:
  refresh_hint: 10s
federation:
  federates_with:
  - trust_domain: %s
    bundle_endpoint_url: https://127.0.0.1:%d
    bundle_endpoint_profile: https_spiffe
    endpoint_spiffe_id: spiffe://%s/meshfed/server
`, s.cfg.TTL, s.cfg.TTL, peer, port, peer)
	}
	s.say("  a fresh pair of domains, north.example and south.example, each with its own new root and no shared root;")
	s.say("  each server's federation.federates_with names the other's bundle endpoint (https_spiffe)")
	n, so, err := s.startDomains(ctx, func(ctx context.Context, i int) (*domain, error) {
		if i == 0 {
			return s.startDomain(ctx, north, reviewsIn(north), config(south, ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[0]), south.Name())
		}
		return s.startDomain(ctx, south, ratingsIn(south), config(north, ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1]), north.Name())
	})
	if err != nil {
		return err
	}
	// Bootstrap each https_spiffe relationship out of band, then fetch.
	for _, pair := range [][2]*domain{{n, so}, {so, n}} {
		from, to := pair[0], pair[1]
		out, err := s.procs.cli(ctx, "bundle", "show", "--admin-socket", from.sock)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(s.cfg.Dir, from.name+".json"), out); err != nil {
			return err
		}
		s.say("  $ meshfed bundle show --admin-socket %s > %s.json   (handed over out of band, once)", from.sock, from.name)
		set := []string{"bundle", "set", "--admin-socket", to.sock, "--trust-domain", from.td.Name(), "--in", from.name + ".json"}
		if out, err = s.procs.cli(ctx, set...); err != nil {
			return err
		}
		s.say("  $ meshfed %s\n    %s", strings.Join(set, " "), strings.TrimSpace(out))
		refresh := []string{"bundle", "refresh", from.td.Name(), "--admin-socket", to.sock}
		if out, err = s.procs.cli(ctx, refresh...); err != nil {
			return err
		}
		s.say("  $ meshfed %s\n    %s", strings.Join(refresh, " "), strings.TrimSpace(out))
	}
	err = poll(ctx, 30*time.Second, 50*time.Millisecond, "both workloads to hold both bundles", func() (bool, error) {
		for _, d := range []*domain{n, so} {
			for _, td := range []spiffeid.TrustDomain{north, south} {
				if _, err := d.src.GetX509BundleForTrustDomain(td); err != nil {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	roots := map[spiffeid.TrustDomain]*x509.Certificate{}
	for _, d := range []*domain{n, so} {
		certs, err := pemfile.ReadCertificates(filepath.Join(s.cfg.Dir, d.name, "ca", "ca.pem"))
		if err != nil {
			return err
		}
		roots[d.td] = certs[0]
	}
	if roots[north].Equal(roots[south]) {
		return errors.New("north and south share a root")
	}
	app, err := startRatings("ratings (south.example)", so.src, n.id, s.say)
	if err != nil {
		return err
	}
	s.apps = append(s.apps, app)
	s.southApp = app
	res, err := newClient(n.src, so.id).get(ctx, app.addr())
	if err != nil {
		return fmt.Errorf("the call from north's reviews to south's ratings failed: %w", err)
	}
	s.say("  ✓ reviews (north.example) -> ratings (south.example) on %s: %d %s", app.addr(), res.status, res.body)
	req := app.lastRequest()
	switch {
	case req.principal != sourcePrincipal(n.id):
		return fmt.Errorf("ratings saw source.principal %q", req.principal)
	case req.root == nil || !req.root.Equal(roots[north]):
		return errors.New("ratings did not verify reviews with north.example's own root")
	case res.root == nil || !res.root.Equal(roots[south]):
		return errors.New("reviews did not verify ratings with south.example's own root")
	}
	s.say("  ✓ ratings verified reviews with the bundle of north.example (root %q, fetched from north's bundle endpoint)", req.root.Subject.CommonName)
	s.say("  ✓ reviews verified ratings with the bundle of south.example (root %q, fetched from south's bundle endpoint)", res.root.Subject.CommonName)
	return nil
}

// traffic calls ratings from reviews, each call a new mTLS handshake, until
// stop is closed, and counts how the calls end.
type traffic struct {
	mu       sync.Mutex
	ok, fail int
	errs     []string
}

func (t *traffic) run(ctx context.Context, call func(context.Context) error, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		err := call(ctx)
		t.mu.Lock()
		if err != nil {
			if ctx.Err() != nil {
				t.mu.Unlock()
				return
			}
			t.fail++
			if len(t.errs) < 3 {
				t.errs = append(t.errs, err.Error())
			}
		} else {
			t.ok++
		}
		t.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // leave the two CPUs to the servers too
	}
}

func (t *traffic) counts() (ok, fail int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ok, t.fail
}

func (s *story) step6(ctx context.Context) error {
	e, w := s.domains[east], s.domains[west]
	st, err := s.vmStatus(ctx)
	if err != nil {
		return err
	}
	root1, err := st.activeRoot()
	if err != nil {
		return err
	}
	before := map[string]string{}
	for _, m := range st.Members {
		before[m.TrustDomain] = m.IntermediateSerial
	}
	s.westApp.setQuiet(true)
	s.say("  and the same pair behind sidecars: east's reviews proxy -> west's ratings proxy (STRICT, ALLOW east's reviews)")
	pair, err := s.startSidecars(ctx, e, w, fmt.Sprintf(demoPolicies, sourcePrincipal(e.id)))
	if err != nil {
		return err
	}
	direct, viaSidecars := newClient(e.src, w.id), &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	calls := []func(context.Context) error{
		func(ctx context.Context) error { _, err := direct.get(ctx, s.westApp.addr()); return err },
		func(ctx context.Context) error {
			code, body, err := plainGet(ctx, viaSidecars, "http://"+pair.outbound+"/ratings/0")
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("status %d: %s", code, body)
			}
			return err
		},
	}
	tr := make([]traffic, len(calls))
	stop := make(chan struct{})
	var running sync.WaitGroup
	for i, call := range calls {
		running.Go(func() { tr[i].run(ctx, call, stop) })
	}
	stopTraffic := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		running.Wait()
	}
	defer stopTraffic()
	if err := poll(ctx, 10*time.Second, 20*time.Millisecond, "the first calls", func() (bool, error) {
		for i := range tr {
			if ok, fail := tr[i].counts(); ok+fail < 5 {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	s.say("  reviews (east) keeps calling ratings (west), a new mTLS connection each time, directly and through the sidecars")
	rotateAt := time.Now()
	out, err := s.procs.cli(ctx, "federation", "rotate-root", "--admin-socket", "ctrl/admin.sock")
	if err != nil {
		return err
	}
	first, _, _ := strings.Cut(out, "\n")
	s.say("  $ meshfed federation rotate-root --admin-socket ctrl/admin.sock\n    %s", first)
	phase, retired := "", false
	var final *virtualMeshStatus
	err = poll(ctx, 60*time.Second, 200*time.Millisecond, "the rotation to end with every member under the new root", func() (bool, error) {
		st, err := s.vmStatus(ctx)
		if err != nil {
			return false, err
		}
		if st.RotationPhase != phase {
			phase = st.RotationPhase
			retired = retired || phase == "retiring"
			wait := ""
			if st.WaitingFor != "" {
				wait = "; waiting for: " + st.WaitingFor
			}
			s.say("    +%4.1fs  phase %s (generation %d)%s", time.Since(rotateAt).Seconds(), phase, st.Generation, wait)
		}
		if st.RotationPhase != "stable" || !retired || len(st.Roots) != 1 {
			return false, nil
		}
		for _, m := range st.Members {
			if m.RootSubjectKeyID != st.Roots[0].SubjectKeyID || m.AppliedGeneration != st.Generation {
				return false, nil
			}
		}
		final = st
		return true, nil
	})
	if err != nil {
		return err
	}
	root2, err := final.activeRoot()
	if err != nil {
		return err
	}
	if root2.Equal(root1) {
		return errors.New("the root after the rotation is the old one")
	}
	for _, m := range final.Members {
		if m.IntermediateSerial == "" || m.IntermediateSerial == before[m.TrustDomain] {
			return fmt.Errorf("%s's intermediate was not re-issued under the new root", m.TrustDomain)
		}
		s.say("  ✓ %s: intermediate re-issued from a new CSR under the new root (%s -> %s)", m.TrustDomain, short(before[m.TrustDomain]), short(m.IntermediateSerial))
	}
	// Traffic goes on until both workloads trust the new root alone.
	err = poll(ctx, 30*time.Second, 50*time.Millisecond, "both workloads to hold SVIDs under the new root and bundles of it alone", func() (bool, error) {
		return chainsTo(e.src, root2) && chainsTo(w.src, root2) && trusts(e.src, root2, true, east, west) && trusts(w.src, root2, true, east, west), nil
	})
	if err != nil {
		return err
	}
	stopTraffic()
	s.say("  ✓ stable under %q, %.1fs after rotate-root; both workloads' SVIDs chain to it and their bundles hold only it",
		root2.Subject.CommonName, time.Since(rotateAt).Seconds())
	okAll := 0
	for i, what := range []string{"directly", "through the sidecars"} {
		ok, fail := tr[i].counts()
		if fail != 0 {
			return fmt.Errorf("%d requests %s during rotation, %d failed; first: %v", ok+fail, what, fail, tr[i].errs)
		}
		if ok < 20 {
			return fmt.Errorf("only %d requests %s during rotation", ok, what)
		}
		s.say("  ✓ %d requests %s during rotation, 0 failed", ok, what)
		okAll += ok
	}
	s.say("  ✓ reviews' chain: %s", chainSummary(e.src))
	s.say("  ✓ %d requests during rotation, 0 failed", okAll)
	for _, d := range []*domain{e, w} {
		for _, p := range []*proc{d.server, d.agent} {
			if done, err := p.exited(); done {
				return fmt.Errorf("%s exited (%v)", p.name, err)
			}
		}
	}
	return nil
}

// poke prints commands to look at the running processes.
func (s *story) poke() {
	dir := s.cfg.Dir
	s.say("\nEverything is still running (Ctrl-C stops it). The processes' logs are in %s/logs. To look:", dir)
	s.say("  cd %s   # meshfed is %s", dir, s.cfg.Binary)
	s.say("  meshfed federation status --admin-socket ctrl/admin.sock")
	s.say("  meshfed bundle list --admin-socket north/admin.sock")
	s.say("  meshfed entry list --admin-socket east/admin.sock")
	s.say("  # the SVIDs live %s: fetch them again right before you connect", s.cfg.TTL)
	s.say("  meshfed svid fetch --socket %s --out reviews", s.domains[east].workloadSock)
	if s.westApp != nil {
		s.say("  meshfed inspect connect %s --bundle reviews/federated-west.example.pem --trust-domain west.example --cert reviews/svid.pem --key reviews/svid_key.pem", s.westApp.addr())
	}
	if s.southApp != nil {
		s.say("  meshfed svid fetch --socket %s --out north-reviews", s.domains[north].workloadSock)
		s.say("  meshfed inspect connect %s --bundle north-reviews/federated-south.example.pem --trust-domain south.example --cert north-reviews/svid.pem --key north-reviews/svid_key.pem", s.southApp.addr())
	}
	if s.reviewsOut != "" {
		s.say("  curl http://%s/ratings/0   # reviews' sidecar -> mTLS -> ratings' sidecar (logs/south-ratings-proxy.log)", s.reviewsOut)
		s.say("  meshfed policy explain --policies south-policies --namespace default --labels app=ratings --port 9080 --principal north.example/ns/default/sa/reviews --method GET --path /ratings/0")
	}
}

// chainSummary names the certificates of src's chain, leaf to root.
func chainSummary(src source) string {
	_, chain, err := chainOf(src)
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, c := range chain {
		if len(c.Subject.CommonName) > 0 {
			names = append(names, c.Subject.CommonName)
		} else {
			names = append(names, x509svidID(c))
		}
	}
	return strings.Join(names, " <- ")
}

func x509svidID(c *x509.Certificate) string {
	id, err := x509svid.IDFromCert(c)
	if err != nil {
		return c.Subject.String()
	}
	return id.String()
}

// privateKeysIn returns the private keys in the files directly in dir.
func privateKeysIn(dir string) ([]crypto.Signer, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var keys []crypto.Signer
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := pemfile.ReadFile(filepath.Join(dir, e.Name()), 1<<20)
		if err != nil || !strings.Contains(string(data), "PRIVATE KEY") {
			continue
		}
		if k, err := pemfile.ParsePrivateKey(data); err == nil {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// freePort is a loopback port for a process the demo starts (see package
// freeport: never one the kernel may give another process meanwhile).
func freePort() (int, error) { return freeport.Port() }

// writeFile writes a file only this user may read: configurations and
// tokens.
func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o600)
}

// short is the beginning of a serial number, enough to tell two apart.
func short(serial string) string { return serial[:min(12, len(serial))] }
