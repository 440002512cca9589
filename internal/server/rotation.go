package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	fedpb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/authority"
	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/meshfed/meshfed/internal/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Rotation of this server's self-signed root (federation model B: the
// foreign domains hold this domain's bundle, fetched from the bundle
// endpoint). The phases are named as a VirtualMesh controller names its own:
//
//   - stable: one root signs and is published.
//   - publishing: the next root is published beside it (the bundle's
//     sequence moves) but does not sign. It may sign once every agent has
//     received that bundle and publishFor has passed since it was
//     published, so foreign servers that fetch at the hint have it too.
//   - retiring: the next root signs; the previous one stays published until
//     no certificate signed under it is alive (the audit log counts them by
//     root), then it leaves the bundle and its key is deleted.
//
// Each step runs on `meshfed federation rotate-root` against the server's
// admin socket (which starts a rotation, or advances one whose condition
// holds, or with --force one whose condition does not), and, with
// ca.auto_rotate (the default), by itself: a rotation starts when the root
// has less than ca.rotate_before left, and each phase advances as soon as its
// condition holds.
const (
	phaseStable     = "stable"
	phasePublishing = "publishing"
	phaseRetiring   = "retiring"
)

// rotationPhase names the phase the authority's directories record.
func (s *Server) rotationPhase() string {
	switch s.auth.Phase() {
	case authority.PhasePrepared:
		return phasePublishing
	case authority.PhaseActive:
		return phaseRetiring
	}
	return phaseStable
}

// rotationStep starts or advances a rotation. It returns the phase it left
// the rotation in and, when it could not advance, why not.
func (s *Server) rotationStep(ctx context.Context, start, force bool) (string, string, error) {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	switch s.rotationPhase() {
	case phaseStable:
		if !start {
			return phaseStable, "", nil
		}
		next, err := s.auth.Prepare()
		if err != nil {
			return phaseStable, "", err
		}
		if err := s.store.AddX509Authority(ctx, store.X509Authority{DER: next.Raw, NotAfter: next.NotAfter, ServerID: s.set.serverID}); err != nil {
			return phasePublishing, "", err
		}
		s.changed(ctx)
		s.log.Info("root rotation: the next root is published", "phase", phasePublishing, "subject", next.Subject.CommonName,
			"subject_key_id", hex.EncodeToString(next.SubjectKeyId))
		return phasePublishing, s.publishingWait(ctx, next), nil
	case phasePublishing:
		next, err := s.auth.Next()
		if err != nil {
			return phasePublishing, "", err
		}
		if wait := s.publishingWait(ctx, next); wait != "" {
			if !force {
				return phasePublishing, wait, nil
			}
			s.log.Warn("root rotation: activating the next root before its condition holds (forced)", "waiting_for", wait)
		}
		if err := s.auth.Activate(); err != nil {
			return phasePublishing, "", err
		}
		if err := s.identity.rotate(); err != nil {
			s.log.Error("re-issuing the server SVID under the new root failed; will retry", "error", err)
		}
		s.changed(ctx)
		s.log.Info("root rotation: the next root signs now", "phase", phaseRetiring)
		prev, _ := s.auth.Previous()
		return phaseRetiring, s.retiringWait(ctx, prev), nil
	default:
		prev, err := s.auth.Previous()
		if err != nil || prev == nil {
			return phaseRetiring, "", fmt.Errorf("server: the previous root: %v", err)
		}
		if wait := s.retiringWait(ctx, prev); wait != "" {
			if !force {
				return phaseRetiring, wait, nil
			}
			s.log.Warn("root rotation: retiring the previous root while certificates under it are alive (forced); they will no longer verify", "waiting_for", wait)
		}
		if err := s.store.RemoveX509Authority(ctx, prev.Raw); err != nil && !errors.Is(err, store.ErrNotFound) {
			return phaseRetiring, "", err
		}
		if err := s.auth.Retire(); err != nil {
			return phaseRetiring, "", err
		}
		s.changed(ctx)
		s.log.Info("root rotation: the previous root is retired", "phase", phaseStable, "subject", prev.Subject.CommonName)
		return phaseStable, "", nil
	}
}

// publishingWait says who has not seen the next root yet, or "".
func (s *Server) publishingWait(ctx context.Context, next *x509.Certificate) string {
	var why []string
	if all, current := s.watchers.counts(s.view.Load()); current < all {
		why = append(why, fmt.Sprintf("%d of %d agents have not received the bundle with the next root", all-current, all))
	}
	auths, err := s.store.LocalAuthorities(ctx)
	if err != nil {
		return "the store is unavailable"
	}
	for _, a := range auths.X509 {
		if string(a.DER) != string(next.Raw) {
			continue
		}
		if left := a.AddedAt.Add(s.publishFor()).Sub(s.clock()); left > 0 {
			why = append(why, fmt.Sprintf("foreign servers fetch this bundle every %s (refresh hint): %s left of the %s it is published before it signs",
				s.set.refreshHint, left.Round(time.Second), s.publishFor()))
		}
		return strings.Join(why, "; ")
	}
	return "the next root is not in the store yet"
}

