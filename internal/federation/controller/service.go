package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/adminsock"
	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/credential"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/meshfed/meshfed/internal/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// MemberPath is the path of the SPIFFE ID a member presents: its meshfed
// server's own.
const MemberPath = "/meshfed/server"

// Bounds on untrusted input beyond MaxRequestBytes.
const (
	// maxPeerChain bounds the certificates a member presents: its SVID and
	// intermediate, with room for a root. Path building cost grows with it.
	maxPeerChain = 8
	// maxTokenChars bounds a presented token; real ones are 43 characters.
	maxTokenChars = 128
	// maxAddressChars bounds a member's address (host:port).
	maxAddressChars = 512
	// maxReportRoots bounds live_svids_by_root: one or two roots are real.
	maxReportRoots = 16
	// maxReportField bounds a serial or a root's key ID in a report (hex
	// of 20 bytes is 40 characters).
	maxReportField = 128
)

// maxStateJWTBytes bounds the members' JWT-SVID keys in one federation
// state (jwtkeys.MaxTotalBytes; tests lower it).
var maxStateJWTBytes = jwtkeys.MaxTotalBytes

// transportCredentials is the Controller API's TLS: the serving certificate
// of the moment, and a client certificate requested but not required (Join
// has none). The client certificate is verified per call, against the roots
// of that moment, so that a refusal is a gRPC status that says why rather
// than a failed handshake.
func (c *Controller) transportCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion:   tlspolicy.MinVersion,
		CipherSuites: tlspolicy.CipherSuites(),
		ClientAuth:   tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if s := c.serving.Load(); s != nil {
				return s.tls, nil
			}
			return nil, errors.New("federation controller: no serving certificate")
		},
		NextProtos: []string{"h2"},
	})
}

type memberKey struct{}

// memberFrom returns the trust domain authenticateUnary or
// authenticateStream found.
func memberFrom(ctx context.Context) spiffeid.TrustDomain {
	td, _ := ctx.Value(memberKey{}).(spiffeid.TrustDomain)
	return td
}

func (c *Controller) authenticateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod == pb.Controller_Join_FullMethodName {
		return handler(ctx, req) // the token is the credential
	}
	td, err := c.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(context.WithValue(ctx, memberKey{}, td), req)
}

func (c *Controller) authenticateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	td, err := c.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &memberStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), memberKey{}, td)})
}

type memberStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *memberStream) Context() context.Context { return s.ctx }

// authenticate identifies a joined member by the X.509-SVID it presented:
// spiffe://<td>/meshfed/server for a td of spec.meshes, verifying against
// the current roots through an intermediate for that td. The rules are
// checked in order and each refusal says which failed.
func (c *Controller) authenticate(ctx context.Context, method string) (spiffeid.TrustDomain, error) {
	refuse := func(code codes.Code, format string, args ...any) (spiffeid.TrustDomain, error) {
		msg := fmt.Sprintf(format, args...)
		c.log.Warn("member call refused", "method", method, "reason", msg)
		return spiffeid.TrustDomain{}, status.Error(code, "federation controller: "+msg)
	}
	var certs []*x509.Certificate
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			certs = ti.State.PeerCertificates
		}
	}
	if len(certs) == 0 {
		return refuse(codes.Unauthenticated, "this call needs the member's X.509-SVID spiffe://<trust domain>%s as client certificate; a member without one joins first", MemberPath)
	}
	if len(certs) > maxPeerChain {
		return refuse(codes.Unauthenticated, "the client presented %d certificates; at most %d", len(certs), maxPeerChain)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return refuse(codes.Unauthenticated, "the client certificate is not an X.509-SVID: %v", err)
	}
	if id.Path() != MemberPath {
		return refuse(codes.PermissionDenied, "%s may not call the controller; members present spiffe://<trust domain>%s", id, MemberPath)
	}
	td := id.TrustDomain()
	now := c.clock()
	c.mu.Lock()
	_, member := c.mesh().Mesh(td)
	roots := c.currentRoots()
	_, joined := c.st.Members[td.Name()]
	c.mu.Unlock()
	if !member {
		return refuse(codes.PermissionDenied, "%s is not a member of VirtualMesh %q (spec.meshes)", td.Name(), c.name)
	}
	_, chains, err := pki.VerifyX509SVID(certs, x509bundle.FromX509Authorities(td, roots), now)
	if err != nil {
		return refuse(codes.Unauthenticated, "the SVID %s does not verify against the VirtualMesh's roots: %v", id, err)
	}
	if !throughIntermediate(chains, td) {
		return refuse(codes.PermissionDenied, "the SVID %s is not issued through an intermediate for %s", id, td.Name())
	}
	if !joined { // as errNotJoined
		return refuse(codes.FailedPrecondition, "%s has not joined VirtualMesh %q; join with a token first", td.Name(), c.name)
	}
	return td, nil
}

