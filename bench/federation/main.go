// Command federation measures meshfed's bundle federation (model B) with real
// processes on loopback: two `meshfed server`s, east and west, federating
// through their bundle endpoints, each with a `meshfed agent`, and a
// workload of each (this process, through go-spiffe's Workload API client).
//
//	federation -meshfed PATH [-rounds N] [-window D] [-clients N]
//
// It reports two figures, each beside its ceiling from the same run:
//
//   - propagation: east changes its bundle (`meshfed federation rotate-root`
//     publishes, activates or retires a root); the time until west's workload
//     holds east's new bundle, against the time until east's own workload
//     does (the same change inside one trust domain: the ceiling). The
//     servers keep the default refresh hint of 5 minutes, so only the push
//     (the bundle endpoint's conditional long poll) can make it fast.
//   - handshakes: mTLS connections per second from east's workload to
//     west's, each a new connection verified with the peer's own trust
//     domain's bundle, during a full rotation of east's root, against the
//     same loop outside any rotation (the ceiling), and how many failed.
//
// It prints key=value lines on stdout and progress on stderr. It is a
// benchmark tool, not part of meshfed: it never runs in tests.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var (
	eastTD  = spiffeid.RequireTrustDomainFromString("east.example")
	westTD  = spiffeid.RequireTrustDomainFromString("west.example")
	reviews = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews")
	ratings = spiffeid.RequireFromString("spiffe://west.example/ns/default/sa/ratings")
)

func main() {
	bin := flag.String("meshfed", "", "the meshfed binary (required)")
	rounds := flag.Int("rounds", 10, "bundle changes measured for propagation")
	window := flag.Duration("window", 15*time.Second, "how long the handshake rate is measured outside a rotation")
	clients := flag.Int("clients", 4, "concurrent handshake loops")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "usage: federation -meshfed PATH [-rounds N] [-window D] [-clients N]")
		os.Exit(2)
	}
	if err := run(*bin, *rounds, *window, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "federation:", err)
		os.Exit(1)
	}
}

// bench holds the processes of one run.
type bench struct{ *harness.Procs }

