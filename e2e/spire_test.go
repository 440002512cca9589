package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/freeport"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var (
	spireTD          = spiffeid.RequireTrustDomainFromString("spire.example")
	spireEndpointID  = spiffeid.RequireFromString("spiffe://spire.example/spire/server")
	eastEndpointID   = spiffeid.RequireFromString("spiffe://east.example/meshfed/server")
	spireWorkloadID  = spiffeid.RequireFromString("spiffe://spire.example/ns/default/sa/ratings")
	eastWorkloadID   = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	federatedDomains = []string{"east.example", "spire.example"}
)

// TestSPIREFederation federates meshfed (east.example) with a real SPIRE
// v1.13.3 deployment (spire.example) in both directions, each side fetching
// the other's bundle from its https_spiffe bundle endpoint, and has a
// workload of each side talk mTLS to a workload of the other with go-spiffe.
// scripts/test builds SPIRE (scripts/spire) and sets MESHFED_SPIRE_DIR.
func TestSPIREFederation(t *testing.T) {
	spireDir := os.Getenv("MESHFED_SPIRE_DIR")
	if spireDir == "" {
		t.Skip("MESHFED_SPIRE_DIR is unset: run ./scripts/test, which builds SPIRE v1.13.3 (scripts/spire) and sets it to the directory holding spire-server and spire-agent")
	}
	spireServerBin, spireAgentBin := filepath.Join(spireDir, "spire-server"), filepath.Join(spireDir, "spire-agent")
	for _, b := range []string{spireServerBin, spireAgentBin} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("MESHFED_SPIRE_DIR=%s: %v; run ./scripts/spire to build SPIRE", spireDir, err)
		}
	}
	dir := t.TempDir()
	selector := fmt.Sprintf("unix:uid:%d", os.Getuid())

	// SPIRE's ports are chosen before either side starts: meshfed's
	// configuration names SPIRE's bundle endpoint, and SPIRE's names
	// meshfed's, known once meshfed runs.
	spireAPIPort, spireBundlePort := freePort(t), freePort(t)
	spireBundleURL := fmt.Sprintf("https://127.0.0.1:%d", spireBundlePort)

	// meshfed's server, federating with SPIRE's bundle endpoint.
	eastSock := filepath.Join(dir, "east", "admin.sock")
	writeFile(t, filepath.Join(dir, "east.yaml"), fmt.Sprintf(`federation:
  federates_with:
    - trust_domain: spire.example
      bundle_endpoint_url: %s
      bundle_endpoint_profile: https_spiffe
      endpoint_spiffe_id: %s
`, spireBundleURL, spireEndpointID))
	east := startServer(t, dir, "--config", "east.yaml", "--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", eastSock)
	logOnFailure(t, "meshfed server", east.logs)

	// SPIRE's server, federating with meshfed's bundle endpoint.
	spireSock := filepath.Join(dir, "spire", "server.sock")
	writeFile(t, filepath.Join(dir, "spire", "server.conf"), fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = "spire.example"
    data_dir = %q
    log_level = "DEBUG"
    federation {
        bundle_endpoint {
            address = "127.0.0.1"
            port = %d
            profile "https_spiffe" {}
        }
        federates_with "east.example" {
            bundle_endpoint_url = "https://%s"
            bundle_endpoint_profile "https_spiffe" {
                endpoint_spiffe_id = %q
            }
        }
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, spireAPIPort, spireSock, filepath.Join(dir, "spire", "data"), spireBundlePort, east.bundle, eastEndpointID,
		filepath.Join(dir, "spire", "data", "datastore.sqlite3")))
	spireServer := startDaemon(t, dir, "spire-server", spireServerBin, "run", "-config", filepath.Join(dir, "spire", "server.conf"))
	testsync.EventuallyWithin(t, 30*time.Second, "the SPIRE server to be healthy", func() bool {
		spireServer.mustRun(t)
		return run(t, dir, spireServerBin, "healthcheck", "-socketPath", spireSock).code == 0
	})
	spire := func(args ...string) string {
		t.Helper()
		r := run(t, dir, spireServerBin, append(args, "-socketPath", spireSock)...)
		if r.code != 0 {
			t.Fatalf("spire-server %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}

	// Both https_spiffe relationships are bootstrapped out of band: each
	// side's own bundle, as its CLI prints it, is set at the other.
	writeFile(t, filepath.Join(dir, "spire.json"), spire("bundle", "show", "-format", "spiffe"))
	writeFile(t, filepath.Join(dir, "spire.pem"), spire("bundle", "show"))
	writeFile(t, filepath.Join(dir, "east.json"), meshfed(t, dir, "bundle", "show", "--admin-socket", eastSock).stdout)
	spire("bundle", "set", "-format", "spiffe", "-id", "spiffe://east.example", "-path", filepath.Join(dir, "east.json"))
	meshfed(t, dir, "bundle", "set", "--admin-socket", eastSock, "--trust-domain", "spire.example", "--in", "spire.json")

	// Each side fetches the other's bundle now rather than when its
	// schedule says (SPIRE: a minute after its failed first attempt;
	// meshfed: 10 s). Each command exits 0 only if the fetch succeeded:
	// TLS to the peer's endpoint, which must present an SVID for the
	// configured endpoint SPIFFE ID chaining to the bootstrapped bundle,
	// and a bundle the fetching side accepts.
	spire("federation", "refresh", "-id", "spiffe://east.example")
	meshfed(t, dir, "bundle", "refresh", "spire.example", "--admin-socket", eastSock)

	// What each side stores of the other is what the other's endpoint
	// serves, fetched here independently with go-spiffe.
	eastServed := fetchServedBundle(t, eastTD, "https://"+east.bundle, eastEndpointID, filepath.Join(dir, "east.json"))
	spireServed := fetchServedBundle(t, spireTD, spireBundleURL, spireEndpointID, filepath.Join(dir, "spire.json"))
	spireHolds := parseBundle(t, eastTD, spire("bundle", "list", "-id", "spiffe://east.example", "-format", "spiffe"))
	eastHolds := parseBundle(t, spireTD, meshfed(t, dir, "bundle", "show", "--admin-socket", eastSock, "--trust-domain", "spire.example").stdout)
	assertSameAuthorities(t, "SPIRE's bundle of east.example vs meshfed's bundle endpoint", spireHolds, eastServed)
	assertSameAuthorities(t, "meshfed's bundle of spire.example vs SPIRE's bundle endpoint", eastHolds, spireServed)
	// And in full: `spire-server bundle show` prints no spiffe_refresh_hint
	// (SPIRE's endpoint adds it), so this holds only because meshfed
	// stored the bundle it fetched over the bootstrapped one.
	if !eastHolds.Equal(spireServed) {
		got, _ := eastHolds.Marshal()
		want, _ := spireServed.Marshal()
		t.Errorf("meshfed's bundle of spire.example differs from the one SPIRE's endpoint serves:\n got %s\nwant %s", got, want)
	}

	// A SPIRE agent, attested with a join token and trusting the SPIRE
	// server's bundle, and an entry for this process that federates with
	// east.example.
	var tok struct{ Value string }
	if out := spire("token", "generate", "-output", "json"); json.Unmarshal([]byte(out), &tok) != nil || tok.Value == "" {
		t.Fatalf("spire-server token generate -output json printed %q", out)
	}
	spireWL := filepath.Join(dir, "spire-agent", "workload.sock")
	writeFile(t, filepath.Join(dir, "spire-agent", "agent.conf"), fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = "spire.example"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, filepath.Join(dir, "spire-agent", "data"), spireAPIPort, spireWL, filepath.Join(dir, "spire.pem")))
	spire("entry", "create", "-parentID", "spiffe://spire.example/spire/agent/join_token/"+tok.Value,
		"-spiffeID", spireWorkloadID.String(), "-selector", selector, "-federatesWith", "spiffe://east.example")
	spireAgent := startDaemon(t, dir, "spire-agent", spireAgentBin, "run", "-config", filepath.Join(dir, "spire-agent", "agent.conf"), "-joinToken", tok.Value)

	// A meshfed agent, attested with a join token, and an entry for this
	// process that federates with spire.example.
	eastToken := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", eastSock, "--spiffe-id", "spiffe://east.example/node/host-1").stdout)
	meshfed(t, dir, "entry", "create", "--admin-socket", eastSock, "--parent-id", "spiffe://east.example/node/host-1",
		"--spiffe-id", eastWorkloadID.String(), "--selector", selector, "--federates-with", "spire.example")
	eastWL := filepath.Join(dir, "east-agent", "workload.sock")
	eastAgent := startAgent(t, dir, "--server", east.listen, "--trust-bundle", "east/ca/ca.pem", "--data-dir", "east-agent",
		"--socket", eastWL, "--join-token", eastToken)
	logOnFailure(t, "meshfed agent", eastAgent.logs)

	// Each workload gets its SVID and exactly the bundles of both trust
	// domains, the foreign one as the foreign endpoint serves it.
	spireCtx := fetchX509Context(t, spireAgent.mustRun, spireWL, spireWorkloadID)
	eastCtx := fetchX509Context(t, eastAgent.mustRun, eastWL, eastWorkloadID)
	assertSameX509Authorities(t, "east.example's bundle at the SPIRE workload vs meshfed's bundle endpoint", bundleOf(t, spireCtx.Bundles, eastTD), eastServed)
	assertSameX509Authorities(t, "spire.example's bundle at the meshfed workload vs SPIRE's bundle endpoint", bundleOf(t, eastCtx.Bundles, spireTD), spireServed)

	// mTLS between the two workloads, each with go-spiffe's X509Source on
	// its own agent, authorizing exactly the other's SPIFFE ID.
	spireSrc, eastSrc := x509Source(t, spireWL), x509Source(t, eastWL)
	for _, tc := range []struct {
		name               string
		server, client     *workloadapi.X509Source
		serverID, clientID spiffeid.ID
	}{
		{"SPIRE workload serves, meshfed workload connects", spireSrc, eastSrc, spireWorkloadID, eastWorkloadID},
		{"meshfed workload serves, SPIRE workload connects", eastSrc, spireSrc, eastWorkloadID, spireWorkloadID},
	} {
		serverSaw, clientSaw, serverErr, clientErr := handshake(t,
			tlsconfig.MTLSServerConfig(tc.server, tc.server, tlsconfig.AuthorizeID(tc.clientID)),
			tlsconfig.MTLSClientConfig(tc.client, tc.client, tlsconfig.AuthorizeID(tc.serverID)))
		if serverErr != nil || clientErr != nil {
			t.Errorf("%s: server error %v, client error %v", tc.name, serverErr, clientErr)
			continue
		}
		if serverSaw != tc.clientID || clientSaw != tc.serverID {
			t.Errorf("%s: the server saw %s (want %s), the client saw %s (want %s)", tc.name, serverSaw, tc.clientID, clientSaw, tc.serverID)
		}
	}

	// Without the foreign bundle the client refuses the server; with a
	// bundle of the foreign domain that lacks the CA the peer's SVID chains
	// to (another east.example root) the server refuses the client. The
	// other side gets the refuser's alert.
	for _, tc := range []struct {
		name                 string
		server, client       *tls.Config
		serverErr, clientErr string
	}{
		{
			name:      "a meshfed client with only east.example's bundle",
			server:    tlsconfig.MTLSServerConfig(spireSrc, spireSrc, tlsconfig.AuthorizeID(eastWorkloadID)),
			client:    tlsconfig.MTLSClientConfig(eastSrc, x509bundle.NewSet(bundleOf(t, eastCtx.Bundles, eastTD)), tlsconfig.AuthorizeID(spireWorkloadID)),
			serverErr: "remote error: tls: bad certificate",
			clientErr: `x509svid: could not get X509 bundle: x509bundle: no X.509 bundle for trust domain "spire.example"`,
		},
		{
			name:      "a SPIRE server with another root as east.example's bundle",
			server:    tlsconfig.MTLSServerConfig(spireSrc, x509bundle.NewSet(bundleOf(t, spireCtx.Bundles, spireTD), otherRoot(t, dir)), tlsconfig.AuthorizeID(eastWorkloadID)),
			client:    tlsconfig.MTLSClientConfig(eastSrc, eastSrc, tlsconfig.AuthorizeID(spireWorkloadID)),
			serverErr: "x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority",
			clientErr: "remote error: tls: bad certificate",
		},
	} {
		_, _, serverErr, clientErr := handshake(t, tc.server, tc.client)
		if fmt.Sprint(serverErr) != tc.serverErr || fmt.Sprint(clientErr) != tc.clientErr {
			t.Errorf("%s: server error %v, client error %v; want %q and %q", tc.name, serverErr, clientErr, tc.serverErr, tc.clientErr)
		}
	}
}

// otherRoot is the X.509 bundle of a root made for east.example that
// meshfed's server does not sign with.
func otherRoot(t *testing.T, dir string) *x509bundle.Bundle {
	t.Helper()
	meshfed(t, dir, "ca", "create-root", "--out", "other-east", "--trust-domain", "east.example")
	certs, err := pemfile.ReadCertificates(filepath.Join(dir, "other-east", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return x509bundle.FromX509Authorities(eastTD, certs)
}

// daemon is a process of SPIRE's the test runs: its server or agent.
type daemon struct {
	name string
	cmd  *exec.Cmd
	logs *testsync.Buffer
	done chan error
}

// startDaemon starts bin and stops it when the test ends; its output goes
// into the test's log if the test fails.
func startDaemon(t *testing.T, dir, name, bin string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	logs := &testsync.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{name: name, cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() { d.stop(t) })
	logOnFailure(t, name, logs)
	return d
}

// mustRun fails the test if the daemon has exited.
func (d *daemon) mustRun(t *testing.T) {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		t.Fatalf("%s exited: %v", d.name, err)
	default:
	}
}

// stop sends SIGTERM and waits; a daemon that ignores it is killed.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("%s did not stop on SIGTERM", d.name)
	}
}

