package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

var proxyStarted = regexp.MustCompile(`meshfed proxy (\S+): (.+)`)

// The policies the ratings sidecar enforces, as users kubectl-apply them:
// mTLS required in the namespace, and only reviews (the principal, %s) may
// call ratings.
const demoPolicies = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: ratings
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["%s"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/ratings/*"]
`

// sidecarPair is a client workload's sidecar (an outbound listener) and a
// server workload's sidecar (an inbound HTTP listener) in front of a plain
// HTTP ratings app, each with its SVID from its own domain's agent.
type sidecarPair struct {
	app               *plainRatings
	outbound, inbound string // listen addresses
	server            *proc  // the server side's proxy
}

// startSidecars starts the pair for client calling server; policies (YAML)
// go in <server>-policies/ratings.yaml.
func (s *story) startSidecars(ctx context.Context, client, server *domain, policies string) (*sidecarPair, error) {
	app, err := startPlainRatings()
	if err != nil {
		return nil, err
	}
	s.plainApps = append(s.plainApps, app)
	polDir := server.name + "-policies"
	if err := os.MkdirAll(filepath.Join(s.cfg.Dir, polDir), 0o700); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(s.cfg.Dir, polDir, "ratings.yaml"), policies); err != nil {
		return nil, err
	}
	ports := make([]int, 2)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	p := &sidecarPair{app: app, inbound: fmt.Sprintf("127.0.0.1:%d", ports[0]), outbound: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	serverCfg, clientCfg := server.name+"-ratings-proxy.yaml", client.name+"-reviews-proxy.yaml"
	if err := writeFile(filepath.Join(s.cfg.Dir, serverCfg), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: ratings}
policies: %s
inbound:
- {name: ratings-http, listen: %q, port: 9080, forward_to: %q, protocol: http}
`, server.workloadSock, polDir, p.inbound, app.addr())); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(s.cfg.Dir, clientCfg), fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: reviews}
outbound:
- {name: ratings, listen: %q, service: ratings.default.svc, upstream: %q, allowed_ids: [%q], protocol: http}
`, client.workloadSock, p.outbound, p.inbound, server.id)); err != nil {
		return nil, err
	}
	for _, c := range []struct{ name, config string }{{server.name + " ratings proxy", serverCfg}, {client.name + " reviews proxy", clientCfg}} {
		pr, err := s.procs.start(c.name, "proxy", "--config", c.config)
		if err != nil {
			return nil, err
		}
		m, err := pr.waitLine(ctx, proxyStarted, 30*time.Second)
		if err != nil {
			return nil, err
		}
		s.say("  %s (pid %d): %s", c.name, pr.pid(), m[2])
		if c.config == serverCfg {
			p.server = pr
		}
	}
	return p, nil
}

// step5 puts the workloads of north and south behind `meshfed proxy`
// sidecars: the apps speak plain HTTP on loopback and the sidecars do mTLS
// and enforce Istio's policy.
func (s *story) step5(ctx context.Context) error {
	n, so := s.domains[north], s.domains[south]
	if n == nil || so == nil {
		return errors.New("step 4's domains are not running")
	}
	s.say("  the apps now speak plain HTTP on loopback; `meshfed proxy` sidecars do the mTLS and enforce Istio's policy")
	s.say("  south-policies/ratings.yaml: PeerAuthentication STRICT, AuthorizationPolicy ratings-viewer (ALLOW GET /ratings/* from north.example/ns/default/sa/reviews)")
	pair, err := s.startSidecars(ctx, n, so, fmt.Sprintf(demoPolicies, sourcePrincipal(n.id)))
	if err != nil {
		return err
	}
	s.ratingsProxy = pair.server
	s.reviewsOut = pair.outbound
	app, inbound, outbound := pair.app, pair.inbound, pair.outbound

	// 1. The app's plaintext through both sidecars.
	plain := &http.Client{Timeout: 5 * time.Second}
	code, body, err := plainGet(ctx, plain, "http://"+outbound+"/ratings/0")
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("reviews through the sidecars: %d %q %v", code, body, err)
	}
	s.say("  ✓ reviews (north) -> its sidecar -> mTLS -> ratings' sidecar -> ratings (south): %d %s", code, body)
	line, err := s.accessLine(ctx, "path=/ratings/0", "status=200")
	if err != nil {
		return err
	}
	if !strings.Contains(line, "source.principal="+sourcePrincipal(n.id)+" ") {
		return fmt.Errorf("ratings' sidecar logged %q, want source.principal=%s", line, sourcePrincipal(n.id))
	}
	s.say("  ✓ ratings' sidecar logged source.principal=%s, policy=default/ratings-viewer", sourcePrincipal(n.id))
	if got := app.lastXFCC(); !strings.Contains(got, "URI="+n.id.String()) {
		return fmt.Errorf("ratings got X-Forwarded-Client-Cert %q", got)
	}
	s.say("  ✓ ratings got X-Forwarded-Client-Cert: %s", shortXFCC(app.lastXFCC()))

	// 2. Plaintext straight to the STRICT port.
	if code, body, err := plainGet(ctx, plain, "http://"+inbound+"/ratings/0"); err == nil {
		return fmt.Errorf("a plaintext call to the STRICT port got %d %q", code, body)
	}
	if _, err := s.connLine(ctx, "result=plaintext_refused"); err != nil {
		return err
	}
	s.say("  ✓ a plaintext call straight to ratings' port is turned away (STRICT): result=plaintext_refused")

	// 3. Another principal, with a valid SVID: south's own ratings identity.
	other := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(so.src, so.src, tlsconfig.AuthorizeID(so.id)), DisableKeepAlives: true}}
	code, body, err = plainGet(ctx, other, "https://"+inbound+"/ratings/0")
	if err != nil || code != http.StatusForbidden {
		return fmt.Errorf("a call as %s: %d %q %v, want 403", so.id, code, body, err)
	}
	s.say("  ✓ a call as %s (a valid SVID, another principal): %d %s", sourcePrincipal(so.id), code, body)
	if _, err := s.accessLine(ctx, "source.principal="+sourcePrincipal(so.id)+" ", "status=403", "result=denied"); err != nil {
		return err
	}
	s.say("  ✓ ratings' sidecar logged source.principal=%s status=403 result=denied", sourcePrincipal(so.id))

	// 4. Why, offline.
	args := []string{"policy", "explain", "--policies", "south-policies", "--namespace", "default", "--labels", "app=ratings",
		"--port", "9080", "--principal", sourcePrincipal(so.id), "--method", "GET", "--path", "/ratings/0"}
	out, err := s.procs.cli(ctx, args...)
	if err != nil {
		return err
	}
	s.say("  $ meshfed %s", strings.Join(args, " "))
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		s.say("    %s", l)
	}
	if !strings.Contains(out, "STRICT (set by default/default") || !strings.Contains(out, "DENIED") || !strings.Contains(out, "rule 0: no match: from: principals") {
		return fmt.Errorf("policy explain did not show STRICT set by default/default, DENIED and why rule 0 did not match:\n%s", out)
	}
	return nil
}

// accessLine waits for a request line of ratings' sidecar holding every
// want.
func (s *story) accessLine(ctx context.Context, wants ...string) (string, error) {
	return s.ratingsLine(ctx, "msg=request", wants...)
}

func (s *story) connLine(ctx context.Context, wants ...string) (string, error) {
	return s.ratingsLine(ctx, "msg=connection", wants...)
}

func (s *story) ratingsLine(ctx context.Context, kind string, wants ...string) (string, error) {
	var found string
	err := poll(ctx, 10*time.Second, 20*time.Millisecond, "ratings' sidecar to log "+strings.Join(wants, " "), func() (bool, error) {
		for _, l := range strings.Split(s.ratingsProxy.logs.String(), "\n") {
			if !strings.Contains(l, kind) {
				continue
			}
			all := true
			for _, w := range wants {
				all = all && strings.Contains(l, w)
			}
			if all {
				found = l
				return true, nil
			}
		}
		return false, nil
	})
	return found, err
}

func plainGet(ctx context.Context, c *http.Client, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// shortXFCC shortens the Hash of an XFCC element for printing.
func shortXFCC(x string) string {
	if i := strings.Index(x, "Hash="); i >= 0 && len(x) > i+5+12 {
		if j := strings.IndexByte(x[i:], ';'); j > 0 {
			return x[:i+5+12] + "…" + x[i+j:]
		}
	}
	return x
}

// plainRatings is the built-in app as it runs behind a sidecar: plain HTTP
// on loopback; it records the X-Forwarded-Client-Cert of the last request.
type plainRatings struct {
	ln  net.Listener
	srv *http.Server

	mu   sync.Mutex
	xfcc string
}

func startPlainRatings() (*plainRatings, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &plainRatings{ln: ln}
	a.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.xfcc = r.Header.Get("X-Forwarded-Client-Cert")
		a.mu.Unlock()
		io.WriteString(w, ratingsBody)
	})}
	go a.srv.Serve(ln)
	return a, nil
}

func (a *plainRatings) addr() string { return a.ln.Addr().String() }

// lastXFCC is the XFCC header of the last request.
func (a *plainRatings) lastXFCC() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.xfcc
}

func (a *plainRatings) close() { a.srv.Close() }