func run(bin string, rounds int, window time.Duration, clients int) error {
	dir, err := os.MkdirTemp("", "meshfed-bench-federation-")
	if err != nil {
		return err
	}
	b := &bench{&harness.Procs{Bin: bin, Dir: dir}}
	defer os.RemoveAll(dir)
	defer b.Stop()

	ports, err := harness.FreePorts(2)
	eastPort, westPort := ports[0], ports[1]
	if err != nil {
		return err
	}
	// Short SVID lifetimes, so that a rotation's retiring phase ends within
	// the run; the default refresh hint (5m) for the propagation rounds.
	config := func(peer spiffeid.TrustDomain, port int, hint string) string {
		return fmt.Sprintf("svid:\n  default_ttl: 20s\n  node_ttl: 20s\nbundle_endpoint:\n  refresh_hint: %s\n"+
			"federation:\n  federates_with:\n  - trust_domain: %s\n    bundle_endpoint_url: https://127.0.0.1:%d\n    endpoint_spiffe_id: spiffe://%s/meshfed/server\n",
			hint, peer.Name(), port, peer.Name())
	}
	east, err := b.domain(eastTD, eastPort, config(westTD, westPort, "5m"), reviews, westTD)
	if err != nil {
		return err
	}
	west, err := b.domain(westTD, westPort, config(eastTD, eastPort, "5m"), ratings, eastTD)
	if err != nil {
		return err
	}
	for _, pair := range [][2]*domain{{east, west}, {west, east}} {
		from, to := pair[0], pair[1]
		out, err := b.Meshfed("bundle", "show", "--admin-socket", from.sock)
		if err != nil {
			return err
		}
		file := filepath.Join(dir, from.td.Name()+".json")
		if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
			return err
		}
		if _, err := b.Meshfed("bundle", "set", "--admin-socket", to.sock, "--trust-domain", from.td.Name(), "--in", file); err != nil {
			return err
		}
		if _, err := b.Meshfed("bundle", "refresh", from.td.Name(), "--admin-socket", to.sock); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eastSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+east.workload)))
	if err != nil {
		return err
	}
	defer eastSrc.Close()
	westSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+west.workload)))
	if err != nil {
		return err
	}
	defer westSrc.Close()
	if err := harness.WaitFor(30*time.Second, 2*time.Millisecond, "both workloads to hold both bundles", func() bool {
		return hasBundle(eastSrc, westTD) && hasBundle(westSrc, eastTD)
	}); err != nil {
		return err
	}

	// Propagation: the rotate-root steps that change east's bundle are
	// measured: publishing the next root (from stable) and retiring the old
	// one (from retiring); activating it changes no bundle and is only run.
	var remote, local []time.Duration
	for i := range rounds {
		for {
			phase, err := b.phase(east.sock)
			if err != nil {
				return err
			}
			if phase == "stable" || phase == "retiring" {
				break
			}
			if _, err := b.Meshfed("federation", "rotate-root", "--admin-socket", east.sock, "--force"); err != nil {
				return err
			}
			// Activated: let the agents renew under the new root (they do
			// within 5 s of the switch) before the old root is retired by
			// force, which would strand what still chains to it.
			time.Sleep(7 * time.Second)
		}
		before := authorities(westSrc, eastTD)
		beforeLocal := authorities(eastSrc, eastTD)
		start := time.Now()
		if _, err := b.Meshfed("federation", "rotate-root", "--admin-socket", east.sock, "--force"); err != nil {
			return err
		}
		var tLocal, tRemote time.Duration
		if err := harness.WaitFor(60*time.Second, 2*time.Millisecond, "the new bundle at both workloads", func() bool {
			if tLocal == 0 && authorities(eastSrc, eastTD) != beforeLocal {
				tLocal = time.Since(start)
			}
			if tRemote == 0 && authorities(westSrc, eastTD) != before {
				tRemote = time.Since(start)
			}
			return tLocal > 0 && tRemote > 0
		}); err != nil {
			return err
		}
		local, remote = append(local, tLocal), append(remote, tRemote)
		fmt.Fprintf(os.Stderr, "round %d: east's workload %s, west's workload %s\n", i+1, tLocal.Round(time.Millisecond), tRemote.Round(time.Millisecond))
	}
	fmt.Printf("propagation rounds=%d refresh_hint=5m local_p50_ms=%.1f local_max_ms=%.1f remote_p50_ms=%.1f remote_max_ms=%.1f\n",
		rounds, ms(harness.Median(local)), ms(slices.Max(local)), ms(harness.Median(remote)), ms(slices.Max(remote)))

	// Handshakes outside a rotation, then during one (driven by the
	// commands, each step as soon as its condition holds).
	if phase, err := b.phase(east.sock); err != nil || phase != "stable" {
		// Finish whatever the propagation rounds left half done.
		for phase != "stable" {
			if _, err := b.Meshfed("federation", "rotate-root", "--admin-socket", east.sock, "--force"); err != nil {
				return err
			}
			if phase, err = b.phase(east.sock); err != nil {
				return err
			}
		}
	}
	// Let every SVID under a root the rounds retired by force be replaced.
	time.Sleep(25 * time.Second)
	// Both windows poll east's status every 2 s, so that the polling (a
	// meshfed process each time) costs them alike.
	outside := handshakeLoad(eastSrc, westSrc, clients, func(stop <-chan struct{}) {
		for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(2 * time.Second) {
			b.phase(east.sock)
		}
	})
	fmt.Fprintf(os.Stderr, "outside a rotation: %d handshakes in %s, %d failed\n", outside.ok+outside.fail, outside.elapsed.Round(time.Millisecond), outside.fail)
	var rotateErr error
	during := handshakeLoad(eastSrc, westSrc, clients, func(<-chan struct{}) {
		before := authorities(westSrc, eastTD)
		if _, rotateErr = b.Meshfed("federation", "rotate-root", "--admin-socket", east.sock); rotateErr != nil {
			return
		}
		// With the default hint the next root would be published for 10
		// minutes before it signs; west has it (pushed) within a second,
		// so it is activated once west's workload holds it, as an operator
		// who checked would, with --force. Retiring waits for its
		// condition: the last SVID under the old root expiring.
		if rotateErr = harness.WaitFor(30*time.Second, 2*time.Millisecond, "west's workload to hold the next root", func() bool {
			return authorities(westSrc, eastTD) != before
		}); rotateErr != nil {
			return
		}
		if _, rotateErr = b.Meshfed("federation", "rotate-root", "--admin-socket", east.sock, "--force"); rotateErr != nil {
			return
		}
		// ca.auto_rotate (the default) retires the old root once nothing
		// under it is alive.
		rotateErr = harness.WaitFor(3*time.Minute, 2*time.Millisecond, "the rotation to finish", func() bool {
			time.Sleep(2 * time.Second)
			phase, err := b.phase(east.sock)
			return err == nil && phase == "stable"
		})
	})
	if rotateErr != nil {
		return rotateErr
	}
	rateOutside := float64(outside.ok) / outside.elapsed.Seconds()
	rateDuring := float64(during.ok) / during.elapsed.Seconds()
	fmt.Printf("handshakes clients=%d outside_per_s=%.0f outside_failed=%d during_per_s=%.0f during_failed=%d during_s=%.1f ratio=%.0f%%\n",
		clients, rateOutside, outside.fail, rateDuring, during.fail, during.elapsed.Seconds(), 100*rateDuring/rateOutside)
	if len(during.errs) > 0 {
		fmt.Fprintf(os.Stderr, "first failures: %v\n", during.errs)
	}
	return nil
}

