package member

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// maxMessageBytes bounds a message from the controller: MaxRoots and
// MaxChain certificates of MaxCertBytes and MaxTrustDomains names of 255
// bytes fit in it.
const maxMessageBytes = 4 << 20

// Run starts the member if Start has not, hands the state in Dir to
// OnState, then follows the controller until ctx is done: it applies and
// persists every new state, renews the intermediate when it is due, and
// reports. A failure to reach the controller is retried with backoff and
// never ends Run; what is in use stays in use. Run returns an error only
// when the member cannot start or OnState refuses the state in Dir.
func (m *Member) Run(ctx context.Context) error {
	if err := m.Start(ctx); err != nil {
		return err
	}
	applied, _ := m.states()
	if err := m.onState(ctx, applied); err != nil {
		return fmt.Errorf("member: the server refused the federation state in %s: %w", m.cfg.Dir, err)
	}
	l := &loop{m: m, reportAt: m.clock()}
	defer l.closeSession()
	for {
		l.step(ctx, m.clock())
		var states <-chan *pb.FederationState
		var ended <-chan error
		if l.w != nil {
			states, ended = l.w.states, l.w.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.cfg.Timer(l.next(m.clock())):
		case msg := <-states:
			l.received(ctx, m.clock(), msg)
		case err := <-ended:
			l.watchEnded(ctx, m.clock(), err)
		}
	}
}

// loop is Run's state. Only Run's goroutine touches it; what it does is
// decided by the clock, so every wait is a deadline here and one timer.
type loop struct {
	m    *Member
	sess *session
	w    *watcher

	reconnectAt   time.Time // the watch stream is opened again from then
	watchFailures int

	renewRetryAt  time.Time
	renewFailures int

	pending       *State // verified, but OnState has not accepted it yet
	applyRetryAt  time.Time
	applyFailures int

	reportAt time.Time

	// rejoin is set when the controller has no record of this member
	// (FailedPrecondition): nothing else is tried until a join with a
	// token succeeds.
	rejoin         bool
	rejoinAt       time.Time
	rejoinFailures int
}

// step does whatever is due at now.
func (l *loop) step(ctx context.Context, now time.Time) {
	if l.rejoin {
		if !now.Before(l.rejoinAt) {
			l.joinAgain(ctx, now)
		}
		if l.rejoin {
			return
		}
	}
	if reason := l.renewReason(now); reason != "" {
		l.renew(ctx, now, reason)
	}
	// A stale session ends with its watch stream, which starts again
	// below on a new one.
	if l.sess != nil && l.sess.stale(l.m.current(), now) {
		l.closeSession()
	}
	if l.pending != nil && !now.Before(l.applyRetryAt) {
		l.apply(ctx, now, l.pending)
	}
	if l.w == nil && !now.Before(l.reconnectAt) {
		if s, err := l.session(now); err != nil {
			l.watchFailed(now, err)
		} else {
			l.startWatch(ctx, s)
		}
	}
	if !now.Before(l.reportAt) {
		l.report(ctx, now)
		l.reportAt = now.Add(jittered(l.m.cfg.ReportInterval, l.m.cfg.Jitter, l.m.rand()))
	}
}

// next is the earliest deadline after step.
func (l *loop) next(now time.Time) time.Time {
	if l.rejoin {
		return l.rejoinAt
	}
	t := l.reportAt
	earlier := func(u time.Time) {
		if u.Before(t) {
			t = u
		}
	}
	earlier(l.renewDue(now))
	if l.sess != nil {
		earlier(l.sess.refreshAt)
	}
	if l.w == nil {
		earlier(l.reconnectAt)
	}
	if l.pending != nil {
		earlier(l.applyRetryAt)
	}
	return t
}

// renewDue is when the intermediate is to be renewed: at once when the
// federation signs under another root than the one it chains to, else at
// its renewal time; after a failure, not before the backoff is over.
func (l *loop) renewDue(now time.Time) time.Time {
	cur := l.m.current()
	_, latest := l.m.states()
	at := l.m.renewTime()
	if !cur.root.Equal(latest.SigningRoot) {
		at = now
	}
	if at.Before(l.renewRetryAt) {
		at = l.renewRetryAt
	}
	return at
}

// renewReason says why the intermediate is due for renewal at now, or ""
// when it is not.
func (l *loop) renewReason(now time.Time) string {
	if now.Before(l.renewDue(now)) {
		return ""
	}
	_, latest := l.m.states()
	if !l.m.current().root.Equal(latest.SigningRoot) {
		return fmt.Sprintf("the federation now signs under root %x", latest.SigningRoot.SubjectKeyId)
	}
	return "past its renewal time"
}

