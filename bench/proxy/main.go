// Command proxy measures meshfed's TCP sidecar with real processes on
// loopback: a `meshfed server`, two `meshfed agent`s (one per workload), a
// client-side `meshfed proxy` (an outbound listener) and a server-side
// `meshfed proxy` (an inbound listener, STRICT by a PeerAuthentication in its
// policies directory). The app at both ends is this process.
//
//	proxy -meshfed PATH [-rounds N] [-window D] [-clients N] [-idle N] [-size N]
//
// Every figure is measured beside its ceiling in the same run: a direct
// Go TLS 1.3 connection between two goroutines of this process with the
// workloads' own X.509-SVIDs, fetched from the agents through go-spiffe's
// Workload API client and used with go-spiffe's tlsconfig — what an app
// doing its own mTLS would get. The measurements alternate, direct first in
// odd rounds and proxied first in even ones, so that a shared VM's drift hits
// both alike; the medians over the rounds are reported.
//
//   - throughput: one connection streams 64 KiB writes for the window,
//     app → outbound proxy → mTLS → inbound proxy → app, against the same
//     stream over the direct connection;
//   - latency: ping-pong of -size bytes, one outstanding, over one
//     persistent connection, p50 and p99 of the round trip, and what the
//     proxies add;
//   - new connections per second: -clients loops each opening a
//     connection, exchanging one byte and closing it; through the proxies
//     each is a new mTLS connection between them (which the outbound
//     proxy's session cache resumes), directly each is a new mTLS
//     handshake of the same P-256 SVIDs, without and with a client session
//     cache (the two ceilings);
//   - control: the throughput and latency of the direct connection through
//     two plain relays (processes of this program, copying bytes with no
//     TLS), the hops and processes of the proxied path without meshfed;
//   - memory per idle connection: -idle connections opened through the
//     proxies and left idle; each proxy's VmRSS (/proc/PID/status) before
//     and after, per connection. The ceiling is this process's heap and
//     stacks (after a GC) per idle direct connection, both ends.
//
// It prints a table on stdout and progress on stderr. It is a benchmark
// tool, not part of meshfed: it never runs in tests.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/meshfed/meshfed/bench/internal/harness"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

const td = "east.example"

var (
	reviews = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/reviews") // the client
	ratings = spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/ratings") // the server
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "relay" {
		if err := relay(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "proxy relay:", err)
			os.Exit(1)
		}
		return
	}
	bin := flag.String("meshfed", "", "the meshfed binary (required)")
	rounds := flag.Int("rounds", 5, "rounds; the median of the rounds is reported")
	window := flag.Duration("window", 2*time.Second, "how long each throughput, latency and connection-rate measurement runs")
	clients := flag.Int("clients", 4, "concurrent loops opening new connections")
	idle := flag.Int("idle", 2000, "idle connections opened for the memory figure")
	size := flag.Int("size", 64, "bytes of each ping and pong")
	logLevel := flag.String("proxy-log-level", "info", "log_level of both proxies (info writes the access log line of each connection)")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "usage: proxy -meshfed PATH [-rounds N] [-window D] [-clients N] [-idle N] [-size N]")
		os.Exit(2)
	}
	if err := run(*bin, *rounds, *window, *clients, *idle, *size, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
}

// bench holds the processes of one run.
type bench struct{ *harness.Procs }