// mustRun fails the test if the agent has exited.
func (p *agentProc) mustRun(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("meshfed agent exited: %v", err)
	default:
	}
}

// logOnFailure puts a process's log into the test's output if the test
// fails.
func logOnFailure(t *testing.T, name string, logs *testsync.Buffer) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, logs.String())
		}
	})
}

// freePort returns a loopback TCP port for a process whose port must be
// known before it starts (see package freeport).
func freePort(t *testing.T) int {
	t.Helper()
	port, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func parseBundle(t *testing.T, td spiffeid.TrustDomain, data string) *spiffebundle.Bundle {
	t.Helper()
	b, err := spiffebundle.Parse(td, []byte(data))
	if err != nil {
		t.Fatalf("bundle of %s: %v\n%s", td, err, data)
	}
	return b
}

// fetchServedBundle fetches td's bundle from its endpoint as the
// https_spiffe profile asks: the server must present an SVID for endpointID
// that chains to the bundle in trustFile.
func fetchServedBundle(t *testing.T, td spiffeid.TrustDomain, url string, endpointID spiffeid.ID, trustFile string) *spiffebundle.Bundle {
	t.Helper()
	data, err := os.ReadFile(trustFile)
	if err != nil {
		t.Fatal(err)
	}
	trust := parseBundle(t, endpointID.TrustDomain(), string(data))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(trust, endpointID))
	if err != nil {
		t.Fatalf("fetching %s's bundle from %s: %v", td, url, err)
	}
	return b
}