// errNotJoined is the refusal of a call from a member the controller has no
// record of: it never joined, or it was removed from spec.meshes since (and
// maybe added back). FailedPrecondition, unlike the PermissionDenied of a
// trust domain that is not a member, tells the member that a join with a
// new token is what it takes.
func errNotJoined(td spiffeid.TrustDomain, mesh string) error {
	return status.Errorf(codes.FailedPrecondition, "federation controller: %s has not joined VirtualMesh %q; join with a token first", td.Name(), mesh)
}

// throughIntermediate reports whether a verified chain runs leaf,
// intermediate for td, …, root: the intermediate names spiffe://<td> and is
// constrained to it.
func throughIntermediate(chains [][]*x509.Certificate, td spiffeid.TrustDomain) bool {
	for _, ch := range chains {
		if len(ch) < 3 {
			continue
		}
		in := ch[1]
		if in.IsCA && len(in.URIs) == 1 && in.URIs[0].String() == td.IDString() &&
			len(in.PermittedURIDomains) == 1 && in.PermittedURIDomains[0] == td.Name() {
			return true
		}
	}
	return false
}

// adminOnly lets only allowed uids use the admin socket.
func (c *Controller) adminOnly(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	uid, ok := adminsock.CallerUID(ctx)
	if !ok || !adminsock.UIDAllowed(c.cfg.AllowedUIDs, uid) {
		c.log.Warn("admin call refused", "method", info.FullMethod, "uid", uid)
		return nil, status.Errorf(codes.PermissionDenied, "federation controller: uid %d may not use the admin socket", uid)
	}
	return handler(ctx, req)
}

// parseCSR parses a DER CSR after bounding it. Its signature is checked
// when it is signed.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, status.Error(codes.InvalidArgument, "federation controller: no CSR")
	}
	if len(der) > pemfile.MaxCSRBytes {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: CSR of %d bytes; at most %d", len(der), pemfile.MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: CSR does not parse: %v", err)
	}
	return csr, nil
}

// signIntermediate signs an intermediate for td from csr under the signing
// root: pki takes only the CSR's key (after its signature proves the member
// holds it), names it spiffe://<td>, constrains it to td and re-verifies it.
// The chain is the intermediate and the root. c.mu must be held.
func (c *Controller) signIntermediate(csr *x509.CertificateRequest, td spiffeid.TrustDomain) ([]*x509.Certificate, intermediateRecord, error) {
	signing := c.roots[c.st.signing().Number]
	ca, err := c.rootCA(signing.number)
	if err != nil {
		return nil, intermediateRecord{}, status.Error(codes.Internal, err.Error())
	}
	req := pki.IntermediateRequest{TrustDomain: td, TTL: c.cfg.IntermediateTTL}
	if o := signing.cert.Subject.Organization; len(o) > 0 {
		req.Organization = o[0]
	}
	chain, err := ca.SignIntermediateFromCSR(csr, req)
	if err != nil {
		return nil, intermediateRecord{}, status.Errorf(codes.InvalidArgument, "federation controller: %v", err)
	}
	in := chain[0]
	return chain, intermediateRecord{Serial: in.SerialNumber.Text(16), Cert: in.Raw, Root: signing.skid, NotAfter: in.NotAfter}, nil
}