func run(bin string, rounds int, window time.Duration, clients, idle, size int, logLevel string) error {
	dir, err := os.MkdirTemp("", "meshfed-bench-proxy-")
	if err != nil {
		return err
	}
	b := &bench{&harness.Procs{Bin: bin, Dir: dir}}
	defer os.RemoveAll(dir)
	defer b.Stop()

	// The server and one agent per workload, as in e2e/proxy_test.go.
	srv, err := b.StartServer(td, "east")
	if err != nil {
		return err
	}
	sockets := map[string]string{}
	for _, w := range []struct {
		name string
		id   spiffeid.ID
	}{{"client", reviews}, {"server", ratings}} {
		if sockets[w.name], err = b.StartAgent(srv, w.name, w.id); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clientSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sockets["client"])))
	if err != nil {
		return err
	}
	defer clientSrc.Close()
	serverSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sockets["server"])))
	if err != nil {
		return err
	}
	defer serverSrc.Close()
	for src, want := range map[*workloadapi.X509Source]spiffeid.ID{clientSrc: reviews, serverSrc: ratings} {
		if err := harness.WaitFor(30*time.Second, 10*time.Millisecond, "the SVID of "+want.String(), func() bool {
			s, err := src.GetX509SVID()
			return err == nil && s.ID == want
		}); err != nil {
			return err
		}
	}

	// The app, behind the inbound proxy, and the direct mTLS server.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer appLn.Close()
	go serve(appLn)
	directLn, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(serverSrc, serverSrc, tlsconfig.AuthorizeID(reviews)))
	if err != nil {
		return err
	}
	defer directLn.Close()
	go serve(directLn)
	fresh := tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeID(ratings))
	resumed := fresh.Clone()
	resumed.ClientSessionCache = tls.NewLRUClientSessionCache(0)

	// The two proxies.
	ports, err := harness.FreePorts(2)
	if err != nil {
		return err
	}
	inAddr, outAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "policies", "strict.yaml"), []byte(`apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
`), 0o644); err != nil {
		return err
	}
	// Room for the idle connections and the connection loops' stragglers.
	limits := fmt.Sprintf("limits: {max_connections: %d}\nlog_level: %s\n", idle+1000, logLevel)
	serverCfg := fmt.Sprintf("workload_api_socket: %s\nnamespace: default\nlabels: {app: ratings}\npolicies: %s\n"+
		"inbound:\n- {name: ratings-in, listen: %q, forward_to: %q, allowed_ids: [%q]}\n%s",
		sockets["server"], filepath.Join(dir, "policies"), inAddr, appLn.Addr().String(), reviews, limits)
	clientCfg := fmt.Sprintf("workload_api_socket: %s\nnamespace: default\nlabels: {app: reviews}\n"+
		"outbound:\n- {name: ratings, listen: %q, service: ratings, upstream: %q, allowed_ids: [%q]}\n%s",
		sockets["client"], outAddr, inAddr, ratings, limits)
	var pids []int
	for _, p := range []struct{ name, cfg, want string }{
		{"server-proxy", serverCfg, "inbound ratings-in " + inAddr},
		{"client-proxy", clientCfg, "outbound ratings " + outAddr},
	} {
		file := filepath.Join(dir, p.name+".yaml")
		if err := os.WriteFile(file, []byte(p.cfg), 0o644); err != nil {
			return err
		}
		line, err := b.Start("meshfed proxy spiffe://", true, "proxy", "--config", file)
		if err != nil {
			return err
		}
		if !strings.Contains(line, p.want) {
			return fmt.Errorf("%s started as %q, want %q in it", p.name, line, p.want)
		}
		if strings.HasPrefix(p.name, "server") && !strings.Contains(line, "(STRICT)") {
			return fmt.Errorf("the inbound listener is not STRICT: %q", line)
		}
		pids = append(pids, b.LastPID())
	}
	inPID, outPID := pids[0], pids[1]

	direct := func() (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: fresh}
		return d.Dial("tcp", directLn.Addr().String())
	}
	directResumed := func() (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: resumed}
		return d.Dial("tcp", directLn.Addr().String())
	}
	proxied := func() (net.Conn, error) { return net.DialTimeout("tcp", outAddr, 5*time.Second) }
	// Two plain relays, each a process of this program, in front of the
	// direct mTLS server: the hops and processes of the proxied path
	// without meshfed, TLS end to end.
	relayAddr := directLn.Addr().String()
	for range 2 {
		if relayAddr, err = b.relay(relayAddr); err != nil {
			return err
		}
	}
	relayed := func() (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: fresh}
		return d.Dial("tcp", relayAddr)
	}
	// The first connection through is the proxies' first handshake.
	first, err := ping(proxied, 1)
	if err != nil {
		return fmt.Errorf("through the proxies: %w", err)
	}
	closeAll(first)

	// Memory first, while the proxies' heaps hold nothing else.
	fmt.Fprintf(os.Stderr, "memory: opening %d idle connections through the proxies\n", idle)
	memIn, memOut, err := idleRSS(proxied, idle, inPID, outPID)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "memory: %d idle connections directly\n", idle)
	memDirect, err := idleHeap(direct, idle)
	if err != nil {
		return err
	}

	// Warm up both paths, unmeasured.
	for _, dial := range []dialer{direct, proxied} {
		if _, err := bulk(dial, window/4); err != nil {
			return err
		}
	}
	var (
		tputD, tputP, tputR    []float64
		p50D, p99D, p50P, p99P []time.Duration
		p50R, p99R             []time.Duration
		rateD, rateR, rateP    []float64
		failed                 int64
		firstErrs              []string
		tput                   = map[string]*[]float64{"direct": &tputD, "proxied": &tputP, "relayed": &tputR}
		p50                    = map[string]*[]time.Duration{"direct": &p50D, "proxied": &p50P, "relayed": &p50R}
		p99                    = map[string]*[]time.Duration{"direct": &p99D, "proxied": &p99P, "relayed": &p99R}
		rate                   = map[string]*[]float64{"direct": &rateD, "resumed": &rateR, "proxied": &rateP}
		dials                  = map[string]dialer{"direct": direct, "resumed": directResumed, "proxied": proxied, "relayed": relayed}
		// Direct first in odd rounds, proxied first in even ones.
		order     = [][]string{{"direct", "relayed", "proxied"}, {"proxied", "relayed", "direct"}}
		rateOrder = [][]string{{"direct", "resumed", "proxied"}, {"proxied", "resumed", "direct"}}
	)
	for r := range rounds {
		for _, name := range order[r%2] {
			v, err := bulk(dials[name], window)
			if err != nil {
				return fmt.Errorf("throughput %s: %w", name, err)
			}
			*tput[name] = append(*tput[name], v)
		}
		for _, name := range order[r%2] {
			d, err := pingpong(dials[name], size, window)
			if err != nil {
				return fmt.Errorf("latency %s: %w", name, err)
			}
			*p50[name] = append(*p50[name], harness.Percentile(d, 50))
			*p99[name] = append(*p99[name], harness.Percentile(d, 99))
		}
		for _, name := range rateOrder[r%2] {
			l := connLoad(dials[name], clients, window)
			*rate[name] = append(*rate[name], float64(l.ok)/l.elapsed.Seconds())
			failed += l.fail
			if len(firstErrs) < 3 {
				firstErrs = append(firstErrs, l.errs...)
			}
		}
		fmt.Fprintf(os.Stderr, "round %d: MB/s direct %.0f relayed %.0f proxied %.0f; p50 µs direct %s relayed %s proxied %s; p99 µs direct %s relayed %s proxied %s; conn/s direct %.0f resumed %.0f proxied %.0f\n",
			r+1, tputD[r], tputR[r], tputP[r], us(p50D[r]), us(p50R[r]), us(p50P[r]), us(p99D[r]), us(p99R[r]), us(p99P[r]), rateD[r], rateR[r], rateP[r])
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "failed connections: %d, first: %v\n", failed, firstErrs)
	}

	fmt.Printf("proxy bench: rounds=%d window=%s clients=%d idle=%d size=%dB proxy_log_level=%s GOMAXPROCS=%d (this process) nproc=%d\n\n",
		rounds, window, clients, idle, size, logLevel, runtime.GOMAXPROCS(0), runtime.NumCPU())
	// Each ratio and difference is taken within a round, whose two
	// measurements ran back to back, and the median of those is reported.
	ratio := func(p, d []float64) string {
		var r []float64
		for i := range p {
			r = append(r, 100*p[i]/d[i])
		}
		return fmt.Sprintf("%.0f%%", harness.Median(r))
	}
	added := func(p, d []time.Duration) string {
		var a []time.Duration
		for i := range p {
			a = append(a, p[i]-d[i])
		}
		return "+" + us(harness.Median(a)) + " µs"
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure (median of rounds)\tdirect mTLS (ceiling)\tthrough both proxies\tproxied vs direct\tgoal\t")
	fmt.Fprintf(tw, "throughput, MB/s\t%.0f\t%.0f\t%s\t≥ 85%%\t\n", harness.Median(tputD), harness.Median(tputP), ratio(tputP, tputD))
	fmt.Fprintf(tw, "latency p50, µs\t%s\t%s\t%s\t≤ +100 µs\t\n", us(harness.Median(p50D)), us(harness.Median(p50P)), added(p50P, p50D))
	fmt.Fprintf(tw, "latency p99, µs\t%s\t%s\t%s\t\t\n", us(harness.Median(p99D)), us(harness.Median(p99P)), added(p99P, p99D))
	fmt.Fprintf(tw, "new connections/s (direct: full handshakes)\t%.0f\t%.0f\t%s\t≥ 85%%\t\n", harness.Median(rateD), harness.Median(rateP), ratio(rateP, rateD))
	fmt.Fprintf(tw, "new connections/s (direct: resumed)\t%.0f\t%.0f\t%s\t\t\n", harness.Median(rateR), harness.Median(rateP), ratio(rateP, rateR))
	fmt.Fprintln(tw, "control: two plain relays, TLS end to end\t\t\t\t\t")
	fmt.Fprintf(tw, "throughput, MB/s\t\t%.0f\t%s\t\t\n", harness.Median(tputR), ratio(tputR, tputD))
	fmt.Fprintf(tw, "latency p50, µs\t\t%s\t%s\t\t\n", us(harness.Median(p50R)), added(p50R, p50D))
	fmt.Fprintf(tw, "latency p99, µs\t\t%s\t%s\t\t\n", us(harness.Median(p99R)), added(p99R, p99D))
	fmt.Fprintf(tw, "memory per idle connection, KB\t%.1f both ends (heap+stacks)\tinbound %.1f + outbound %.1f (VmRSS)\t\t\t\n", memDirect, memIn, memOut)
	tw.Flush()
	fmt.Printf("\nfailed_connections=%d\n", failed)
	return nil
}

