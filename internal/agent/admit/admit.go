// Package admit bounds what the workloads of a host may hold of the agent:
// connections to its sockets (the Workload API's and SDS's together) and
// calls in flight on them (open streams and unary calls), in all and per
// caller uid, as the kernel reported it at connect (SO_PEERCRED). Any local
// process may connect to the agent's sockets, so without a bound one
// process that leaks connections or streams, by mistake or on purpose, would
// exhaust the agent's file descriptors and memory and take the Workload API
// away from every other workload on the host (SPIRE's issue 2010, "Hardening
// the Agent - Rate Limiting UDS").
//
// A Gate never blocks and never queues: a connection or call over a limit is
// refused at once (a connection is closed before gRPC reads from it; a call
// gets RESOURCE_EXHAUSTED naming the limit), so what a workload already
// holds keeps working, and whatever was admitted is released exactly once
// when it ends. A Gate also keeps the Workload API's and SDS's call
// metrics, among them each call's time to its first response.
package admit

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
	"github.com/meshfed/meshfed/internal/logpace"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of Limits. A connected workload costs the agent about 32 KiB
// and an open stream a few KiB more (docs/performance.md), so the defaults
// hold what they admit to roughly 130 MiB of connections and 100 MiB of
// streams, under the agent's default soft memory limit's headroom, while
// leaving room for hundreds of workloads of one user (Kubernetes pods often
// all run as root).
const (
	DefaultConns       = 4096
	DefaultConnsPerUID = 1024
	DefaultCalls       = 16384
	DefaultCallsPerUID = 4096
)

// fdsPerConn is how many file descriptors the agent holds for a workload
// connection: the socket and the caller's /proc/<pid> handle (attest).
// DefaultConns is lowered to leave half of the process's file-descriptor
// limit to everything else (the server connection, files, /proc reads).
const fdsPerConn = 2

// Limits are the bounds of a Gate. Zero means the default; a negative value
// means no bound.
type Limits struct {
	// Conns bounds the connections held open at once, from every caller;
	// DefaultConns, or a quarter of RLIMIT_NOFILE if that is lower.
	Conns int
	// ConnsPerUID bounds those of callers of one uid; DefaultConnsPerUID.
	ConnsPerUID int
	// Calls bounds the calls in flight at once (each open stream, each
	// unary call until it returns), from every caller; DefaultCalls.
	Calls int
	// CallsPerUID bounds those of callers of one uid; DefaultCallsPerUID.
	CallsPerUID int
}

// Config configures a Gate.
type Config struct {
	Limits Limits
	// Logger receives a warning when a caller is refused, at most once per
	// uid and limit every LogEvery; it defaults to discarding.
	Logger *slog.Logger
	// Clock paces those warnings; time.Now if nil.
	Clock func() time.Time
	// FileLimit is RLIMIT_NOFILE's soft limit, read from the process if
	// zero; it lowers the default of Limits.Conns.
	FileLimit uint64
}

// LogEvery is how often, at most, a refusal of one uid for one limit is
// logged; the ones in between are counted in the next line.
const LogEvery = 30 * time.Second

// Gate admits connections and calls within Limits and counts them.
type Gate struct {
	lim   Limits
	log   *slog.Logger
	clock func() time.Time
	m     *metrics

	logged *logpace.Pacer[refusal]

	mu    sync.Mutex
	held  [2]int // by kind
	byUID map[uint32]*usage
}

// usage is what one uid holds, by kind.
type usage [2]int

// refusal names a kind of refusal of one uid, for pacing its log lines.
type refusal struct {
	uid   uint32
	limit string
}

// New fills in cfg's defaults and returns a Gate.
func New(cfg Config) (*Gate, error) {
	lim := cfg.Limits
	if lim.Conns == 0 {
		lim.Conns = DefaultConns
		nofile := cfg.FileLimit
		if nofile == 0 {
			var rl unix.Rlimit
			if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
				return nil, fmt.Errorf("admit: reading the open-files limit: %w", err)
			}
			nofile = rl.Cur
		}
		if by := nofile / (2 * fdsPerConn); by < uint64(lim.Conns) {
			lim.Conns = max(int(by), 1)
		}
	}
	lim.ConnsPerUID = cmpDefault(lim.ConnsPerUID, DefaultConnsPerUID)
	lim.Calls = cmpDefault(lim.Calls, DefaultCalls)
	lim.CallsPerUID = cmpDefault(lim.CallsPerUID, DefaultCallsPerUID)
	if lim.Conns > 0 && lim.ConnsPerUID > lim.Conns {
		lim.ConnsPerUID = lim.Conns
	}
	if lim.Calls > 0 && lim.CallsPerUID > lim.Calls {
		lim.CallsPerUID = lim.Calls
	}
	g := &Gate{
		lim:    lim,
		log:    cfg.Logger,
		clock:  cfg.Clock,
		byUID:  make(map[uint32]*usage),
		logged: logpace.New[refusal](LogEvery),
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.clock == nil {
		g.clock = time.Now
	}
	g.m = newMetrics(g)
	return g, nil
}

func cmpDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Limits returns the limits in force, defaults filled in (negative: none).
func (g *Gate) Limits() Limits { return g.lim }

// kind is what a Gate counts: connections or calls.
type kind int

const (
	conn kind = iota
	call
)

// kinds names each kind and its limits: the agent's configuration keys
// (limits.*), as errors, logs and metrics name them.
var kinds = [2]struct{ what, total, perUID string }{
	conn: {"connection", "max_connections", "max_connections_per_uid"},
	call: {"call", "max_calls", "max_calls_per_uid"},
}