func ders(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

// errNotSaved is what a member hears when the state could not be written:
// nothing was granted, so retrying is safe.
func errNotSaved(err error) error {
	return status.Errorf(codes.Unavailable, "federation controller: could not save its state (%v); nothing was granted: retry", err)
}

// controllerService is the Controller API.
type controllerService struct {
	pb.UnimplementedControllerServer
	c *Controller
}

func (s *controllerService) Join(_ context.Context, req *pb.JoinRequest) (*pb.IntermediateResponse, error) {
	c := s.c
	token := req.GetToken()
	if token == "" {
		return nil, status.Error(codes.Unauthenticated, "federation controller: no join token; make one with meshfed federation token create")
	}
	if len(token) > maxTokenChars {
		return nil, status.Error(codes.Unauthenticated, "federation controller: the join token is malformed")
	}
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: trust_domain: %v", err)
	}
	if len(req.GetAddress()) > maxAddressChars {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: address longer than %d characters", maxAddressChars)
	}
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	hash := credential.HashJoinToken(token)
	name := credential.JoinTokenID(hash)
	now := c.clock()

	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.st.findToken(hash)
	if i < 0 || !now.Before(c.st.Tokens[i].ExpiresAt) || !c.st.Tokens[i].UsedAt.IsZero() {
		c.log.Warn("join refused", "trust_domain", td.Name(), "token", name, "reason", "unknown, expired or used")
		return nil, status.Errorf(codes.Unauthenticated, "federation controller: join token %s is unknown, expired or already used", name)
	}
	if want := c.st.Tokens[i].TrustDomain; want != td.Name() {
		c.log.Warn("join refused", "trust_domain", td.Name(), "token", name, "reason", "token for "+want)
		return nil, status.Errorf(codes.PermissionDenied, "federation controller: join token %s was made for trust domain %q, not %q", name, want, td.Name())
	}
	if _, ok := c.mesh().Mesh(td); !ok {
		return nil, status.Errorf(codes.PermissionDenied, "federation controller: %s is not a member of VirtualMesh %q (spec.meshes)", td.Name(), c.name)
	}
	chain, rec, err := c.signIntermediate(csr, td)
	if err != nil {
		c.log.Warn("join refused", "trust_domain", td.Name(), "token", name, "error", err)
		return nil, err
	}
	// The token is spent on disk before the intermediate leaves.
	if err := c.update(func(next *state) error {
		next.Tokens[i].UsedAt = now
		m := next.Members[td.Name()]
		if m == nil {
			m = &memberRecord{TrustDomain: td.Name()}
			next.Members[td.Name()] = m
		}
		m.Address, m.JoinedAt, m.LastContact, m.Report = req.GetAddress(), now, now, nil
		m.Intermediates = append(m.Intermediates, rec)
		return nil
	}); err != nil {
		c.log.Error("join not saved", "trust_domain", td.Name(), "error", err)
		return nil, errNotSaved(err)
	}
	c.log.Info("member joined", "trust_domain", td.Name(), "token", name, "address", req.GetAddress(),
		"intermediate", rec.Serial, "root", rec.Root, "not_after", rec.NotAfter.UTC().Format(time.RFC3339))
	return &pb.IntermediateResponse{CertChain: ders(chain), State: c.federationState()}, nil
}

func (s *controllerService) RenewIntermediate(ctx context.Context, req *pb.RenewIntermediateRequest) (*pb.IntermediateResponse, error) {
	c := s.c
	td := memberFrom(ctx)
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	pub, err := pki.CheckCSR(csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: %v", err)
	}
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.st.Members[td.Name()]
	if m == nil { // authenticate checked, but a reload may have dropped it since
		return nil, errNotJoined(td, c.name)
	}
	for _, old := range m.Intermediates {
		if cert, err := x509.ParseCertificate(old.Cert); err == nil && samePublicKey(pub, cert.PublicKey) {
			return nil, status.Errorf(codes.InvalidArgument, "federation controller: the CSR reuses the key of intermediate %s; make a new key for every intermediate", old.Serial)
		}
	}
	chain, rec, err := c.signIntermediate(csr, td)
	if err != nil {
		return nil, err
	}
	if err := c.update(func(next *state) error {
		m := next.Members[td.Name()]
		m.Intermediates = append(m.Intermediates, rec)
		m.LastContact = now
		return nil
	}); err != nil {
		c.log.Error("renewal not saved", "trust_domain", td.Name(), "error", err)
		return nil, errNotSaved(err)
	}
	c.log.Info("intermediate renewed", "trust_domain", td.Name(), "intermediate", rec.Serial, "root", rec.Root,
		"not_after", rec.NotAfter.UTC().Format(time.RFC3339))
	c.autoAdvance(now)
	return &pb.IntermediateResponse{CertChain: ders(chain), State: c.federationState()}, nil
}

