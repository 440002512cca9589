package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/meshfed/meshfed/internal/testpg"
	"google.golang.org/grpc/credentials/insecure"

	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/testsync"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

var eastTD = spiffeid.RequireTrustDomainFromString("east.example")

// serverProc is a running `meshfed server`.
type serverProc struct {
	cmd                  *exec.Cmd
	listen, bundle, sock string
	logs                 *testsync.Buffer
	done                 chan error
}

var startedLine = regexp.MustCompile(`meshfed server for (\S+): signing API (\S+), bundle endpoint (\S+), admin socket (\S+)`)

// startServer runs meshfed server with ports chosen by the kernel and waits
// for the line that names them.
func startServer(t *testing.T, dir string, args ...string) *serverProc {
	t.Helper()
	full := append([]string{"server", "--listen", "127.0.0.1:0", "--bundle-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, args...)
	cmd := exec.Command(meshfedBin, full...)
	cmd.Dir = dir
	pr, pw := io.Pipe()
	logs := &testsync.Buffer{}
	cmd.Stderr = io.MultiWriter(pw, logs)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); pw.Close() }()
	found := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := startedLine.FindStringSubmatch(sc.Text()); m != nil {
				found <- m
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case m := <-found:
		p.listen, p.bundle, p.sock = m[2], m[3], m[4]
	case err := <-p.done:
		t.Fatalf("meshfed server exited: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("meshfed server did not start:\n%s", logs.String())
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *serverProc) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("meshfed server exited with %v\n%s", err, p.logs.String())
		}
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Errorf("meshfed server did not stop on SIGTERM\n%s", p.logs.String())
	}
}

func curl(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	p, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is not installed: run ./scripts/test, which installs it")
	}
	r := run(t, dir, p, args...)
	return r.stdout, r.code
}

func TestServerCLIContractAndRestart(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "east", "admin.sock")
	args := []string{"--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", sock}
	srv := startServer(t, dir, args...)

	// token create prints the token and nothing else.
	r := meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", "spiffe://east.example/node/host-1")
	if lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n"); len(lines) != 1 || len(lines[0]) != 43 {
		t.Errorf("token create stdout = %q, want one 43-character token", r.stdout)
	}
	meshfed(t, dir, "entry", "create", "--admin-socket", sock, "--parent-id", "spiffe://east.example/node/host-1",
		"--spiffe-id", "spiffe://east.example/ns/default/sa/reviews", "--selector", "unix:uid:1000")
	list := meshfed(t, dir, "entry", "list", "--admin-socket", sock)
	if !strings.Contains(list.stdout, "spiffe://east.example/ns/default/sa/reviews") || !strings.Contains(list.stdout, "unix:uid:1000") {
		t.Errorf("entry list:\n%s", list.stdout)
	}

	// bundle show prints the SPIFFE bundle holding the generated root.
	show := meshfed(t, dir, "bundle", "show", "--admin-socket", sock)
	b, err := spiffebundle.Parse(eastTD, []byte(show.stdout))
	if err != nil {
		t.Fatalf("bundle show output is not a SPIFFE bundle: %v\n%s", err, show.stdout)
	}
	root, err := pemfile.ReadCertificates(filepath.Join(dir, "east", "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root[0]) {
		t.Errorf("bundle holds %d authorities, not the root in the data dir", len(b.X509Authorities()))
	}
	if m := mode(t, filepath.Join(dir, "east", "ca", "ca.key")); m != 0o600 {
		t.Errorf("CA key mode %o", m)
	}

	// The bundle endpoint (https_spiffe) with curl: the same bytes.
	body, code := curl(t, dir, "-sS", "-k", "https://"+srv.bundle+"/")
	if code != 0 || body != show.stdout {
		t.Errorf("curl of the bundle endpoint (exit %d) differs from bundle show:\n%s", code, body)
	}
	// And verified as the SPIFFE profile asks: the server's SVID, by ID.
	os.WriteFile(filepath.Join(dir, "east.json"), []byte(show.stdout), 0o644)
	meshfed(t, dir, "inspect", "bundle", "https://"+srv.bundle+"/", "--trust-domain", "east.example",
		"--endpoint-bundle", "east.json", "--endpoint-spiffe-id", "spiffe://east.example/meshfed/server")

	// A restart loses nothing: same root, same entry.
	srv.stop(t)
	srv = startServer(t, dir, args...)
	list = meshfed(t, dir, "entry", "list", "--admin-socket", sock)
	if !strings.Contains(list.stdout, "spiffe://east.example/ns/default/sa/reviews") {
		t.Errorf("entry lost across a restart:\n%s", list.stdout)
	}
	again := meshfed(t, dir, "bundle", "show", "--admin-socket", sock)
	b2, _ := spiffebundle.Parse(eastTD, []byte(again.stdout))
	if b2 == nil || !b2.X509Authorities()[0].Equal(root[0]) {
		t.Error("the root changed across a restart")
	}
	if strings.Contains(srv.logs.String(), "PRIVATE KEY") {
		t.Error("key material in the server's log")
	}
}

