// Command policy measures how fast policy stored on the server with
// `meshfed policy apply` takes effect at a running `meshfed proxy`, as
// istiod's push would: real processes on loopback (a server, an agent, a
// proxy with an HTTP inbound listener in front of an app in this process).
//
// Each round applies an AuthorizationPolicy denying GET /probe, then deletes
// it, and times, from the moment the CLI command starts:
//   - the command itself, to its exit (a process start, the admin socket,
//     validation, the store's commit);
//   - until a PolicyDiscovery watcher on the agent's socket (this process,
//     through agent/policyclient, as the proxy does) has the new set: the
//     ceiling, the push path without the proxy;
//   - until a request through the proxy gets the new answer (403 after the
//     apply, 200 after the delete), probing every millisecond.
//
// The goal: a change takes effect everywhere within a second.
//
//	go build -o /tmp/meshfed ./cmd/meshfed && go run ./bench/policy -meshfed /tmp/meshfed
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
	"github.com/meshfed/meshfed/internal/agent/policyclient"
	"github.com/meshfed/meshfed/internal/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const denyProbe = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-probe
  namespace: default
spec:
  selector:
    matchLabels:
      app: ratings
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/probe"]
`

func main() {
	bin := flag.String("meshfed", "", "the meshfed binary (go build -o /tmp/meshfed ./cmd/meshfed)")
	rounds := flag.Int("rounds", 20, "apply+delete rounds")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "policy: -meshfed is required")
		os.Exit(2)
	}
	if err := run(*bin, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "policy:", err)
		os.Exit(1)
	}
}

// watcher records when each policy snapshot reached this process.
type watcher struct {
	mu     sync.Mutex
	counts []int
	at     []time.Time
}

func (w *watcher) seen(docs []policy.Document, _ int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts = append(w.counts, len(docs))
	w.at = append(w.at, time.Now())
}

// since returns the arrival of the first snapshot with n documents after
// index from, and the index after it.
func (w *watcher) since(from, n int) (time.Time, int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := from; i < len(w.counts); i++ {
		if w.counts[i] == n {
			return w.at[i], i + 1, true
		}
	}
	return time.Time{}, from, false
}

func run(bin string, rounds int) error {
	dir, err := os.MkdirTemp("", "meshfed-bench-policy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &harness.Procs{Bin: bin, Dir: dir}
	defer b.Stop()
	srv, err := b.StartServer("east.example", "east")
	if err != nil {
		return err
	}
	socket, err := b.StartAgent(srv, "ratings", spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/ratings"))
	if err != nil {
		return err
	}
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer app.Close()
	go http.Serve(app, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	ports, err := harness.FreePorts(1)
	if err != nil {
		return err
	}
	inbound := fmt.Sprintf("127.0.0.1:%d", ports[0])
	config := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`workload_api_socket: %s
namespace: default
labels: {app: ratings}
inbound:
- {name: ratings, listen: %q, forward_to: %q, protocol: http}
log_level: warn
`, socket, inbound, app.Addr())), 0o644); err != nil {
		return err
	}
	if _, err := b.Start("meshfed proxy spiffe://", true, "proxy", "--config", config); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &watcher{}
	client, err := policyclient.New(policyclient.Config{SocketPath: socket})
	if err != nil {
		return err
	}
	go client.Watch(ctx, w.seen)
	if err := os.WriteFile(filepath.Join(dir, "deny.yaml"), []byte(denyProbe), 0o644); err != nil {
		return err
	}
	probe := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	status := func() int {
		resp, err := probe.Get("http://" + inbound + "/probe")
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if err := harness.WaitFor(30*time.Second, 10*time.Millisecond, "the proxy to answer", func() bool { return status() == 200 }); err != nil {
		return err
	}

	var cli, agent, enforced []time.Duration
	next := 0
	for r := range rounds {
		for _, step := range []struct {
			args []string
			docs int
			want int
		}{
			{[]string{"policy", "apply", "-f", "deny.yaml", "--admin-socket", srv.AdminSock}, 1, 403},
			{[]string{"policy", "delete", "AuthorizationPolicy", "default/deny-probe", "--admin-socket", srv.AdminSock}, 0, 200},
		} {
			start := time.Now()
			if _, err := b.Meshfed(step.args...); err != nil {
				return err
			}
			stored := time.Now()
			if err := harness.WaitFor(10*time.Second, time.Millisecond, fmt.Sprintf("round %d: %d from the proxy", r, step.want), func() bool {
				return status() == step.want
			}); err != nil {
				return err
			}
			done := time.Now()
			var at time.Time
			var ok bool
			if err := harness.WaitFor(10*time.Second, time.Millisecond, "the watcher's snapshot", func() bool {
				at, next, ok = w.since(next, step.docs)
				return ok
			}); err != nil {
				return err
			}
			cli = append(cli, stored.Sub(start))
			agent = append(agent, at.Sub(start))
			enforced = append(enforced, done.Sub(start))
		}
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	fmt.Printf("policy push: %d changes (apply and delete, %d rounds)\n", len(cli), rounds)
	fmt.Printf("%-44s %8s %8s %8s\n", "", "p50 ms", "p90 ms", "max ms")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{
		{"the CLI command, start to exit", cli},
		{"command start -> push at a watcher (ceiling)", agent},
		{"command start -> enforced by the proxy", enforced},
	} {
		fmt.Printf("%-44s %8s %8s %8s\n", row.name, ms(harness.Median(row.d)), ms(harness.Percentile(row.d, 90)), ms(slices.Max(row.d)))
	}
	return nil
}
