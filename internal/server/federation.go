package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// federationSettings are the federation keys, validated.
type federationSettings struct {
	peers    []fetcher.Peer
	webRoots string
	vm       *VirtualMeshConfig
	vmDir    string
}

// validateFederation checks the federation section; dataDir is absolute.
func (c FederationConfig) validate(own spiffeid.TrustDomain, dataDir string) (federationSettings, error) {
	var f federationSettings
	seen := map[spiffeid.TrustDomain]bool{}
	for i, fw := range c.FederatesWith {
		td, err := spiffeid.TrustDomainFromString(fw.TrustDomain)
		if err != nil {
			return f, fmt.Errorf("server: federation.federates_with[%d]: trust_domain %q: %w", i, fw.TrustDomain, err)
		}
		if td == own {
			return f, fmt.Errorf("server: federation.federates_with[%d]: %s is this server's own trust domain", i, td.Name())
		}
		if seen[td] {
			return f, fmt.Errorf("server: federation.federates_with[%d]: %s is listed twice", i, td.Name())
		}
		seen[td] = true
		p := fetcher.Peer{TrustDomain: td, URL: fw.BundleEndpointURL, Profile: fetcher.Profile(fw.BundleEndpointProfile)}
		if p.Profile == "" {
			p.Profile = fetcher.ProfileHTTPSSPIFFE
		}
		if fw.EndpointSPIFFEID != "" {
			if p.EndpointID, err = spiffeid.FromString(fw.EndpointSPIFFEID); err != nil {
				return f, fmt.Errorf("server: federation.federates_with[%d] (%s): endpoint_spiffe_id %q: %w", i, td.Name(), fw.EndpointSPIFFEID, err)
			}
		}
		if err := p.Validate(); err != nil {
			return f, fmt.Errorf("server: federation.federates_with[%d]: %w", i, err)
		}
		f.peers = append(f.peers, p)
	}
	f.webRoots = c.WebRootsFile
	if vm := c.VirtualMesh; vm != nil {
		if vm.Controller == "" {
			return f, errors.New("server: federation.virtual_mesh.controller (host:port of `meshfed federation run`) is required")
		}
		if vm.ControllerCAFile == "" {
			return f, errors.New("server: federation.virtual_mesh.controller_ca_file is required: the shared root (root-cert.pem in the controller's data directory) that verifies the controller")
		}
		f.vm = vm
		f.vmDir = vm.Dir
		if f.vmDir == "" {
			f.vmDir = filepath.Join(dataDir, "virtualmesh")
		}
	}
	return f, nil
}

// startFederation builds the bundle fetcher, with no peers too: a reload
// (ReloadFederation) may add some.
func (s *Server) startFederation() error {
	f := s.set.federation
	roots, err := webRootPool(f.webRoots)
	if err != nil {
		return err
	}
	r, err := fetcher.New(fetcher.Config{
		Peers:    f.peers,
		Store:    fetcherStore{s},
		RootCAs:  roots,
		Clock:    s.clock,
		Logger:   s.log,
		OnChange: func(td spiffeid.TrustDomain) { s.changed(context.Background()) },
	})
	if err != nil {
		return err
	}
	s.fetcher = r
	return nil
}

// webRootPool reads federation.https_web_roots_file; nil (the system's
// roots) when path is "".
func webRootPool(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	certs, err := pemfile.ReadCertificates(path)
	if err != nil {
		return nil, fmt.Errorf("server: federation.https_web_roots_file: %w", err)
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c)
	}
	return roots, nil
}

