package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var (
	reviewsEast = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	ratingsWest = spiffeid.RequireFromString("spiffe://west.example/ns/default/sa/ratings")
)

// domain is one trust domain of a federation test: its server, its agent
// and the workload API socket of the test's workload there.
type domain struct {
	td       string
	sock     string // admin socket
	server   *serverProc
	agent    *agentProc
	workload string // Workload API socket
}

// startDomain runs a server with config (YAML) and an agent whose one entry
// is the test process's uid as id, federating with federatesWith.
func startDomain(t *testing.T, dir, td string, bundlePort int, config string, id spiffeid.ID, federatesWith string) *domain {
	t.Helper()
	name := strings.TrimSuffix(td, ".example")
	d := &domain{td: td, sock: filepath.Join(dir, name, "admin.sock"), workload: filepath.Join(dir, name+"-agent", "workload.sock")}
	writeFile(t, filepath.Join(dir, name+".yaml"), config)
	d.server = startServer(t, dir, "--config", name+".yaml", "--trust-domain", td, "--data-dir", name, "--admin-socket", d.sock,
		"--bundle-listen", fmt.Sprintf("127.0.0.1:%d", bundlePort))
	logOnFailure(t, td+" server", d.server.logs)
	node := "spiffe://" + td + "/node/host-1"
	token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", d.sock, "--spiffe-id", node).stdout)
	meshfed(t, dir, "entry", "create", "--admin-socket", d.sock, "--parent-id", node, "--spiffe-id", id.String(),
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "--federates-with", federatesWith)
	d.agent = startAgent(t, dir, "--server", d.server.listen, "--trust-bundle", filepath.Join(name, "ca", "ca.pem"), "--join-token", token,
		"--data-dir", name+"-agent", "--socket", d.workload)
	logOnFailure(t, td+" agent", d.agent.logs)
	return d
}

// exchangeBundles installs each domain's bundle in the other's server out
// of band (`bundle show`, then `bundle set`).
func exchangeBundles(t *testing.T, dir string, a, b *domain) {
	t.Helper()
	for _, pair := range [][2]*domain{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		file := strings.TrimSuffix(from.td, ".example") + ".json"
		writeFile(t, filepath.Join(dir, file), meshfed(t, dir, "bundle", "show", "--admin-socket", from.sock).stdout)
		meshfed(t, dir, "bundle", "set", "--admin-socket", to.sock, "--trust-domain", from.td, "--in", file)
	}
}

// bothBundles returns an X509Source on each domain's Workload API socket
// once each holds the bundles of both domains.
func bothBundles(t *testing.T, a, b *domain) (*workloadapi.X509Source, *workloadapi.X509Source) {
	t.Helper()
	srcA, srcB := x509Source(t, a.workload), x509Source(t, b.workload)
	for _, src := range []*workloadapi.X509Source{srcA, srcB} {
		testsync.EventuallyWithin(t, 30*time.Second, "both workloads to hold both bundles", func() bool {
			_, errA := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(a.td))
			_, errB := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(b.td))
			return errA == nil && errB == nil
		})
	}
	return srcA, srcB
}

// federationStatus is `meshfed federation status -o json`.
type federationStatus struct {
	RotationPhase string `json:"rotation_phase"`
	WaitingFor    string `json:"waiting_for"`
	Roots         []struct {
		Subject string `json:"subject"`
		State   string `json:"state"`
	} `json:"roots"`
}

func statusOf(t *testing.T, dir, sock string) federationStatus {
	t.Helper()
	var st federationStatus
	out := meshfed(t, dir, "federation", "status", "--admin-socket", sock, "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("federation status -o json: %v\n%s", err, out)
	}
	return st
}

// handshakes opens mTLS connections from east's workload to west's, one
// after another, until stop is closed, and counts how they end. Each side
// takes its SVID and bundles from its agent through go-spiffe's X509Source,
// as a workload would, and checks the peer's exact SPIFFE ID.
type handshakes struct {
	mu       sync.Mutex
	ok, fail int
	errs     []string
}