// publishFor is how long the next root is published before it may sign:
// two refresh hints (a peer fetching at the hint has it even if one fetch
// failed), and at least two of meshfed's shortest fetch interval, since a
// peer fetches no more often than that whatever the hint says.
func (s *Server) publishFor() time.Duration {
	return 2 * max(s.set.refreshHint, fetcher.DefaultMinRefresh)
}

// retiringWait says how many live certificates chain to prev, or "".
func (s *Server) retiringWait(ctx context.Context, prev *x509.Certificate) string {
	if prev == nil {
		return ""
	}
	live, err := s.store.LiveIssuedByRoot(ctx, s.clock())
	if err != nil {
		return "the store is unavailable"
	}
	// Rows written before the audit log recorded roots have none: they
	// may chain to this root, so they count as if they did.
	n := live[hex.EncodeToString(prev.SubjectKeyId)] + live[""]
	switch {
	case n == 1:
		return fmt.Sprintf("1 live certificate may chain to the previous root %q; it expires by its TTL", prev.Subject.CommonName)
	case n > 1:
		return fmt.Sprintf("%d live certificates may chain to the previous root %q; the last expires by its TTL", n, prev.Subject.CommonName)
	}
	return ""
}

// autoRotate is the maintenance loop's part: start a rotation when the root
// nears its end, and advance one whose condition holds.
func (s *Server) autoRotate(ctx context.Context) {
	if !s.set.autoRotate || s.set.caMode == authority.ModeCACerts || s.auth.FromCACerts() {
		return
	}
	phase := s.rotationPhase()
	start := phase == phaseStable && !s.clock().Before(s.auth.CA().NotAfter().Add(-s.rotateBefore()))
	if phase == phaseStable && !start {
		return
	}
	if _, _, err := s.rotationStep(ctx, start, false); err != nil {
		s.log.Error("root rotation step failed; will retry", "phase", phase, "error", err)
	}
}

// rotateBefore is ca.rotate_before, or a sixth of the root's lifetime.
func (s *Server) rotateBefore() time.Duration {
	if s.set.rotateBefore > 0 {
		return s.set.rotateBefore
	}
	c := s.auth.CA().Certificate()
	return c.NotAfter.Sub(c.NotBefore) / 6
}

// rotationAdmin serves meshfed.federation.v1.Admin on the server's admin
// socket, so `meshfed federation status|rotate-root` work against a server
// as they do against a VirtualMesh controller.
type rotationAdmin struct {
	fedpb.UnimplementedAdminServer
	s *Server
}

func (r *rotationAdmin) CreateToken(context.Context, *fedpb.CreateTokenRequest) (*fedpb.CreateTokenResponse, error) {
	return nil, status.Error(codes.Unimplemented, "server: VirtualMesh join tokens come from the controller's admin socket (meshfed federation token create --admin-socket CONTROLLER)")
}

func (r *rotationAdmin) Status(ctx context.Context, _ *fedpb.StatusRequest) (*fedpb.StatusResponse, error) {
	return r.s.rotationStatus(ctx, "")
}

func (r *rotationAdmin) RotateRoot(ctx context.Context, req *fedpb.RotateRootRequest) (*fedpb.StatusResponse, error) {
	s := r.s
	if s.auth.FromCACerts() {
		return nil, status.Error(codes.FailedPrecondition, authority.ErrNoRotation.Error())
	}
	_, wait, err := s.rotationStep(ctx, true, req.GetForce())
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return s.rotationStatus(ctx, wait)
}

// rotationStatus describes the roots, the phase and who still depends on
// the old root.
func (s *Server) rotationStatus(ctx context.Context, wait string) (*fedpb.StatusResponse, error) {
	phase := s.rotationPhase()
	resp := &fedpb.StatusResponse{Name: s.set.td.Name(), RotationPhase: phase, Kind: "trust_domain"}
	if b := s.bundle.Load(); b != nil {
		resp.Generation, _ = b.SequenceNumber()
	}
	add := func(c *x509.Certificate, state string) {
		if c != nil {
			resp.Roots = append(resp.Roots, &fedpb.RootStatus{Certificate: c.Raw, SubjectKeyId: hex.EncodeToString(c.SubjectKeyId), ExpiresAt: c.NotAfter.Unix(), State: state})
		}
	}
	if s.auth.FromCACerts() {
		for _, r := range s.auth.CA().Roots() {
			add(r, "active")
		}
	} else {
		add(s.auth.CA().Certificate(), "active")
		next, err := s.auth.Next()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		add(next, "published")
		prev, err := s.auth.Previous()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		add(prev, "retiring")
		if wait == "" {
			switch phase {
			case phasePublishing:
				wait = s.publishingWait(ctx, next)
			case phaseRetiring:
				wait = s.retiringWait(ctx, prev)
			}
		}
	}
	resp.WaitingFor = wait
	self := &fedpb.MemberStatus{TrustDomain: s.set.td.Name(), Address: s.grpcLn.Addr().String(), Joined: true,
		RootSubjectKeyId: hex.EncodeToString(s.auth.CA().RootKeyID()), LastContact: s.clock().Unix()}
	self.Agents, self.AgentsCurrent = s.watchers.counts(s.view.Load())
	if live, err := s.store.LiveIssuedByRoot(ctx, s.clock()); err == nil {
		self.LiveSvidsByRoot = live
	}
	resp.Members = []*fedpb.MemberStatus{self}
	return resp, nil
}