func TestServerHTTPSWebBundleEndpoint(t *testing.T) {
	dir := t.TempDir()
	meshfed(t, dir, "ca", "create-root", "--out", "web")
	meshfed(t, dir, "ca", "issue", "--ca", "web", "--san", "127.0.0.1", "--out", "webleaf")
	sock := filepath.Join(dir, "admin.sock")
	srv := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", sock,
		"--bundle-profile", "https_web", "--bundle-cert", "webleaf/cert.pem", "--bundle-key", "webleaf/key.pem")
	show := meshfed(t, dir, "bundle", "show", "--admin-socket", sock)
	body, code := curl(t, dir, "-sS", "--cacert", "web/ca.pem", "https://"+srv.bundle+"/")
	if code != 0 || body != show.stdout {
		t.Fatalf("curl with full verification (exit %d):\n%s", code, body)
	}
	// Another root: curl refuses (exit 60).
	meshfed(t, dir, "ca", "create-root", "--out", "other")
	if _, code := curl(t, dir, "-sS", "--cacert", "other/ca.pem", "https://"+srv.bundle+"/"); code != 60 {
		t.Errorf("curl with another root: exit %d, want 60", code)
	}
}

// startCACertsServer runs a server of east.example in dir on an Istio
// cacerts directory (dir/cacerts, under a root in dir/root) polled every
// interval, and returns it with its admin socket.
func startCACertsServer(t *testing.T, dir, interval string) (*serverProc, string) {
	t.Helper()
	meshfed(t, dir, "ca", "create-root", "--out", "root")
	meshfed(t, dir, "ca", "istio-cacerts", "--ca", "root", "--trust-domain", "east.example", "--out", "cacerts")
	writeFile(t, filepath.Join(dir, "server.yaml"), "ca:\n  reload_interval: "+interval+"\n")
	sock := filepath.Join(dir, "admin.sock")
	return startServer(t, dir, "--config", "server.yaml", "--trust-domain", "east.example", "--data-dir", "east",
		"--admin-socket", sock, "--cacerts-dir", "cacerts"), sock
}