// domain is one trust domain: server, agent, and the workload's socket.
type domain struct {
	td             spiffeid.TrustDomain
	sock, workload string
}

func (b *bench) domain(td spiffeid.TrustDomain, bundlePort int, config string, id spiffeid.ID, federatesWith spiffeid.TrustDomain) (*domain, error) {
	name := strings.TrimSuffix(td.Name(), ".example")
	cfgFile := filepath.Join(b.Dir, name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return nil, err
	}
	srv, err := b.StartServer(td.Name(), name, "--config", cfgFile, "--bundle-listen", fmt.Sprintf("127.0.0.1:%d", bundlePort))
	if err != nil {
		return nil, err
	}
	workload, err := b.StartAgent(srv, name, id, "--federates-with", federatesWith.Name())
	return &domain{td: td, sock: srv.AdminSock, workload: workload}, err
}

func (b *bench) phase(sock string) (string, error) {
	out, err := b.Meshfed("federation", "status", "--admin-socket", sock, "-o", "json")
	if err != nil {
		return "", err
	}
	var st struct {
		Phase string `json:"rotation_phase"`
	}
	return st.Phase, json.Unmarshal([]byte(out), &st)
}

// load is the outcome of a handshake loop.
type load struct {
	ok, fail int64
	elapsed  time.Duration
	errs     []string
}

// handshakeLoad runs clients loops of mTLS connections from east's workload
// to west's until during returns.
func handshakeLoad(client, server *workloadapi.X509Source, clients int, during func(stop <-chan struct{})) load {
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeID(reviews)))
	if err != nil {
		return load{fail: 1, errs: []string{err.Error()}}
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
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() == nil {
					tc.Write([]byte("k"))
				}
			}()
		}
	}()
	conf := tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(ratings))
	var (
		res  load
		mu   sync.Mutex
		ok   atomic.Int64
		fail atomic.Int64
		wg   sync.WaitGroup
	)
	stop := make(chan struct{})
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := handshake(l.Addr().String(), conf); err != nil {
					fail.Add(1)
					mu.Lock()
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err.Error())
					}
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	during(stop)
	close(stop)
	wg.Wait()
	res.elapsed = time.Since(start)
	res.ok, res.fail = ok.Load(), fail.Load()
	return res
}

func handshake(addr string, conf *tls.Config) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: conf}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1)
	_, err = c.Read(buf) // the server's verdict on the client certificate (TLS 1.3)
	return err
}

func hasBundle(src *workloadapi.X509Source, td spiffeid.TrustDomain) bool {
	_, err := src.GetX509BundleForTrustDomain(td)
	return err == nil
}

// authorities names the X.509 authorities src holds for td, for comparing.
func authorities(src *workloadapi.X509Source, td spiffeid.TrustDomain) string {
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return ""
	}
	var names []string
	for _, c := range b.X509Authorities() {
		names = append(names, fmt.Sprintf("%x", c.SubjectKeyId))
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