// renew replaces the intermediate with one for a new key, or keeps the one
// in use and backs off.
func (l *loop) renew(ctx context.Context, now time.Time, reason string) {
	m := l.m
	old := m.current()
	in, s, err := l.renewOnce(ctx, now)
	if err != nil && ctx.Err() != nil {
		return
	}
	if err != nil {
		l.checkRecord(err)
		l.renewFailures++
		wait := backoff(l.renewFailures, m.cfg.MinBackoff, m.cfg.MaxBackoff, m.cfg.Jitter, m.rand())
		l.renewRetryAt = now.Add(wait)
		m.failed("renewing the VirtualMesh intermediate failed; the one in use stays", fmt.Errorf("%w (retrying in %s)", err, wait))
		return
	}
	m.log.Info("VirtualMesh intermediate renewed", "reason", reason, "serial", in.serial(), "previous_serial", old.serial(),
		"root_skid", fmt.Sprintf("%x", in.root.SubjectKeyId), "not_after", in.cert().NotAfter.UTC().Format(time.RFC3339))
	l.renewFailures = 0
	l.renewRetryAt = time.Time{}
	// The server hears of the new intermediate through OnState, with the
	// response's state unless the stream already brought a newer one.
	applied, latest := m.states()
	if s.Generation >= latest.Generation {
		m.setLatest(s)
	} else {
		s = applied
	}
	l.apply(ctx, now, s)
	if _, latest := m.states(); !in.root.Equal(latest.SigningRoot) {
		// The stream has moved on to yet another root; do not call again
		// at once.
		l.renewFailures++
		l.renewRetryAt = now.Add(backoff(l.renewFailures, m.cfg.MinBackoff, m.cfg.MaxBackoff, m.cfg.Jitter, m.rand()))
	}
}

func (l *loop) renewOnce(ctx context.Context, now time.Time) (*intermediate, *State, error) {
	m := l.m
	if exp := m.current().cert().NotAfter; !now.Before(exp) {
		return nil, nil, fmt.Errorf("member: the intermediate expired at %s before it could be renewed, so the controller will not accept this member's SVID; create a join token with 'meshfed federation token create --trust-domain %s' and restart with it",
			exp.UTC().Format(time.RFC3339), m.cfg.TrustDomain)
	}
	sess, err := l.session(now)
	if err != nil {
		return nil, nil, err
	}
	key, csr, err := m.newCSR()
	if err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	resp, err := sess.client.RenewIntermediate(cctx, &pb.RenewIntermediateRequest{Csr: csr})
	if err != nil {
		return nil, nil, fmt.Errorf("member: the controller did not renew the intermediate: %w", err)
	}
	m.contact(now)
	in, s, err := checkResponse(resp, m.cfg.TrustDomain, key, m.cfg.Clock)
	if err != nil {
		return nil, nil, err
	}
	// The files keep the applied state; apply writes the new one once the
	// server has accepted it.
	applied, _ := m.states()
	if err := writeDir(m.cfg.Dir, in, applied); err != nil {
		return nil, nil, err
	}
	m.setIntermediate(in)
	return in, s, nil
}

// received handles a state from the Watch stream.
func (l *loop) received(ctx context.Context, now time.Time, msg *pb.FederationState) {
	l.w.received = true
	l.m.contact(now)
	s, err := stateFromProto(msg)
	if err != nil {
		l.m.failed("a federation state from the controller was refused", fmt.Errorf("member: federation state from the controller: %w", err))
		return
	}
	l.m.setLatest(s)
	if applied, _ := l.m.states(); sameState(s, applied) {
		l.pending = nil
		return
	}
	l.apply(ctx, now, s)
}