func (s *controllerService) Watch(_ *pb.WatchRequest, stream grpc.ServerStreamingServer[pb.FederationState]) error {
	c := s.c
	td := memberFrom(stream.Context())
	var sent uint64 // generations start at 1
	for {
		c.mu.Lock()
		if m := c.st.Members[td.Name()]; m != nil {
			m.LastContact = c.clock() // saved with the next change
		}
		msg, wake := c.federationState(), c.changed
		c.mu.Unlock()
		if msg.Generation != sent {
			// The stream lives as long as the connection: the member is
			// checked again (its SVID may have expired, its root retired,
			// or its trust domain left spec.meshes) after the state to send
			// was read, before each one, the first too: a removal between
			// the interceptor's check and that read would otherwise go
			// unnoticed until the next change.
			if _, err := c.authenticate(stream.Context(), pb.Controller_Watch_FullMethodName); err != nil {
				return err
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
			sent = msg.Generation
		}
		select {
		case <-wake:
		case <-stream.Context().Done():
			return nil
		case <-c.stopping:
			return status.Error(codes.Unavailable, "federation controller: stopping; reconnect")
		}
	}
}

func (s *controllerService) Report(ctx context.Context, req *pb.MemberReport) (*pb.ReportResponse, error) {
	c := s.c
	td := memberFrom(ctx)
	if err := checkReport(req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: report: %v", err)
	}
	keys, err := jwtkeys.Parse(req.GetJwtAuthorities())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: report: %v", err)
	}
	jwtRecords := make([]jwtAuthorityRecord, 0, len(keys))
	for _, k := range keys {
		rec := jwtAuthorityRecord{KeyID: k.ID, PublicKey: k.DER}
		if !k.ExpiresAt.IsZero() {
			rec.ExpiresAt = k.ExpiresAt.Unix()
		}
		jwtRecords = append(jwtRecords, rec)
	}
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.Members[td.Name()] == nil { // dropped by a reload since authenticate
		return nil, errNotJoined(td, c.name)
	}
	total := jwtkeys.Size(keys)
	for name, m := range c.st.Members {
		if name != td.Name() {
			for _, a := range m.JWTAuthorities {
				total += len(a.KeyID) + len(a.PublicKey)
			}
		}
	}
	if total > maxStateJWTBytes {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: report: with these JWT authorities the members' keys would take %d bytes of every federation state; at most %d", total, maxStateJWTBytes)
	}
	if err := c.update(func(next *state) error {
		m := next.Members[td.Name()]
		m.LastContact = now
		m.Report = &reportRecord{
			At:                    now,
			AppliedGeneration:     req.GetAppliedGeneration(),
			IntermediateSerial:    req.GetIntermediateSerial(),
			IntermediateExpiresAt: req.GetIntermediateExpiresAt(),
			LiveSVIDsByRoot:       maps.Clone(req.GetLiveSvidsByRoot()),
			Agents:                req.GetAgents(),
			AgentsCurrent:         req.GetAgentsCurrent(),
		}
		if !slices.EqualFunc(m.JWTAuthorities, jwtRecords, func(a, b jwtAuthorityRecord) bool {
			return a.KeyID == b.KeyID && a.ExpiresAt == b.ExpiresAt && bytes.Equal(a.PublicKey, b.PublicKey)
		}) {
			// Every member is sent the new keys.
			m.JWTAuthorities = jwtRecords
			next.bump()
			c.log.Info("member JWT-SVID keys changed; passing them on", "trust_domain", td.Name(), "keys", len(jwtRecords))
		}
		return nil
	}); err != nil {
		return nil, errNotSaved(err)
	}
	c.log.Debug("member reported", "trust_domain", td.Name(), "applied_generation", req.GetAppliedGeneration(),
		"intermediate", req.GetIntermediateSerial(), "agents", req.GetAgents(), "agents_current", req.GetAgentsCurrent())
	c.autoAdvance(now)
	return &pb.ReportResponse{}, nil
}