// limits returns the total and per-uid bounds of k.
func (g *Gate) limits(k kind) (total, perUID int) {
	if k == conn {
		return g.lim.Conns, g.lim.ConnsPerUID
	}
	return g.lim.Calls, g.lim.CallsPerUID
}

// Conn admits a new connection from c, or says which limit refuses it. The
// caller must call release exactly once when the connection closes. It has
// the signature of attest.Config.Admit.
func (g *Gate) Conn(c attest.Caller) (release func(), err error) {
	u, err := g.take(c, conn)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { g.give(c.UID, u, conn) }) }, nil
}

// take admits one more of kind k from c, or says which limit refuses it;
// the caller gives it back with give(c.UID, u, k) exactly once. (Calls use
// it directly, without Conn's closure: it is on every call's path.)
func (g *Gate) take(c attest.Caller, k kind) (u *usage, err error) {
	total, perUID := g.limits(k)
	g.mu.Lock()
	u = g.byUID[c.UID]
	var limit string
	held := 0
	switch {
	case u != nil && over(u[k], perUID):
		limit, held = kinds[k].perUID, u[k]
	case over(g.held[k], total):
		limit, held = kinds[k].total, g.held[k]
	}
	if limit != "" {
		g.mu.Unlock()
		return nil, g.refused(c, limit, held, kinds[k].what)
	}
	if u == nil {
		// (A call on a connection this gate did not admit, as in tests,
		// is counted all the same.)
		u = &usage{}
		g.byUID[c.UID] = u
	}
	u[k]++
	g.held[k]++
	g.mu.Unlock()
	return u, nil
}

// give releases one of kind k that take admitted.
func (g *Gate) give(uid uint32, u *usage, k kind) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held[k]--
	u[k]--
	if *u == (usage{}) && g.byUID[uid] == u {
		delete(g.byUID, uid) // a uid holding nothing
	}
}

// over says whether holding n already reaches limit (negative: no limit).
func over(n, limit int) bool { return limit >= 0 && n >= limit }

// refused counts and (paced) logs a refusal, and returns its error.
func (g *Gate) refused(c attest.Caller, limit string, held int, what string) error {
	g.m.refused.WithLabelValues(what, limit).Inc()
	var err error
	switch limit {
	case kinds[conn].perUID, kinds[call].perUID:
		err = fmt.Errorf("admit: uid %d holds as many %ss to this agent as limits.%s allows (%d); a process of that user may be leaking them (close streams and connections when done)", c.UID, what, limit, held)
	default:
		err = fmt.Errorf("admit: the agent holds as many workload %ss as limits.%s allows (%d); refusing a new one from uid %d (pid %d)", what, limit, held, c.UID, c.PID)
	}
	missed, ok := g.logged.Allow(refusal{c.UID, limit}, g.clock())
	if !ok {
		return err
	}
	g.log.Warn("refused a workload "+what, "uid", c.UID, "pid", c.PID, "limit", "limits."+limit, "held", held, "refused_since_last_line", missed, "error", err)
	return err
}

// UnaryInterceptor admits each unary call as a call of its caller (the
// connection's, from attest), counts it by method and result, and times it
// from its arrival to the handler's return.
func (g *Gate) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	began := g.clock()
	mm := g.m.method(info.FullMethod)
	c, u, err := g.admitCall(ctx)
	if err != nil {
		mm.done(err)
		return nil, err
	}
	mm.inflight.Inc()
	resp, err := handler(ctx, req)
	mm.first.Observe(g.clock().Sub(began).Seconds())
	mm.inflight.Dec()
	g.give(c.UID, u, call)
	mm.done(err)
	return resp, err
}

// StreamInterceptor admits each stream, for as long as it is open, as
// UnaryInterceptor admits a unary call, and times it from its arrival to
// its first message.
func (g *Gate) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	began := g.clock()
	mm := g.m.method(info.FullMethod)
	c, u, err := g.admitCall(ss.Context())
	if err != nil {
		mm.done(err)
		return err
	}
	mm.inflight.Inc()
	err = handler(srv, &timedStream{ServerStream: ss, g: g, began: began, first: mm.first})
	mm.inflight.Dec()
	g.give(c.UID, u, call)
	mm.done(err)
	return err
}

// timedStream is a stream whose first message sent is timed, for
// meshfed_agent_call_first_response_seconds. gRPC lets one goroutine at a
// time call SendMsg, so sent needs no lock.
type timedStream struct {
	grpc.ServerStream
	g     *Gate
	began time.Time
	first prometheus.Observer
	sent  bool
}

func (s *timedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if !s.sent {
		s.sent = true
		s.first.Observe(s.g.clock().Sub(s.began).Seconds())
	}
	return err
}

func (g *Gate) admitCall(ctx context.Context) (attest.Caller, *usage, error) {
	c, ok := attest.CallerFromContext(ctx)
	if !ok {
		// Every connection of the agent's sockets is accepted through
		// attest's credentials; one that is not has no caller to bound.
		return c, nil, status.Error(codes.Internal, "admit: the call has no kernel-identified caller")
	}
	u, err := g.take(c, call)
	if err != nil {
		return c, nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	return c, u, nil
}

// Usage reports what the gate has admitted and not released: connections
// and calls in all, and of uid.
func (g *Gate) Usage(uid uint32) (conns, calls, uidConns, uidCalls int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if u := g.byUID[uid]; u != nil {
		uidConns, uidCalls = u[conn], u[call]
	}
	return g.held[conn], g.held[call], uidConns, uidCalls
}

// methodLabel is a gRPC full method name as a metric label: without its
// leading slash ("SpiffeWorkloadAPI/FetchX509SVID").
func methodLabel(full string) string { return strings.TrimPrefix(full, "/") }