func TestServerCACertsHotReload(t *testing.T) {
	dir := t.TempDir()
	srv, sock := startCACertsServer(t, dir, "100ms")
	first := servingIssuer(t, dir, srv)

	// A new intermediate in place of the old: taken without a restart, and
	// the server's own SVID is re-issued by it.
	meshfed(t, dir, "ca", "istio-cacerts", "--ca", "root", "--trust-domain", "east.example", "--out", "cacerts", "--force")
	inter, _ := pemfile.ReadCertificates(filepath.Join(dir, "cacerts", "ca-cert.pem"))
	testsync.EventuallyWithin(t, 10*time.Second, "the server to sign with the new intermediate", func() bool {
		return servingIssuer(t, dir, srv).Equal(inter[0])
	})
	if first.Equal(inter[0]) {
		t.Fatal("the replacement is the same intermediate")
	}

	// A bad replacement is refused with a log line; the server keeps going.
	good, _ := os.ReadFile(filepath.Join(dir, "cacerts", "ca-key.pem"))
	os.WriteFile(filepath.Join(dir, "cacerts", "ca-key.pem"), []byte("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n"), 0o600)
	testsync.EventuallyWithin(t, 10*time.Second, "the refusal to be logged", func() bool {
		return strings.Contains(srv.logs.String(), "cacerts replacement refused; the CA in use keeps signing")
	})
	if !servingIssuer(t, dir, srv).Equal(inter[0]) {
		t.Error("a bad replacement changed the CA in use")
	}
	if strings.Contains(srv.logs.String(), string(good[:40])) {
		t.Error("key material in the log")
	}
	meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", "spiffe://east.example/node/x")
}

// TestServerSIGHUPReadsCACertsAgain: with the cacerts directory polled only
// hourly, SIGHUP makes the server read it at once; the server goes on.
func TestServerSIGHUPReadsCACertsAgain(t *testing.T) {
	dir := t.TempDir()
	srv, sock := startCACertsServer(t, dir, "1h")
	meshfed(t, dir, "ca", "istio-cacerts", "--ca", "root", "--trust-domain", "east.example", "--out", "cacerts", "--force")
	inter, err := pemfile.ReadCertificates(filepath.Join(dir, "cacerts", "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testsync.EventuallyWithin(t, 10*time.Second, "the server to sign with the new intermediate after SIGHUP", func() bool {
		return servingIssuer(t, dir, srv).Equal(inter[0])
	})
	if !strings.Contains(srv.logs.String(), "SIGHUP: reading the CA's directory (cacerts or VirtualMesh) and the federation section of --config again") {
		t.Errorf("no SIGHUP line in the log:\n%s", srv.logs.String())
	}
	meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", "spiffe://east.example/node/x")
}

// servingIssuer returns the certificate that issued the server's own SVID,
// as presented on its signing port.
func servingIssuer(t *testing.T, dir string, srv *serverProc) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", srv.listen, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	certs := conn.ConnectionState().PeerCertificates
	if len(certs) < 2 {
		t.Fatalf("server presented %d certificates; want its SVID and intermediate", len(certs))
	}
	return certs[1]
}

// attest calls AttestNode with a join token and returns the gRPC error.
func attest(t *testing.T, addr string, roots []*x509.Certificate, token string) error {
	t.Helper()
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := pki.GenerateKey(pki.ECP256)
	der, _ := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = pb.NewNodeClient(conn).AttestNode(ctx, &pb.AttestNodeRequest{Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: token}, Csr: der})
	return err
}