// checkReport bounds a report and refuses what cannot be true.
func checkReport(r *pb.MemberReport) error {
	if len(r.GetIntermediateSerial()) > maxReportField {
		return fmt.Errorf("intermediate_serial longer than %d characters", maxReportField)
	}
	if len(r.GetLiveSvidsByRoot()) > maxReportRoots {
		return fmt.Errorf("live_svids_by_root names %d roots; at most %d", len(r.GetLiveSvidsByRoot()), maxReportRoots)
	}
	for k, n := range r.GetLiveSvidsByRoot() {
		if len(k) > maxReportField || n < 0 {
			return errors.New("live_svids_by_root: a key longer than 128 characters or a negative count")
		}
	}
	if r.GetAgents() < 0 || r.GetAgentsCurrent() < 0 || r.GetAgentsCurrent() > r.GetAgents() {
		return fmt.Errorf("agents %d, agents_current %d: want 0 <= agents_current <= agents", r.GetAgents(), r.GetAgentsCurrent())
	}
	return nil
}

// adminService is the Admin API on the unix socket.
type adminService struct {
	pb.UnimplementedAdminServer
	c *Controller
}

func (a *adminService) CreateToken(_ context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	c := a.c
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: trust_domain: %v", err)
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	switch {
	case ttl == 0:
		ttl = c.cfg.TokenTTL
	case ttl < 0 || ttl > MaxTokenTTL:
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: token TTL %s; give 1s to %s", ttl, MaxTokenTTL)
	}
	token, hash, err := credential.NewJoinToken()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	expires := c.clock().Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mesh().Mesh(td); !ok {
		return nil, status.Errorf(codes.InvalidArgument, "federation controller: %s is not a member of VirtualMesh %q; %s", td.Name(), c.name, c.addMemberHint())
	}
	if err := c.update(func(next *state) error {
		next.Tokens = append(next.Tokens, tokenRecord{Hash: hash, TrustDomain: td.Name(), ExpiresAt: expires})
		return nil
	}); err != nil {
		return nil, errNotSaved(err)
	}
	c.log.Info("join token created", "trust_domain", td.Name(), "token", credential.JoinTokenID(hash),
		"expires_at", expires.UTC().Format(time.RFC3339))
	return &pb.CreateTokenResponse{Token: token, ExpiresAt: expires.Unix()}, nil
}

func (a *adminService) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	return a.c.status(), nil
}

// RotateRoot starts a rotation from stable, or moves the one in progress
// on when its phase's condition holds, or with force, anyway.
func (a *adminService) RotateRoot(_ context.Context, req *pb.RotateRootRequest) (*pb.StatusResponse, error) {
	c := a.c
	c.mu.Lock()
	phase := c.st.Phase
	c.mu.Unlock()
	if phase == PhaseStable {
		if err := c.startRotation("admin"); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "federation controller: %v", err)
		}
	} else {
		now := c.clock()
		c.mu.Lock()
		waiting := c.st.waitingFor(c.skids(), now)
		if len(waiting) > 0 && !req.GetForce() {
			phase := c.st.Phase
			c.mu.Unlock()
			return nil, status.Errorf(codes.FailedPrecondition, "federation controller: the rotation cannot leave phase %s yet; waiting for: %s (force advances anyway)",
				phase, strings.Join(waiting, "; "))
		}
		err := c.advance(waiting)
		if err == nil {
			c.autoAdvance(now)
		}
		c.mu.Unlock()
		if err != nil {
			return nil, errNotSaved(err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status(), nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