// apply hands s to the server and then persists it; if the server refuses
// it, it is offered again after a backoff.
func (l *loop) apply(ctx context.Context, now time.Time, s *State) {
	m := l.m
	l.reportAt = now
	if err := m.onState(ctx, s); err != nil {
		l.pending = s
		l.applyFailures++
		wait := backoff(l.applyFailures, m.cfg.MinBackoff, m.cfg.MaxBackoff, m.cfg.Jitter, m.rand())
		l.applyRetryAt = now.Add(wait)
		m.failed("the server refused a federation state", fmt.Errorf("member: apply generation %d: %w (retrying in %s)", s.Generation, err, wait))
		return
	}
	l.pending = nil
	l.applyFailures = 0
	m.setApplied(s)
	if err := writeDir(m.cfg.Dir, m.current(), s); err != nil {
		m.failed("the federation state was applied but not saved", err)
	}
	m.log.Info("federation state applied", "virtual_mesh", s.Name, "generation", s.Generation, "phase", s.Phase,
		"roots", len(s.Roots), "signing_root_skid", fmt.Sprintf("%x", s.SigningRoot.SubjectKeyId), "trust_domains", len(s.TrustDomains))
}

// report tells the controller what the member holds.
func (l *loop) report(ctx context.Context, now time.Time) {
	m := l.m
	sess, err := l.session(now)
	if err != nil {
		m.failed("cannot report to the controller", err)
		return
	}
	var r Report
	if m.cfg.Report != nil {
		r = m.cfg.Report()
	}
	cur := m.current()
	applied, _ := m.states()
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	_, err = sess.client.Report(cctx, &pb.MemberReport{
		AppliedGeneration:     applied.Generation,
		IntermediateSerial:    cur.serial(),
		IntermediateExpiresAt: cur.cert().NotAfter.Unix(),
		LiveSvidsByRoot:       r.LiveSVIDsByRoot,
		Agents:                r.Agents,
		AgentsCurrent:         r.AgentsCurrent,
		JwtAuthorities:        jwtkeys.ToProto(r.JWTAuthorities),
	})
	switch {
	case err == nil:
		m.contact(now)
	case ctx.Err() == nil: // not a shutdown
		l.checkRecord(err)
		m.failed("cannot report to the controller", fmt.Errorf("member: report: %w", err))
	}
}

// session is a connection to the controller that presents one client SVID.
type session struct {
	conn      *grpc.ClientConn
	client    pb.ControllerClient
	issuer    *intermediate
	refreshAt time.Time
}

// stale reports whether the session's SVID is past half its life or was
// issued by an intermediate no longer in use.
func (s *session) stale(cur *intermediate, now time.Time) bool {
	return s.issuer != cur || !now.Before(s.refreshAt)
}

// session returns the session to call the controller with, replacing a
// stale one. A new session's connection is made on its first call.
func (l *loop) session(now time.Time) (*session, error) {
	cur := l.m.current()
	if l.sess != nil && l.sess.stale(cur, now) {
		l.closeSession()
	}
	if l.sess == nil {
		s, err := l.m.newSession(cur, now)
		if err != nil {
			return nil, err
		}
		l.sess = s
	}
	return l.sess, nil
}

// closeSession ends the watch stream, if any, and the connection.
func (l *loop) closeSession() {
	l.stopWatch()
	if l.sess != nil {
		l.sess.conn.Close()
		l.sess = nil
	}
}

// newSession issues a client SVID spiffe://<td>/meshfed/server from the
// intermediate and makes a connection that presents it. The session is
// replaced at half the SVID's life, but not within MinBackoff: an SVID
// clipped to an intermediate about to expire is past half its life at once.
func (m *Member) newSession(cur *intermediate, now time.Time) (*session, error) {
	id, err := spiffeid.FromPath(m.cfg.TrustDomain, ServerPath)
	if err != nil {
		return nil, fmt.Errorf("member: %w", err)
	}
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		return nil, fmt.Errorf("member: %w", err)
	}
	chain, err := cur.ca.SignX509SVID(pki.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: m.cfg.ClientSVIDTTL})
	if err != nil {
		return nil, fmt.Errorf("member: issue the client SVID: %w", err)
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	cert := &tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: chain[0]}
	conn, err := m.dial(m.controllerRoots, cert)
	if err != nil {
		return nil, err
	}
	refresh := refreshAt(chain[0])
	if earliest := now.Add(m.cfg.MinBackoff); refresh.Before(earliest) {
		refresh = earliest
	}
	return &session{conn: conn, client: pb.NewControllerClient(conn), issuer: cur, refreshAt: refresh}, nil
}

