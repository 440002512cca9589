// Command issuance is the load process of bench/run: it calls a running
// `meshfed server` over loopback from many concurrent gRPC clients and
// reports issuances per second, latency and the CPU the server spent per
// issuance; and it measures, in its own process, the ceiling those figures
// are compared with: the server's own CA signing the same CSR.
//
//	issuance jwks    -key FILE -jwks FILE
//	issuance ceiling -ca-dir DATA_DIR/ca [-workers N] [-duration D] [-warmup D]
//	issuance load    -addr HOST:PORT -bundle FILE -api node -join-token TOKEN [flags]
//	issuance load    -addr HOST:PORT -bundle FILE -api istio -jwt-key FILE [flags]
//	issuance load    ... -ceiling-ca-dir DATA_DIR/ca [-slices N]   (the ceiling in turn with the load)
//	issuance herd    -addr HOST:PORT -bundle FILE -api ... -rate N [-timeout D] [-duration D]   (an open-loop overload)
//	issuance hold    -addr HOST:PORT -bundle FILE -join-token TOKEN -clients N -server-pid PID   (memory per connected agent)
//	issuance floor   -ca-dir DATA_DIR/ca [-listen ADDR]   (the signing API's floor: the ceiling's work behind the server's transport, nothing else)
//	issuance load    -addr FLOOR -attest-addr HOST:PORT -api node ...   (a load on the floor, its node SVID from the server)
//
// Each prints one line of key=value pairs on stdout, for bench/run to read.
// It is a benchmark tool, not part of meshfed: it never runs in tests.
package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/grpcflow"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	istioca "istio.io/api/security/v1alpha1"
)

// The service-account token the istio load presents, and the issuer and
// audience bench/run configures the server with.
const (
	jwtIssuer   = "https://kubernetes.default.svc"
	jwtAudience = "istio-ca"
	jwtKeyID    = "bench"
	// callTimeout bounds one call, so that a stuck server fails the run
	// instead of hanging it.
	callTimeout = 30 * time.Second
)

// nodeID is the node that attests with the join token and then renews.
var nodeID = spiffeid.RequireFromString("spiffe://east.example/node/bench")

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: issuance jwks|ceiling|load|herd|hold|floor [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "jwks":
		err = jwksCmd(args)
	case "ceiling":
		err = ceilingCmd(args)
	case "load":
		err = loadCmd(args)
	case "herd":
		err = herdCmd(args)
	case "hold":
		err = holdCmd(args)
	case "floor":
		err = floorCmd(args)
	default:
		err = fmt.Errorf("unknown command %q: use jwks, ceiling, load, herd, hold or floor", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "issuance:", err)
		os.Exit(1)
	}
}

// jwksCmd makes the key that signs the load's service-account token and
// the JWKS file the server trusts it from.
func jwksCmd(args []string) error {
	fs := flag.NewFlagSet("jwks", flag.ExitOnError)
	keyPath := fs.String("key", "", "where to write the signing key (PEM)")
	jwksPath := fs.String("jwks", "", "where to write the JWKS the server reads")
	fs.Parse(args)
	if *keyPath == "" || *jwksPath == "" {
		return errors.New("jwks: give -key and -jwks")
	}
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return err
	}
	keyPEM, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		return err
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: jwtKeyID, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(*keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(*jwksPath, set, 0o644)
}

// result is what one measured window saw: the calls that completed in it
// and their latencies (sorted), its length, and the CPU time this process
// and the peer process spent during it.
type result struct {
	ops              int
	elapsed          time.Duration
	latencies        []time.Duration
	selfCPU, peerCPU time.Duration
}

// add sums o into r (latencies unsorted until the caller sorts them).
func (r *result) add(o result) {
	r.ops += o.ops
	r.elapsed += o.elapsed
	r.latencies = append(r.latencies, o.latencies...)
	r.selfCPU += o.selfCPU
	r.peerCPU += o.peerCPU
}