// assertSameAuthorities compares two bundles' X.509 and JWT authorities.
func assertSameAuthorities(t *testing.T, what string, got, want *spiffebundle.Bundle) {
	t.Helper()
	assertSameX509Authorities(t, what, got, want)
	if !got.JWTBundle().Equal(want.JWTBundle()) {
		t.Errorf("%s: JWT authorities %v, want %v", what, keyIDs(got), keyIDs(want))
	}
}

func keyIDs(b *spiffebundle.Bundle) []string {
	var ids []string
	for id := range b.JWTAuthorities() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// assertSameX509Authorities compares two bundles' X.509 authorities as
// sets; an empty want is a failure.
func assertSameX509Authorities(t *testing.T, what string, got, want interface{ X509Authorities() []*x509.Certificate }) {
	t.Helper()
	g, w := got.X509Authorities(), want.X509Authorities()
	same := len(g) == len(w) && len(w) > 0
	for _, c := range w {
		same = same && slices.ContainsFunc(g, c.Equal)
	}
	if !same {
		t.Errorf("%s: X.509 authorities %v, want %v", what, subjects(g), subjects(w))
	}
}

func subjects(certs []*x509.Certificate) []string {
	var s []string
	for _, c := range certs {
		s = append(s, fmt.Sprintf("%q serial %x", c.Subject, c.SerialNumber))
	}
	return s
}

func bundleOf(t *testing.T, set *x509bundle.Set, td spiffeid.TrustDomain) *x509bundle.Bundle {
	t.Helper()
	b, ok := set.Get(td)
	if !ok {
		t.Fatalf("no bundle of %s in the set", td)
	}
	return b
}

// fetchX509Context polls a Workload API socket until it hands this process
// exactly the SVID want and the bundles of federatedDomains. Each attempt
// is a new connection and attestation, so it polls every 200 ms, not as
// fast as testsync.EventuallyWithin.
func fetchX509Context(t *testing.T, agentRunning func(*testing.T), sock string, want spiffeid.ID) *workloadapi.X509Context {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		agentRunning(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+sock))
		cancel()
		seen := fmt.Sprint(err)
		if err == nil {
			var ids, tds []string
			for _, s := range c.SVIDs {
				ids = append(ids, s.ID.String())
			}
			for _, b := range c.Bundles.Bundles() {
				tds = append(tds, b.TrustDomain().Name())
			}
			slices.Sort(tds)
			if len(ids) == 1 && ids[0] == want.String() && slices.Equal(tds, federatedDomains) {
				return c
			}
			seen = fmt.Sprintf("SVIDs %v, bundles %v", ids, tds)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no SVID %s with the bundles of %v within 30s; last answer: %s", sock, want, federatedDomains, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// x509Source is go-spiffe's X509Source on a Workload API socket, closed
// when the test ends.
func x509Source(t *testing.T, sock string) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatalf("X509Source on %s: %v", sock, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// handshake makes one TLS connection over loopback and returns the SPIFFE
// ID each side saw of the other and each side's error.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (serverSaw, clientSaw spiffeid.ID, serverErr, clientErr error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type outcome struct {
		saw spiffeid.ID
		err error
	}
	server := make(chan outcome, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			server <- outcome{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.HandshakeContext(ctx); err != nil {
			server <- outcome{err: err}
			return
		}
		id, err := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
		if err == nil {
			_, err = tc.Write([]byte("ok"))
		}
		server <- outcome{id, err}
	}()
	var client outcome
	dialer := tls.Dialer{Config: clientCfg}
	if c, err := dialer.DialContext(ctx, "tcp", l.Addr().String()); err != nil {
		client.err = err
	} else {
		tc := c.(*tls.Conn)
		client.saw, client.err = x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
		// In TLS 1.3 the server checks the client's certificate after the
		// client's side of the handshake is done: its verdict comes with
		// the first read.
		if _, err := io.ReadFull(tc, make([]byte, 2)); err != nil && client.err == nil {
			client.err = err
		}
		c.Close()
	}
	s := <-server
	return s.saw, client.saw, s.err, client.err
}