type dialer func() (net.Conn, error)

// serve runs the app on ln: each connection's first byte picks what it
// does. 'S' sinks everything until EOF and answers with the count (8 bytes,
// big endian); 'E' echoes until EOF; 'P' answers one byte and waits for EOF.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var mode [1]byte
			if _, err := io.ReadFull(c, mode[:]); err != nil {
				return
			}
			switch mode[0] {
			case 'S':
				buf := make([]byte, 64<<10)
				var n uint64
				for {
					nr, err := c.Read(buf)
					n += uint64(nr)
					if err != nil {
						break
					}
				}
				c.Write(binary.BigEndian.AppendUint64(nil, n))
			case 'E':
				buf := make([]byte, 64<<10)
				for {
					nr, err := c.Read(buf)
					if nr > 0 {
						if _, err := c.Write(buf[:nr]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			case 'P':
				if _, err := c.Write([]byte{'k'}); err != nil {
					return
				}
				// No buffer while idle: an idle connection of the app
				// costs the same on both paths.
				for err == nil {
					_, err = c.Read(mode[:])
				}
			}
		}()
	}
}

type closeWriter interface{ CloseWrite() error }

// bulk streams 64 KiB writes on one new connection for window, half-closes
// and waits for the sink's count; it returns MB/s (10^6 bytes) from the
// first write to the count's arrival.
func bulk(dial dialer, window time.Duration) (float64, error) {
	c, err := dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.Write([]byte{'S'}); err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	var sent uint64
	start := time.Now()
	for time.Since(start) < window {
		n, err := c.Write(buf)
		sent += uint64(n)
		if err != nil {
			return 0, err
		}
	}
	if err := c.(closeWriter).CloseWrite(); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return 0, fmt.Errorf("the sink's count: %w", err)
	}
	elapsed := time.Since(start)
	if n := binary.BigEndian.Uint64(got[:]); n != sent {
		return 0, fmt.Errorf("the sink received %d bytes, %d were sent", n, sent)
	}
	return float64(sent) / elapsed.Seconds() / 1e6, nil
}