func (h *handshakes) run(t *testing.T, client, server *workloadapi.X509Source, stop <-chan struct{}) {
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeID(reviewsEast)))
	if err != nil {
		t.Error(err)
		return
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if tc.HandshakeContext(ctx) == nil {
					tc.Write([]byte("ok"))
				}
			}()
		}
	}()
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(ratingsWest))}
	for {
		select {
		case <-stop:
			return
		default:
		}
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := dialer.DialContext(ctx, "tcp", l.Addr().String())
			if err != nil {
				return err
			}
			defer c.Close()
			tc := c.(*tls.Conn)
			id, err := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
			if err != nil || id != ratingsWest {
				return fmt.Errorf("server is %v (%v)", id, err)
			}
			// The server checks the client's certificate after the client's
			// handshake ends (TLS 1.3): a refusal shows on the first read.
			buf := make([]byte, 2)
			if _, err := tc.Read(buf); err != nil {
				return fmt.Errorf("server refused: %w", err)
			}
			return nil
		}()
		h.mu.Lock()
		if err != nil {
			h.fail++
			if len(h.errs) < 5 {
				h.errs = append(h.errs, err.Error())
			}
		} else {
			h.ok++
		}
		h.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // pace, so that the two CPUs also serve the servers
	}
}

// TestBundleFederationRootRotationNoFailedHandshakes: east and west federate
// through their bundle endpoints (model B); east rotates its root, one
// command, while a workload of east keeps opening mTLS connections to a
// workload of west. Every handshake succeeds, no process restarts, and the
// rotation ends with east signing under its new root and the old one gone
// from both domains.
func TestBundleFederationRootRotationNoFailedHandshakes(t *testing.T) {
	dir := t.TempDir()
	eastPort, westPort := freePort(t), freePort(t)
	config := func(peer string, port int) string {
		// Short lifetimes so that the old root's certificates expire within
		// the test; the refresh hint is meshfed's shortest fetch interval.
		return fmt.Sprintf(`svid:
  default_ttl: 20s
  node_ttl: 20s
bundle_endpoint:
  refresh_hint: 10s
federation:
  federates_with:
  - trust_domain: %s
    bundle_endpoint_url: https://127.0.0.1:%d
    endpoint_spiffe_id: spiffe://%s/meshfed/server
`, peer, port, peer)
	}
	east := startDomain(t, dir, "east.example", eastPort, config("west.example", westPort), reviewsEast, "west.example")
	west := startDomain(t, dir, "west.example", westPort, config("east.example", eastPort), ratingsWest, "east.example")
	// Bootstrap each https_spiffe relationship out of band, then fetch.
	exchangeBundles(t, dir, east, west)
	for _, pair := range [][2]*domain{{east, west}, {west, east}} {
		meshfed(t, dir, "bundle", "refresh", pair[0].td, "--admin-socket", pair[1].sock)
	}
	eastSrc, westSrc := bothBundles(t, east, west)
	pids := map[string]int{}
	for _, d := range []*domain{east, west} {
		pids[d.td+" server"], pids[d.td+" agent"] = d.server.cmd.Process.Pid, d.agent.cmd.Process.Pid
	}

	var hs handshakes
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); hs.run(t, eastSrc, westSrc, stop) }()
	testsync.EventuallyWithin(t, 10*time.Second, "the first handshakes", func() bool {
		hs.mu.Lock()
		defer hs.mu.Unlock()
		return hs.ok+hs.fail >= 5
	})

	out := meshfed(t, dir, "federation", "rotate-root", "--admin-socket", east.sock).stdout
	if !strings.Contains(out, "publishing") {
		t.Fatalf("rotate-root:\n%s", out)
	}
	phases := map[string]bool{}
	var final federationStatus
	testsync.EventuallyWithin(t, 90*time.Second, "east's rotation to finish (ca.auto_rotate advances it)", func() bool {
		final = statusOf(t, dir, east.sock)
		phases[final.RotationPhase] = true
		time.Sleep(200 * time.Millisecond)
		return final.RotationPhase == "stable" && phases["retiring"]
	})
	// West fetches east's bundle without the old root within a refresh hint;
	// keep the traffic going until then.
	testsync.EventuallyWithin(t, 30*time.Second, "west to drop east's old root", func() bool {
		b, err := westSrc.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("east.example"))
		return err == nil && len(b.X509Authorities()) == 1
	})
	close(stop)
	<-done

	if len(final.Roots) != 1 || !strings.HasPrefix(final.Roots[0].Subject, "CN=east.example root CA 2,") {
		t.Errorf("east's roots after the rotation: %+v", final.Roots)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	t.Logf("%d handshakes during the rotation, %d failed", hs.ok+hs.fail, hs.fail)
	if hs.fail != 0 || hs.ok < 100 {
		t.Errorf("%d handshakes succeeded, %d failed: %v", hs.ok, hs.fail, hs.errs)
	}
	for _, d := range []*domain{east, west} {
		d.agent.mustRun(t)
		if d.server.cmd.ProcessState != nil {
			t.Errorf("%s server exited", d.td)
		}
		if pids[d.td+" server"] != d.server.cmd.Process.Pid || pids[d.td+" agent"] != d.agent.cmd.Process.Pid {
			t.Errorf("a %s process was restarted", d.td)
		}
	}
	// The workload of east now holds an SVID under the new root.
	svid, err := eastSrc.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if issuer := svid.Certificates[len(svid.Certificates)-1].Issuer.CommonName; issuer != "east.example root CA 2" {
		t.Errorf("east's workload SVID is issued by %q", issuer)
	}
}