func TestTwoServersOnOnePostgres(t *testing.T) {
	dsn := testpg.Start(t)
	dir := t.TempDir()
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	a := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "a", "--admin-socket", sockA, "--datastore", dsn, "--server-id", "server-a")
	b := startServer(t, dir, "--trust-domain", "east.example", "--data-dir", "b", "--admin-socket", sockB, "--datastore", dsn, "--server-id", "server-b")

	// Each server has its own root; both publish both.
	rootA, _ := pemfile.ReadCertificates(filepath.Join(dir, "a", "ca", "ca.pem"))
	rootB, _ := pemfile.ReadCertificates(filepath.Join(dir, "b", "ca", "ca.pem"))
	var published *spiffebundle.Bundle
	testsync.EventuallyWithin(t, 10*time.Second, "server a to publish server b's root", func() bool {
		show := meshfed(t, dir, "bundle", "show", "--admin-socket", sockA)
		published, _ = spiffebundle.Parse(eastTD, []byte(show.stdout))
		return published != nil && published.HasX509Authority(rootA[0]) && published.HasX509Authority(rootB[0])
	})
	roots := published.X509Authorities()

	// An entry made at one server is at the other.
	meshfed(t, dir, "entry", "create", "--admin-socket", sockA, "--parent-id", "spiffe://east.example/node/host-1",
		"--spiffe-id", "spiffe://east.example/ns/default/sa/reviews", "--selector", "unix:uid:1000")
	if list := meshfed(t, dir, "entry", "list", "--admin-socket", sockB); !strings.Contains(list.stdout, "spiffe://east.example/ns/default/sa/reviews") {
		t.Errorf("server b does not see the entry made at a:\n%s", list.stdout)
	}

	// A join token raced at both servers is consumed exactly once.
	for round := 0; round < 5; round++ {
		token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", sockA, "--spiffe-id", fmt.Sprintf("spiffe://east.example/node/race-%d", round)).stdout)
		errs := make(chan error, 2)
		for _, srv := range []*serverProc{a, b} {
			go func(addr string) { errs <- attest(t, addr, roots, token) }(srv.listen)
		}
		var ok, refused int
		for range 2 {
			err := <-errs
			switch {
			case err == nil:
				ok++
			case strings.Contains(err.Error(), "is unknown, expired or already used"):
				refused++
			default:
				t.Errorf("round %d: unexpected error %v", round, err)
			}
		}
		if ok != 1 || refused != 1 {
			t.Fatalf("round %d: %d successes and %d refusals, want exactly one of each", round, ok, refused)
		}
	}
	// The audit log, shared, names the server that signed each.
	audit := meshfed(t, dir, "audit", "list", "--admin-socket", sockB, "-o", "json")
	if n := strings.Count(audit.stdout, `"credential": "join-token"`); n != 5 {
		t.Errorf("audit log holds %d join-token issuances, want 5:\n%s", n, audit.stdout)
	}
	if n := strings.Count(audit.stdout, `"root_key_id": "`); n != 5 {
		t.Errorf("audit log names the root of %d issuances, want 5:\n%s", n, audit.stdout)
	}
}

// agentProc is a running `meshfed agent`.
type agentProc struct {
	cmd  *exec.Cmd
	logs *testsync.Buffer
	done chan error
}

var agentStarted = regexp.MustCompile(`meshfed agent (\S+): Workload API on (\S+)`)

func startAgent(t *testing.T, dir string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(meshfedBin, append([]string{"agent"}, args...)...)
	cmd.Dir = dir
	logs := &testsync.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	testsync.EventuallyWithin(t, 30*time.Second, "the agent to start", func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("meshfed agent exited: %v\n%s", err, logs.String())
		default:
		}
		return agentStarted.MatchString(logs.String())
	})
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("meshfed agent exited with %v\n%s", err, p.logs.String())
		}
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Errorf("meshfed agent did not stop on SIGTERM\n%s", p.logs.String())
	}
}