// window runs work on n goroutines, first for warmup and then for the
// measured d, and stops at the first error. pid is the peer process whose
// CPU time is measured (-1: none).
func window(n int, warmup, d time.Duration, pid int, work func(worker int) error) (result, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		measuring atomic.Bool
		wg        sync.WaitGroup
		firstErr  error
		errOnce   sync.Once
	)
	lats := make([][]time.Duration, n)
	for w := range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				if err := work(w); err != nil {
					errOnce.Do(func() { firstErr = err })
					cancel()
					return
				}
				if measuring.Load() {
					lats[w] = append(lats[w], time.Since(start))
				}
			}
		})
	}
	sleep(ctx, warmup)
	var r result
	self0, peer0 := processCPU(0), processCPU(pid)
	t0 := time.Now()
	measuring.Store(true)
	sleep(ctx, d)
	measuring.Store(false)
	r.elapsed = time.Since(t0)
	r.selfCPU, r.peerCPU = processCPU(0)-self0, processCPU(pid)-peer0
	cancel()
	wg.Wait()
	if firstErr != nil {
		return r, firstErr
	}
	for _, l := range lats {
		r.latencies = append(r.latencies, l...)
	}
	r.ops = len(r.latencies)
	slices.Sort(r.latencies)
	return r, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// processCPU is the user+system CPU time of process pid (0: this one),