// TestFederatesWithReloadedOnSIGHUP: east starts with no bundle endpoint
// peer; west's bundle endpoint is added to east's configuration file and
// east gets SIGHUP: it fetches west's bundle at once, with no restart.
// Removed again, west is no longer fetched, and its bundle stays.
func TestFederatesWithReloadedOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	eastPort, westPort := freePort(t), freePort(t)
	east := startDomain(t, dir, "east.example", eastPort, "{}\n", reviewsEast, "west.example")
	west := startDomain(t, dir, "west.example", westPort, "{}\n", ratingsWest, "east.example")
	exchangeBundles(t, dir, east, west) // the trust that authenticates west's endpoint
	westRow := func() bundleListRow {
		t.Helper()
		var out struct {
			Bundles []bundleListRow `json:"bundles"`
		}
		if err := json.Unmarshal([]byte(meshfed(t, dir, "bundle", "list", "--admin-socket", east.sock, "-o", "json").stdout), &out); err != nil {
			t.Fatal(err)
		}
		for _, r := range out.Bundles {
			if r.TrustDomain == "west.example" {
				return r
			}
		}
		t.Fatal("east lists no bundle of west.example")
		return bundleListRow{}
	}
	if r := westRow(); r.Source != "bundle set" || r.Endpoint != "" {
		t.Fatalf("before: %+v", r)
	}

	writeFile(t, filepath.Join(dir, "east.yaml"), fmt.Sprintf(`federation:
  federates_with:
  - trust_domain: west.example
    bundle_endpoint_url: https://127.0.0.1:%d
    endpoint_spiffe_id: spiffe://west.example/meshfed/server
`, westPort))
	hangup(t, east.server.cmd.Process)
	testsync.EventuallyWithin(t, 20*time.Second, "east to fetch west's bundle from its endpoint", func() bool {
		r := westRow()
		return r.Source == "federates_with" && r.LastSuccess != "" && r.LastError == ""
	})
	if !strings.Contains(east.server.logs.String(), `peers=1 added=west.example changed="" removed=""`) {
		t.Errorf("east does not log the reload:\n%s", east.server.logs.String())
	}

	writeFile(t, filepath.Join(dir, "east.yaml"), "{}\n")
	hangup(t, east.server.cmd.Process)
	testsync.EventuallyWithin(t, 20*time.Second, "west to leave east's peers, its bundle kept", func() bool {
		r := westRow()
		return r.Source == "bundle set" && r.Endpoint == "" && r.Authorities == 1
	})
	if !strings.Contains(east.server.logs.String(), "a federation peer was removed: its bundle is no longer fetched, and stays trusted until 'meshfed bundle delete TD'") {
		t.Errorf("east does not warn about the removed peer:\n%s", east.server.logs.String())
	}
	east.agent.mustRun(t)
	if east.server.cmd.ProcessState != nil {
		t.Error("east's server exited")
	}
}

// bundleListRow is one bundle of 'meshfed bundle list -o json'.
type bundleListRow struct {
	TrustDomain string `json:"trust_domain"`
	Authorities int    `json:"x509_authorities"`
	Source      string `json:"source"`
	Endpoint    string `json:"bundle_endpoint_url"`
	LastSuccess string `json:"last_success"`
	LastError   string `json:"last_error"`
}