func TestAgentServesWorkloadsThroughOutages(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "east", "admin.sock")
	serverArgs := []string{"--trust-domain", "east.example", "--data-dir", "east", "--admin-socket", sock}
	srv := startServer(t, dir, serverArgs...)
	token := strings.TrimSpace(meshfed(t, dir, "token", "create", "--admin-socket", sock, "--spiffe-id", "spiffe://east.example/node/host-1").stdout)
	meshfed(t, dir, "entry", "create", "--admin-socket", sock, "--parent-id", "spiffe://east.example/node/host-1",
		"--spiffe-id", "spiffe://east.example/ns/default/sa/reviews", "--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()),
		"--federates-with", "west.example")
	meshfed(t, dir, "ca", "create-root", "--out", "west", "--trust-domain", "west.example")
	meshfed(t, dir, "bundle", "set", "--admin-socket", sock, "--trust-domain", "west.example", "--in", "west/ca.pem")

	wl := filepath.Join(dir, "agent", "workload.sock")
	agentArgs := []string{"--server", srv.listen, "--trust-bundle", "east/ca/ca.pem", "--data-dir", "agent", "--socket", wl}
	sdsSock := filepath.Join(dir, "agent", "sds.sock")
	agent := startAgent(t, dir, append(agentArgs, "--join-token", token, "--sds-socket", sdsSock,
		"--file-dir", "files", "--file-selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "--file-exec", "touch reloaded")...)

	fetch := func() result {
		var r result
		testsync.EventuallyWithin(t, 30*time.Second, "the workload's SVID", func() bool {
			r = run(t, dir, meshfedBin, "svid", "fetch", "--socket", "agent/workload.sock", // relative, as users type it
				"--out", "certs", "--timeout", "5s")
			return r.code == 0
		})
		return r
	}
	r := fetch()
	for _, want := range []string{"SPIFFE ID:     spiffe://east.example/ns/default/sa/reviews\n", "Bundles:       east.example, west.example\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("svid fetch output lacks %q:\n%s", want, r.stdout)
		}
	}
	if got := strings.Join(listDir(t, filepath.Join(dir, "certs")), ","); got != "bundle.pem,federated-west.example.pem,svid.pem,svid_key.pem" {
		t.Errorf("svid fetch --out wrote %s", got)
	}
	if m := mode(t, filepath.Join(dir, "certs", "svid_key.pem")); m != 0o600 {
		t.Errorf("svid_key.pem mode %o", m)
	}
	if out, code := openssl(t, dir, "verify", "-CAfile", "certs/bundle.pem", "certs/svid.pem"); code != 0 {
		t.Errorf("openssl verify of the fetched SVID: %s", out)
	}
	if m := mode(t, filepath.Join(dir, "agent", "node-svid.key")); m != 0o600 {
		t.Errorf("node key mode %o", m)
	}
	// File mode wrote the same identity and ran the reload command.
	testsync.EventuallyWithin(t, 10*time.Second, "file mode to write and reload", func() bool {
		_, err := os.Stat(filepath.Join(dir, "files", "reloaded"))
		return err == nil
	})
	if got := strings.Join(listDir(t, filepath.Join(dir, "files")), ","); got != "bundle.pem,federated-west.example.pem,reloaded,svid.pem,svid_key.pem" {
		t.Errorf("file mode wrote %s", got)
	}
	if out, code := openssl(t, dir, "verify", "-CAfile", "files/bundle.pem", "files/svid.pem"); code != 0 {
		t.Errorf("openssl verify of the file-mode SVID: %s", out)
	}

	// Envoy's view over SDS: the same identity, and the SPIFFE validator with
	// one bundle per trust domain.
	sdsConn, err := grpc.NewClient("unix://"+sdsSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer sdsConn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(sdsConn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node: &corev3.Node{Id: "sidecar~127.0.0.1~reviews~default"}, TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
		ResourceNames: []string{"default", "ALL"},
	})
	if err != nil {
		t.Fatalf("SDS FetchSecrets: %v", err)
	}
	names := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			t.Fatal(err)
		}
		names[sec.GetName()] = sec
	}
	chain, err := pemfile.ParseCertificates(names["default"].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if err != nil || chain[0].URIs[0].String() != "spiffe://east.example/ns/default/sa/reviews" {
		t.Fatalf("SDS default secret: %v", err)
	}
	validator := &tlsv3.SPIFFECertValidatorConfig{}
	if err := names["ALL"].GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(validator); err != nil {
		t.Fatalf("SDS ALL secret: %v", err)
	}
	var tds []string
	for _, d := range validator.GetTrustDomains() {
		tds = append(tds, d.GetName())
	}
	if strings.Join(tds, ",") != "east.example,west.example" {
		t.Errorf("SPIFFE validator trust domains %v", tds)
	}

	// West rotates its root: the new bundle, set at the server, reaches the
	// workload through the agent.
	meshfed(t, dir, "ca", "create-root", "--out", "west2", "--trust-domain", "west.example")
	meshfed(t, dir, "bundle", "set", "--admin-socket", sock, "--trust-domain", "west.example", "--in", "west2/ca.pem")
	newWest, _ := os.ReadFile(filepath.Join(dir, "west2", "ca.pem"))
	testsync.EventuallyWithin(t, 10*time.Second, "west's new root to reach the workload", func() bool {
		run(t, dir, meshfedBin, "svid", "fetch", "--socket", wl, "--out", "certs2", "--timeout", "5s")
		got, _ := os.ReadFile(filepath.Join(dir, "certs2", "federated-west.example.pem"))
		return bytes.Equal(got, newWest)
	})

	// The server goes away: the workload keeps getting its SVID.
	srv.stop(t)
	r = fetch()
	if !strings.Contains(r.stdout, "spiffe://east.example/ns/default/sa/reviews") {
		t.Errorf("no SVID while the server is down:\n%s", r.stdout)
	}

	// The agent restarts without a token (the node SVID is kept), and with
	// the server back it serves again; this time with a configuration file
	// that allows one connection per uid.
	agent.stop(t)
	srv = startServer(t, dir, serverArgs...)
	agentArgs[1] = srv.listen
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte("metrics_listen: "+metricsAddr+"\nlimits:\n  max_connections_per_uid: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	agent = startAgent(t, dir, append(agentArgs, "--config", "agent.yaml")...)
	r = fetch()
	if !strings.Contains(r.stdout, "spiffe://east.example/ns/default/sa/reviews") {
		t.Errorf("no SVID after the agent restarted:\n%s", r.stdout)
	}

	// A workload of this uid holds a connection open: it is the uid's one
	// connection, so another process of the uid is refused, with the limit
	// named in the agent's log and metrics, and the held one goes on.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	held, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+wl))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// Until the agent has seen the last fetch's process go, its connection
	// may still be counted.
	testsync.EventuallyWithin(t, 10*time.Second, "the held connection's first SVID", func() bool {
		_, err := held.FetchX509SVID(ctx)
		return err == nil
	})
	refused := run(t, dir, meshfedBin, "svid", "fetch", "--socket", wl, "--timeout", "2s")
	// The workload's error names the limit: the agent answers the refused
	// connection's first call before closing it.
	if want := fmt.Sprintf("code = ResourceExhausted desc = admit: uid %d holds as many connections to this agent as limits.max_connections_per_uid allows (1)", os.Getuid()); refused.code != 1 || !strings.Contains(refused.stderr, want) {
		t.Errorf("a second connection of one uid, with max_connections_per_uid: 1: exit %d, want 1 and %q:\n%s%s", refused.code, want, refused.stdout, refused.stderr)
	}
	if !strings.Contains(agent.logs.String(), "limit=limits.max_connections_per_uid") {
		t.Errorf("the agent did not log the refusal:\n%s", agent.logs.String())
	}
	metrics, _ := curl(t, dir, "-sS", "--max-time", "10", "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		`meshfed_agent_workload_refused_total{limit="max_connections_per_uid",what="connection"} `,
		`meshfed_agent_calls_total{code="OK",method="SpiffeWorkloadAPI/FetchX509SVID"} `,
		`meshfed_agent_call_first_response_seconds_count{method="SpiffeWorkloadAPI/FetchX509SVID"} `,
		"meshfed_agent_workload_connections 1\n",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("agent /metrics lacks %q:\n%s", want, metrics)
		}
	}
	if _, err := held.FetchX509SVID(ctx); err != nil {
		t.Errorf("the held connection after the refusal: %v", err)
	}
	for _, logs := range []string{agent.logs.String(), srv.logs.String()} {
		if strings.Contains(logs, "PRIVATE KEY") || strings.Contains(logs, token) {
			t.Error("a key or the join token in a log")
		}
	}
}