// from /proc/PID/stat, or 0 if pid < 0.
func processCPU(pid int) time.Duration {
	if pid < 0 {
		return 0
	}
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. utime and stime are fields 14 and 15,
	// in clock ticks (USER_HZ, 100 on Linux).
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// ceilingCmd signs a fixed CSR with the server's own CA, in this process,
// from as many goroutines as the load has clients: what issuance would
// cost with no API, credential, network or store around it.
func ceilingCmd(args []string) error {
	fs := flag.NewFlagSet("ceiling", flag.ExitOnError)
	caDir := fs.String("ca-dir", "", "the server's CA directory (DATA_DIR/ca)")
	workers := fs.Int("workers", 16*runtime.GOMAXPROCS(0), "concurrent signers")
	d := fs.Duration("duration", 10*time.Second, "how long to measure")
	warmup := fs.Duration("warmup", 2*time.Second, "how long to run before measuring")
	fs.Parse(args)
	sign, err := ceilingWork(*caDir)
	if err != nil {
		return err
	}
	r, err := window(*workers, *warmup, *d, -1, sign)
	if err != nil {
		return err
	}
	fmt.Printf("ceiling workers=%d ops=%d seconds=%.3f rate=%.1f cpu_per_op_us=%.1f\n",
		*workers, r.ops, r.elapsed.Seconds(), float64(r.ops)/r.elapsed.Seconds(), perOp(r.selfCPU, r.ops))
	return nil
}

// ceilingWork is the ceiling's unit of work: the CA in caDir (the server's
// own) signing a CSR made once, as SignX509SVIDFromCSR does for the server.
func ceilingWork(caDir string) (func(int) error, error) {
	ca, err := cadir.Load(caDir, time.Now)
	if err != nil {
		return nil, err
	}
	_, csr, err := newCSR()
	if err != nil {
		return nil, err
	}
	return func(int) error {
		_, err := ca.SignX509SVIDFromCSR(csr, pki.SVIDRequest{ID: nodeID})
		return err
	}, nil
}

func perOp(d time.Duration, ops int) float64 {
	if ops == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(ops)
}

func newCSR() (crypto.Signer, *x509.CertificateRequest, error) {
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	return key, csr, err
}

// loadCmd calls the server's signing API from -clients goroutines, each on
// a connection of its own (many agents, each with its connection), one CSR
// per call; the CSR is made once, before the clock starts.
func loadCmd(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	t := targetFlags(fs)
	clients := fs.Int("clients", 16*runtime.GOMAXPROCS(0), "concurrent calls, each on its own connection")
	d := fs.Duration("duration", 10*time.Second, "how long to measure")
	warmup := fs.Duration("warmup", 2*time.Second, "how long to run before measuring")
	pid := fs.Int("server-pid", -1, "the server's process ID, to measure its CPU time")
	ceilingDir := fs.String("ceiling-ca-dir", "", "the server's CA directory (DATA_DIR/ca): also measure the ceiling with that CA, as the ceiling command does, "+
		"alternating with the load in -slices pairs of windows, so that the machine's drift hits both alike")
	slicesN := fs.Int("slices", 4, "with -ceiling-ca-dir: how many ceiling and load windows, in turn, share -duration and -warmup")
	fs.Parse(args)
	if *slicesN < 1 {
		return fmt.Errorf("-slices %d: want at least 1", *slicesN)
	}

	call, conns, err := connect(*t, *clients)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	load := func(w int) error {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		return call(ctx, conns[w])
	}
	if *ceilingDir == "" {
		r, err := window(*clients, *warmup, *d, *pid, load)
		if err != nil {
			return fmt.Errorf("%s call failed: %w", t.api, err)
		}
		fmt.Println(loadLine(t.api, *clients, r))
		return nil
	}
	sign, err := ceilingWork(*ceilingDir)
	if err != nil {
		return err
	}
	// The ceiling and the load take turns, each slice with a warmup of its
	// own; the server is idle while this process signs.
	var ceiling, r result
	n := time.Duration(*slicesN)
	for range *slicesN {
		c, err := window(*clients, *warmup/n, *d/n, -1, sign)
		if err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
		ceiling.add(c)
		l, err := window(*clients, *warmup/n, *d/n, *pid, load)
		if err != nil {
			return fmt.Errorf("%s call failed: %w", t.api, err)
		}
		r.add(l)
	}
	slices.Sort(r.latencies)
	fmt.Printf("%s slices=%d ceiling_rate=%.1f ceiling_cpu_per_op_us=%.1f\n", loadLine(t.api, *clients, r), *slicesN,
		float64(ceiling.ops)/ceiling.elapsed.Seconds(), perOp(ceiling.selfCPU, ceiling.ops))
	return nil
}

// target is the server and call a load makes.
type target struct {
	addr, attestAddr, bundle, api, joinToken, jwtKey string
}

// targetFlags defines the flags that say what a load calls.
func targetFlags(fs *flag.FlagSet) *target {
	t := &target{}
	fs.StringVar(&t.addr, "addr", "", "the server's signing API (its --listen)")
	fs.StringVar(&t.bundle, "bundle", "", "PEM roots of the trust domain (meshfed bundle show --format pem)")
	fs.StringVar(&t.api, "api", "node", "node: Node.SignX509SVID renewing a node SVID over mTLS; istio: CreateCertificate with a service-account JWT")
	fs.StringVar(&t.joinToken, "join-token", "", "node: the join token the node attests with first")
	fs.StringVar(&t.attestAddr, "attest-addr", "", "node: the server that takes the join token, if not -addr (a load on `issuance floor`)")
	fs.StringVar(&t.jwtKey, "jwt-key", "", "istio: the key from `issuance jwks`")
	return t
}

// connect makes the call of t.api (attesting first for node) and clients
// connections of their own to make it on; the CSR is made once.
func connect(t target, clients int) (call func(ctx context.Context, conn *grpc.ClientConn) error, conns []*grpc.ClientConn, err error) {
	roots, err := pemfile.ReadCertificates(t.bundle)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	dialAt := func(addr string, client *tls.Certificate) (*grpc.ClientConn, error) {
		conf := &tls.Config{RootCAs: pool, ServerName: strings.Split(addr, ":")[0], MinVersion: tls.VersionTLS12}
		if client != nil {
			conf.Certificates = []tls.Certificate{*client}
		}
		// As the agent dials (agent.dial): fixed windows, no
		// bandwidth-estimating PINGs.
		return grpc.NewClient(addr, append(grpcflow.DialOptions(grpcflow.SigningAPIWindow),
			grpc.WithTransportCredentials(credentials.NewTLS(conf)))...)
	}
	dial := func(client *tls.Certificate) (*grpc.ClientConn, error) { return dialAt(t.addr, client) }
	_, csr, err := newCSR()
	if err != nil {
		return nil, nil, err
	}

	var clientCert *tls.Certificate
	switch t.api {
	case "node":
		attestAt := dial
		if t.attestAddr != "" {
			attestAt = func(client *tls.Certificate) (*grpc.ClientConn, error) { return dialAt(t.attestAddr, client) }
		}
		if clientCert, err = attest(attestAt, t.joinToken); err != nil {
			return nil, nil, err
		}
		req := &pb.SignX509SVIDRequest{Requests: []*pb.SVIDRequest{{Csr: csr.Raw}}}
		call = func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := pb.NewNodeClient(conn).SignX509SVID(ctx, req)
			if err == nil && len(resp.GetSvids()) != 1 {
				err = fmt.Errorf("%d SVIDs back, want 1", len(resp.GetSvids()))
			}
			return err
		}
	case "istio":
		key, err := pemfile.ReadPrivateKey(t.jwtKey)
		if err != nil {
			return nil, nil, err
		}
		token, err := serviceAccountToken(key)
		if err != nil {
			return nil, nil, err
		}
		req := &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(csr.Raw)), ValidityDuration: 3600}
		call = func(ctx context.Context, conn *grpc.ClientConn) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			resp, err := istioca.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
			if err == nil && len(resp.GetCertChain()) < 2 {
				err = fmt.Errorf("chain of %d back, want leaf and root", len(resp.GetCertChain()))
			}
			return err
		}
	default:
		return nil, nil, fmt.Errorf("-api %q: use node or istio", t.api)
	}

	conns = make([]*grpc.ClientConn, clients)
	for i := range conns {
		if conns[i], err = dial(clientCert); err != nil {
			closeAll(conns[:i])
			return nil, nil, err
		}
	}
	return call, conns, nil
}

// closeAll closes connections.
func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}

// herdCmd offers the server -rate calls per second for -duration, each on
// its schedule whatever became of the earlier ones (an open loop, as a fleet
// of agents arriving after a partition is), each given up after -timeout as
// a client would; and reports what became of them: signed in time (the
// goodput, with its latencies), refused (UNAVAILABLE: the server's load
// shedding, or a connection that failed), given up (DEADLINE_EXCEEDED),
// and the server's CPU and peak memory. The
// goodput is the calls signed in time over the seconds until the last call
// ended (the offered seconds and the drain after them).
func herdCmd(args []string) error {
	fs := flag.NewFlagSet("herd", flag.ExitOnError)
	t := targetFlags(fs)
	clients := fs.Int("clients", 256, "connections the calls are spread over")
	rate := fs.Int("rate", 5000, "calls offered per second")
	timeout := fs.Duration("timeout", 30*time.Second, "how long a call is waited for (the agent waits 30 s for a signing call)")
	d := fs.Duration("duration", 10*time.Second, "how long calls are offered")
	pid := fs.Int("server-pid", -1, "the server's process ID, for its CPU time and peak memory")
	fs.Parse(args)
	if *rate <= 0 {
		return fmt.Errorf("-rate %d: want a positive rate", *rate)
	}
	call, conns, err := connect(*t, *clients)
	if err != nil {
		return err
	}
	defer closeAll(conns)

	n := int(d.Seconds() * float64(*rate))
	interval := time.Second / time.Duration(*rate)
	var (
		mu                              sync.Mutex
		okLat                           []time.Duration
		unavailableN, deadlineN, otherN int
		firstOther                      error
		wg                              sync.WaitGroup
	)
	cpu0 := processCPU(*pid)
	began := time.Now()
	for i := range n {
		if wait := time.Until(began.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			t := time.Now()
			err := call(ctx, conns[i%len(conns)])
			lat := time.Since(t)
			mu.Lock()
			defer mu.Unlock()
			switch status.Code(err) {
			case codes.OK:
				okLat = append(okLat, lat)
			case codes.Unavailable:
				unavailableN++
			case codes.DeadlineExceeded:
				deadlineN++
			default:
				otherN++
				if firstOther == nil {
					firstOther = err
				}
			}
		})
	}
	offered := time.Since(began)
	wg.Wait()
	drained := time.Since(began)
	cpu := processCPU(*pid) - cpu0
	if otherN > 0 {
		fmt.Fprintf(os.Stderr, "issuance: %d calls failed otherwise, the first: %v\n", otherN, firstOther)
	}
	slices.Sort(okLat)
	fmt.Printf("herd api=%s rate=%d timeout=%s offered=%d seconds=%.3f drained_seconds=%.3f ok=%d goodput=%.1f unavailable=%d deadline=%d other=%d p50_us=%d p99_us=%d server_cpu_s=%.2f server_peak_rss_mib=%.1f\n",
		t.api, *rate, *timeout, n, offered.Seconds(), drained.Seconds(), len(okLat), float64(len(okLat))/drained.Seconds(), unavailableN, deadlineN, otherN,
		percentile(okLat, 0.50).Microseconds(), percentile(okLat, 0.99).Microseconds(), cpu.Seconds(), peakRSSMiB(*pid))
	return nil
}

// holdCmd connects -clients agents' connections (the node of -join-token,
// each connection its own), each with a Watch stream open once its first
// message arrived, as idle agents between renewals hold them, and reports
// the growth of the server's resident memory (VmRSS) per connection, after
// a pause for the server to settle.
func holdCmd(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	t := targetFlags(fs)
	clients := fs.Int("clients", 1000, "connections, each with a Watch stream")
	settle := fs.Duration("settle", 3*time.Second, "how long to wait before each reading of the server's memory")
	pid := fs.Int("server-pid", -1, "the server's process ID")
	metricsURL := fs.String("metrics", "", "the server's /metrics URL: also report its Go heap and stacks in use (go_memstats_*_inuse_bytes)")
	fs.Parse(args)
	if *pid <= 0 {
		return errors.New("-server-pid is required")
	}
	if t.api != "node" {
		return fmt.Errorf("-api %q: hold makes node connections only", t.api)
	}
	_, conns, err := connect(*t, *clients)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	time.Sleep(*settle)
	before := rssKiB(*pid, "VmRSS:")
	goBefore, err := goInUse(*metricsURL)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	for i, c := range conns {
		stream, err := pb.NewNodeClient(c).Watch(ctx, &pb.WatchRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
	}
	connected := time.Since(began)
	time.Sleep(*settle)
	after := rssKiB(*pid, "VmRSS:")
	goAfter, err := goInUse(*metricsURL)
	if err != nil {
		return err
	}
	fmt.Printf("hold clients=%d connect_ms=%d server_rss_before_kib=%d server_rss_after_kib=%d server_bytes_per_connection=%.0f server_go_inuse_bytes_per_connection=%.0f\n",
		*clients, connected.Milliseconds(), before, after, float64(after-before)*1024/float64(*clients), (goAfter-goBefore)/float64(*clients))
	return nil
}

// goInUse is the Go heap and goroutine stacks a server's /metrics says are
// in use, 0 without a URL.
func goInUse(url string) (float64, error) {
	if url == "" {
		return 0, nil
	}
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(line, name); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return 0, fmt.Errorf("%s: %w", url, err)
				}
				sum += f
			}
		}
	}
	return sum, nil
}

// rssKiB is a line of /proc/PID/status in KiB (VmRSS:, VmHWM:), 0 if unknown.
func rssKiB(pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb
		}
	}
	return 0
}

// peakRSSMiB is a process's peak resident memory (VmHWM), 0 if unknown.
func peakRSSMiB(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	return float64(rssKiB(pid, "VmHWM:")) / 1024
}

// loadLine is the load's report, key=value pairs for bench/run.
func loadLine(api string, clients int, r result) string {
	return fmt.Sprintf("load api=%s clients=%d ops=%d seconds=%.3f rate=%.1f p50_us=%d p99_us=%d server_cpu_per_op_us=%.1f load_cpu_per_op_us=%.1f",
		api, clients, r.ops, r.elapsed.Seconds(), float64(r.ops)/r.elapsed.Seconds(),
		percentile(r.latencies, 0.50).Microseconds(), percentile(r.latencies, 0.99).Microseconds(),
		perOp(r.peerCPU, r.ops), perOp(r.selfCPU, r.ops))
}

// attest trades the join token for a node SVID, as an agent does.
func attest(dial func(*tls.Certificate) (*grpc.ClientConn, error), token string) (*tls.Certificate, error) {
	if token == "" {
		return nil, errors.New("-api node needs -join-token")
	}
	conn, err := dial(nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	key, csr, err := newCSR()
	if err != nil {
		return nil, err
	}
	resp, err := pb.NewNodeClient(conn).AttestNode(context.Background(), &pb.AttestNodeRequest{
		Credential: &pb.AttestNodeRequest_JoinToken{JoinToken: token}, Csr: csr.Raw,
	})
	if err != nil {
		return nil, fmt.Errorf("attesting with the join token: %w", err)
	}
	return &tls.Certificate{Certificate: resp.GetSvid().GetCertChain(), PrivateKey: key}, nil
}

// serviceAccountToken is a Kubernetes-style token for ns/default/sa/bench.
func serviceAccountToken(key crypto.Signer) (string, error) {
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", jwtKeyID))
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.Signed(sig).Claims(map[string]any{
		"iss": jwtIssuer, "aud": []string{jwtAudience},
		"sub": "system:serviceaccount:default:bench",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": "default", "serviceaccount": map[string]any{"name": "bench", "uid": "bench-uid"}},
	}).Serialize()
}