// dial makes a connection to the controller that verifies it on every
// handshake against roots() and, when cert is set, presents cert.
func (m *Member) dial(roots func() []*x509.Certificate, cert *tls.Certificate) (*grpc.ClientConn, error) {
	conf := &tls.Config{
		MinVersion:         tlspolicy.MinVersion,
		CipherSuites:       tlspolicy.CipherSuites(),
		InsecureSkipVerify: true, // replaced by VerifyConnection, which checks the chain and the SPIFFE ID
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyController(cs.PeerCertificates, roots(), m.clock())
		},
	}
	if cert != nil {
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := grpc.NewClient(m.cfg.Controller,
		grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes)))
	if err != nil {
		return nil, fmt.Errorf("member: controller %s: %w", m.cfg.Controller, err)
	}
	return conn, nil
}

// watcher is one Watch stream, read by its own goroutine into states until
// it ends (done) or is stopped.
type watcher struct {
	cancel   context.CancelFunc
	states   chan *pb.FederationState
	done     chan error
	received bool // a state arrived on this stream
}

func (l *loop) startWatch(ctx context.Context, s *session) {
	wctx, cancel := context.WithCancel(ctx)
	w := &watcher{cancel: cancel, states: make(chan *pb.FederationState), done: make(chan error, 1)}
	go func() { w.done <- watch(wctx, s.client, w.states) }()
	l.w = w
}

func watch(ctx context.Context, client pb.ControllerClient, out chan<- *pb.FederationState) error {
	stream, err := client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stopWatch ends the watch stream and waits for its goroutine.
func (l *loop) stopWatch() {
	if l.w != nil {
		l.w.cancel()
		<-l.w.done
		l.w = nil
	}
}

// watchEnded schedules a new stream, on a new connection, after a backoff
// that restarts once a stream has delivered a state.
func (l *loop) watchEnded(ctx context.Context, now time.Time, err error) {
	if l.w.received {
		l.watchFailures = 0
	}
	l.w.cancel()
	l.w = nil // its done has been received
	l.closeSession()
	if ctx.Err() != nil {
		return // Run is ending
	}
	l.checkRecord(err)
	l.watchFailed(now, fmt.Errorf("member: watch stream from the controller ended: %w", err))
}

// checkRecord sets rejoin when err says the controller has no record of
// this member: it was removed from spec.meshes and added back, so its
// intermediate, still valid, no longer counts, and only a join with a new
// token makes it a member again.
func (l *loop) checkRecord(err error) {
	if l.rejoin || status.Code(err) != codes.FailedPrecondition {
		return
	}
	l.rejoin = true
	l.rejoinAt = time.Time{}
	l.closeSession()
	l.m.log.Warn("the controller has no record of this member (removed from spec.meshes and added back?); joining again with the join token", "error", err.Error())
}

// joinAgain joins with the token the member has now, over TLS that verifies
// the controller against the roots it trusts now, and takes up the new
// intermediate and state as a renewal does; or backs off.
func (l *loop) joinAgain(ctx context.Context, now time.Time) {
	m := l.m
	in, s, err := m.rejoin(ctx)
	if err != nil && ctx.Err() != nil {
		return
	}
	if err != nil {
		l.rejoinFailures++
		wait := backoff(l.rejoinFailures, m.cfg.MinBackoff, m.cfg.MaxBackoff, m.cfg.Jitter, m.rand())
		l.rejoinAt = now.Add(wait)
		m.failed("joining the VirtualMesh again failed; give the member a new join token", fmt.Errorf("%w (retrying in %s; make a token with 'meshfed federation token create --trust-domain %s')", err, wait, m.cfg.TrustDomain))
		return
	}
	old := m.current()
	m.setIntermediate(in)
	m.contact(now)
	l.rejoin, l.rejoinFailures = false, 0
	l.watchFailures, l.reconnectAt = 0, time.Time{}
	l.renewFailures, l.renewRetryAt = 0, time.Time{}
	l.closeSession() // its SVID came from the old intermediate
	m.log.Info("joined the VirtualMesh again", "virtual_mesh", s.Name, "serial", in.serial(), "previous_serial", old.serial(),
		"root_skid", fmt.Sprintf("%x", in.root.SubjectKeyId), "not_after", in.cert().NotAfter.UTC().Format(time.RFC3339))
	m.setLatest(s)
	l.apply(ctx, now, s)
}

func (l *loop) watchFailed(now time.Time, err error) {
	m := l.m
	l.watchFailures++
	wait := backoff(l.watchFailures, m.cfg.MinBackoff, m.cfg.MaxBackoff, m.cfg.Jitter, m.rand())
	l.reconnectAt = now.Add(wait)
	m.failed("no watch stream from the controller; reconnecting", fmt.Errorf("%w (reconnecting in %s)", err, wait))
}