// pingpong sends size-byte pings on one new connection, one outstanding,
// for window after 200 unmeasured ones, and returns each round trip.
func pingpong(dial dialer, size int, window time.Duration) ([]time.Duration, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write([]byte{'E'}); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(window + 30*time.Second))
	out, in := make([]byte, size), make([]byte, size)
	var rtts []time.Duration
	start := time.Now()
	for i := 0; i < 200 || time.Since(start) < window; i++ {
		t := time.Now()
		if _, err := c.Write(out); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, in); err != nil {
			return nil, err
		}
		if i == 200 {
			start = time.Now()
		}
		if i >= 200 {
			rtts = append(rtts, time.Since(t))
		}
	}
	return rtts, nil
}

// ping opens n connections, one after the other, each exchanging one byte
// and staying open; it returns them.
func ping(dial dialer, n int) ([]net.Conn, error) {
	var conns []net.Conn
	for range n {
		c, err := dial()
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		if _, err := c.Write([]byte{'P'}); err != nil {
			closeAll(conns)
			return nil, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			closeAll(conns)
			return nil, err
		}
		c.SetDeadline(time.Time{})
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// idleRSS opens n idle connections through the proxies and returns the
// growth of each proxy's VmRSS per connection, in KB (1000 bytes).
func idleRSS(dial dialer, n, inPID, outPID int) (in, out float64, err error) {
	time.Sleep(time.Second)
	in0, err := vmRSS(inPID)
	if err != nil {
		return 0, 0, err
	}
	out0, err := vmRSS(outPID)
	if err != nil {
		return 0, 0, err
	}
	conns, err := ping(dial, n)
	if err != nil {
		return 0, 0, fmt.Errorf("opening idle connections: %w", err)
	}
	defer closeAll(conns)
	time.Sleep(time.Second)
	in1, err := vmRSS(inPID)
	if err != nil {
		return 0, 0, err
	}
	out1, err := vmRSS(outPID)
	if err != nil {
		return 0, 0, err
	}
	fmt.Fprintf(os.Stderr, "memory: inbound proxy VmRSS %d → %d kB, outbound %d → %d kB\n", in0>>10, in1>>10, out0>>10, out1>>10)
	return float64(in1-in0) / float64(n) / 1e3, float64(out1-out0) / float64(n) / 1e3, nil
}

// idleHeap opens n idle direct mTLS connections (both ends in this process)
// and returns the growth of heap and stacks in use, after a GC, per
// connection (both ends: the client's tls.Conn, the server's and its
// goroutine), in KB.
func idleHeap(dial dialer, n int) (float64, error) {
	before := inUse()
	conns, err := ping(dial, n)
	if err != nil {
		return 0, err
	}
	after := inUse()
	runtime.KeepAlive(conns)
	closeAll(conns)
	return float64(after-before) / float64(n) / 1e3, nil
}

func inUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// vmRSS reads a process's resident set size in bytes.
func vmRSS(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// load is the outcome of a connection loop.
type load struct {
	ok, fail int64
	elapsed  time.Duration
	errs     []string
}

// connLoad runs clients loops for window, each opening a connection,
// exchanging one byte ('P') and closing it.
func connLoad(dial dialer, clients int, window time.Duration) load {
	var (
		res      load
		mu       sync.Mutex
		ok, fail atomic.Int64
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < window {
				conns, err := ping(dial, 1)
				if err != nil {
					fail.Add(1)
					mu.Lock()
					if len(res.errs) < 3 {
						res.errs = append(res.errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				conns[0].Close()
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.ok, res.fail = ok.Load(), fail.Load()
	return res
}

// relay starts a relay process (this program) that forwards to addr and
// returns its address.
func (b *bench) relay(to string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(self, "relay", to)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	b.Track(cmd)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("relay: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// relay is the relay process: it listens on loopback, prints its address
// and copies each connection both ways to addr, as copyIdle does (a 32 KiB
// buffer per direction, a half-close at EOF) but with no TLS, deadlines or
// accounting, until it is killed.
func relay(addr string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.(closeWriter).CloseWrite()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() { cp(up, c); close(done) }()
			cp(c, up)
			<-done
		}()
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }
