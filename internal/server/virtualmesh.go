package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/federation/jwtkeys"
	"github.com/meshfed/meshfed/internal/federation/member"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/store"
)

// maxTokenFileBytes bounds a join token file: a token is under 100 bytes.
const maxTokenFileBytes = 4 << 10

// startVirtualMesh checks that a VirtualMesh member can be made when one is
// configured. The member keeps the intermediate in the directory the
// authority watches (authority.ModeVirtualMesh), so a new intermediate is
// picked up without a restart.
func (s *Server) startVirtualMesh() error {
	if s.set.federation.vm == nil {
		return nil
	}
	m, err := s.newMember()
	if err != nil {
		return err
	}
	s.member = m
	return nil
}

// newMember makes the member. It reads the join token file whenever it
// needs a token: an operator may write it after the server started (or, for
// a member removed from the VirtualMesh and added back, write a new one), and
// the next attempt to join uses it.
func (s *Server) newMember() (*member.Member, error) {
	vm := s.set.federation.vm
	return member.New(member.Config{
		TrustDomain:      s.set.td,
		Controller:       vm.Controller,
		ControllerCAFile: vm.ControllerCAFile,
		TokenSource:      func() (string, error) { return readJoinToken(vm.JoinTokenFile) },
		Dir:              s.set.federation.vmDir,
		KeyType:          s.set.keyType,
		Address:          s.grpcLn.Addr().String(),
		Clock:            s.clock,
		Logger:           s.log.With("component", "virtual_mesh"),
		Report:           s.virtualMeshReport,
		OnState:          s.applyVirtualMesh,
		// Often enough that a rotation phase waiting on this member's
		// live certificates or agents moves on within seconds.
		ReportInterval: virtualMeshReportInterval,
	})
}

// readJoinToken reads a join token file; a file that is not there (or no
// file configured) is no token yet.
func readJoinToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := pemfile.ReadFile(path, maxTokenFileBytes)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", nil // needed only to join; the member says so when it is
	case err != nil:
		return "", fmt.Errorf("server: federation.virtual_mesh.join_token_file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// virtualMeshReportInterval is how often the member reports to the
// controller besides after each change.
const virtualMeshReportInterval = 5 * time.Second

// runVirtualMesh runs the member until ctx ends. A member that cannot start
// (the controller unreachable for the first join, no token yet) is made
// again, with the token file read again, and retried with backoff while the
// server goes on signing with the CA it has: a VirtualMesh problem never
// takes the trust domain down.
func (s *Server) runVirtualMesh(ctx context.Context) error {
	m := s.member
	wait := time.Second
	for {
		err := m.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Error("VirtualMesh membership stopped; signing with the CA in use and retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
		if next, err := s.newMember(); err != nil {
			s.log.Error("VirtualMesh member", "error", err)
		} else {
			m = next
		}
	}
}

// applyVirtualMesh installs a federation state: the intermediate the member
// wrote (the authority reloads it), the shared roots in this domain's
// bundle, and the other members' trust domains as federated bundles every
// workload gets.
func (s *Server) applyVirtualMesh(ctx context.Context, st member.State) error {
	if _, err := s.auth.Reload(); err != nil {
		return fmt.Errorf("server: the VirtualMesh intermediate does not load: %w", err)
	}
	s.vmState.Store(&st)
	s.localGen.Add(1)
	if err := s.refresh(ctx); err != nil {
		return err
	}
	s.log.Info("VirtualMesh state applied", "virtual_mesh", st.Name, "generation", st.Generation,
		"roots", len(st.Roots), "members", len(st.TrustDomains), "rotation_phase", st.Phase)
	return nil
}

// virtualMeshReport tells the controller who depends on which root.
func (s *Server) virtualMeshReport() member.Report {
	r := member.Report{}
	if live, err := s.store.LiveIssuedByRoot(context.Background(), s.clock()); err == nil {
		r.LiveSVIDsByRoot = live
	} else {
		s.log.Error("counting live SVIDs for the VirtualMesh report failed", "error", err)
	}
	r.Agents, r.AgentsCurrent = s.watchers.counts(s.view.Load())
	r.JWTAuthorities = s.jwtKeysForMembers(context.Background())
	return r
}

// jwtKeysForMembers are this trust domain's unexpired JWT-SVID signing keys,
// which the controller passes on so that the other members validate this
// domain's JWT-SVIDs.
// When the store cannot be read it reports the keys it reported last, so
// that a passing store error does not withdraw them from every member.
func (s *Server) jwtKeysForMembers(ctx context.Context) []jwtkeys.Key {
	auths, err := s.store.LocalAuthorities(ctx)
	if err != nil {
		s.log.Error("reading the JWT-SVID keys for the VirtualMesh report failed; reporting the last ones read", "error", err)
		if last := s.reportedJWTKeys.Load(); last != nil {
			return *last
		}
		return nil
	}
	now := s.clock()
	var out []jwtkeys.Key
	for _, a := range auths.JWT {
		if !now.Before(a.NotAfter) {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(a.PublicKeyDER)
		if err != nil {
			continue // buildBundle logs it
		}
		out = append(out, jwtkeys.Key{ID: a.KeyID, Public: pub, DER: a.PublicKeyDER, ExpiresAt: a.NotAfter})
	}
	s.reportedJWTKeys.Store(&out)
	return out
}

// virtualMeshBundles are the federated bundles of the other members of this
// domain's VirtualMesh: the shared roots and the member's unexpired JWT-SVID
// keys, for every workload; or, with
// enforceAccessControl, only for the workloads whose entries federate with
// that member's trust domain. Without the bundle a workload cannot verify a
// peer of that domain, so cross-mesh traffic is denied unless an entry
// allows it.
func (s *Server) virtualMeshBundles() ([]*pb.Bundle, error) {
	st := s.vmState.Load()
	if st == nil {
		return nil, nil
	}
	var out []*pb.Bundle
	now := s.clock()
	for _, td := range st.TrustDomains {
		if td == s.set.td {
			continue
		}
		b, err := bundle.FromCertificates(td, st.Roots)
		if err != nil {
			return nil, err
		}
		for _, k := range st.JWTAuthorities[td] {
			if !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt) {
				continue
			}
			if err := b.AddJWTAuthority(k.ID, k.Public); err != nil {
				return nil, err
			}
		}
		b.SetSequenceNumber(st.Generation)
		data, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		out = append(out, &pb.Bundle{TrustDomain: td.Name(), SpiffeBundle: data, Sequence: st.Generation, AllWorkloads: !st.EnforceAccessControl})
	}
	return out, nil
}

// retireSelfSignedRoot removes the self-signed root this server signed with
// before it joined a VirtualMesh from the published bundle, once nothing
// signed under it is alive. Its key stays in the data directory.
func (s *Server) retireSelfSignedRoot(ctx context.Context) {
	if s.set.federation.vm == nil || !s.auth.FromCACerts() {
		return
	}
	root, err := s.auth.SelfSignedRoot()
	if err != nil || root == nil {
		return
	}
	if !slices.ContainsFunc(s.bundle.Load().X509Authorities(), root.Equal) {
		return
	}
	if wait := s.retiringWait(ctx, root); wait != "" {
		return
	}
	if err := s.store.RemoveX509Authority(ctx, root.Raw); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("retiring the self-signed root from the bundle failed; will retry", "error", err)
		return
	}
	s.log.Info("the self-signed root left the bundle: this domain signs under the VirtualMesh's shared root", "subject", root.Subject.CommonName)
	s.changed(ctx)
}