// ReloadFederation applies federation.federates_with and
// federation.https_web_roots_file of fc, as a restart with them would,
// without one: a new peer, or one whose endpoint changed, is fetched at
// once; a removed one is no longer fetched, and its bundle stays trusted
// until 'meshfed bundle delete' (as after a restart). federation.virtual_mesh
// is read at start only. A refused section changes nothing.
func (s *Server) ReloadFederation(fc FederationConfig) error {
	f, err := fc.validate(s.set.td, s.set.dataDir)
	if err != nil {
		return err
	}
	roots, err := webRootPool(f.webRoots)
	if err != nil {
		return err
	}
	added, changed, removed, err := s.fetcher.SetPeers(f.peers, roots)
	if err != nil {
		return err
	}
	names := func(tds []spiffeid.TrustDomain) string {
		out := make([]string, len(tds))
		for i, td := range tds {
			out[i] = td.Name()
		}
		return strings.Join(out, ",")
	}
	s.log.Info("federation peers reloaded", "peers", len(f.peers), "added", names(added), "changed", names(changed), "removed", names(removed))
	for _, td := range removed {
		s.log.Warn("a federation peer was removed: its bundle is no longer fetched, and stays trusted until 'meshfed bundle delete TD'", "trust_domain", td.Name())
	}
	if !reflect.DeepEqual(f.vm, s.set.federation.vm) {
		s.log.Warn("federation.virtual_mesh differs from the one in use; it is read at start only: restart to change it")
	}
	return nil
}

// fetcherStore adapts the store to the fetcher: foreign bundles by trust
// domain, and this domain's own bundle when a peer's endpoint carries an SVID
// of this trust domain.
type fetcherStore struct{ s *Server }

func (f fetcherStore) FederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td == f.s.set.td {
		return f.s.bundle.Load(), nil
	}
	b, err := f.s.store.FederatedBundle(ctx, td)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return bundle.Parse(td, b.JSON)
}

func (f fetcherStore) SetFederatedBundle(ctx context.Context, b *spiffebundle.Bundle) error {
	if b.TrustDomain() == f.s.set.td {
		return fmt.Errorf("server: refusing to store a fetched bundle for this server's own trust domain %s", b.TrustDomain().Name())
	}
	data, err := b.Marshal()
	if err != nil {
		return err
	}
	return f.s.store.SetFederatedBundle(ctx, b.TrustDomain(), data)
}

// peerMessages reports the fetcher's peers.
func (s *Server) peerMessages() []*pb.FederationPeer {
	if s.fetcher == nil {
		return nil
	}
	var out []*pb.FederationPeer
	for _, st := range s.fetcher.Status() {
		out = append(out, peerMessage(st))
	}
	return out
}

func peerMessage(st fetcher.PeerStatus) *pb.FederationPeer {
	m := &pb.FederationPeer{
		TrustDomain: st.TrustDomain.Name(), BundleEndpointUrl: st.URL, BundleEndpointProfile: string(st.Profile),
		LastAttempt: unix(st.LastAttempt), LastSuccess: unix(st.LastSuccess), LastError: st.LastError,
		Failures: int64(st.Failures), NextRefresh: unix(st.NextRefresh),
		RefreshHintSeconds: int64(st.RefreshHint / time.Second), X509Authorities: int64(st.X509Authorities),
		JwtAuthorities: int64(st.JWTAuthorities), EarliestExpiry: unix(st.EarliestExpiry), Source: "federates_with",
		Push: st.Push,
	}
	if !st.EndpointID.IsZero() {
		m.EndpointSpiffeId = st.EndpointID.String()
	}
	if st.Sequence != nil {
		m.Sequence = *st.Sequence
	}
	return m
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (a *adminService) RefreshFederatedBundle(ctx context.Context, req *pb.RefreshFederatedBundleRequest) (*pb.FederationPeer, error) {
	td, err := spiffeid.TrustDomainFromString(req.GetTrustDomain())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: trust_domain %q: %v", req.GetTrustDomain(), err)
	}
	if len(a.s.fetcher.Status()) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "server: %s has no bundle endpoint configured (federation.federates_with is empty)", td.Name())
	}
	refreshErr := a.s.fetcher.Refresh(ctx, td)
	for _, st := range a.s.fetcher.Status() {
		if st.TrustDomain == td {
			if refreshErr != nil {
				return nil, status.Errorf(codes.Unavailable, "server: refreshing the bundle of %s: %v", td.Name(), refreshErr)
			}
			return peerMessage(st), nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "server: %s is not in federation.federates_with", td.Name())
}
