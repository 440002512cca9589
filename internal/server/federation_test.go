package server

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/serverv1"
	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

// Bundle federation between two servers over the https_spiffe profile: the
// first fetch needs the peer's bundle set out of band, later fetches are
// authenticated with the stored bundle, and the fetched bundle is the one the
// peer publishes.
func TestFederatesWith(t *testing.T) {
	west := start(t, func(c *Config) { c.TrustDomain = "west.example" })
	westURL := fmt.Sprintf("https://%s", west.srv.Addrs().BundleListen)
	h := start(t, func(c *Config) {
		c.Federation.FederatesWith = []FederatesWithConfig{{
			TrustDomain: "west.example", BundleEndpointURL: westURL,
			BundleEndpointProfile: "https_spiffe", EndpointSPIFFEID: "spiffe://west.example/meshfed/server",
		}}
	})
	ctx := context.Background()
	admin, westAdmin := h.admin(t), west.admin(t)

	_, err := admin.RefreshFederatedBundle(ctx, &pb.RefreshFederatedBundleRequest{TrustDomain: "west.example"})
	wantStatus(t, err, codes.Unavailable, "meshfed bundle set")
	_, err = admin.RefreshFederatedBundle(ctx, &pb.RefreshFederatedBundleRequest{TrustDomain: "north.example"})
	wantStatus(t, err, codes.NotFound, "north.example is not in federation.federates_with")

	published, err := westAdmin.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetFederatedBundle(ctx, &pb.Bundle{TrustDomain: "west.example", SpiffeBundle: published.GetSpiffeBundle()}); err != nil {
		t.Fatal(err)
	}
	peer, err := admin.RefreshFederatedBundle(ctx, &pb.RefreshFederatedBundleRequest{TrustDomain: "west.example"})
	if err != nil {
		t.Fatal(err)
	}
	if peer.GetLastSuccess() == 0 || peer.GetLastError() != "" || peer.GetX509Authorities() != 1 || peer.GetBundleEndpointUrl() != westURL ||
		peer.GetEndpointSpiffeId() != "spiffe://west.example/meshfed/server" || peer.GetSource() != "federates_with" {
		t.Fatalf("peer status %+v", peer)
	}
	list, err := admin.ListFederatedBundles(ctx, &pb.ListFederatedBundlesRequest{})
	if err != nil || len(list.GetBundles()) != 1 || len(list.GetPeers()) != 1 {
		t.Fatalf("ListFederatedBundles: %v, %v", list, err)
	}
	td := spiffeid.RequireTrustDomainFromString("west.example")
	got, err := bundle.Parse(td, list.GetBundles()[0].GetSpiffeBundle())
	if err != nil {
		t.Fatal(err)
	}
	want := west.srv.bundle.Load()
	if !got.X509Bundle().Equal(want.X509Bundle()) || !got.JWTBundle().Equal(want.JWTBundle()) {
		t.Error("the fetched bundle is not the one west publishes")
	}

	// The metrics say the same.
	body := h.metricsText(t)
	for _, want := range []string{
		`meshfed_server_federated_bundle_failures{trust_domain="west.example"} 0`,
		`meshfed_server_root_rotation_phase{phase="stable"} 1`,
		`meshfed_server_root_rotation_phase{phase="publishing"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if !regexp.MustCompile(`meshfed_server_federated_bundle_last_success_timestamp_seconds\{trust_domain="west.example"\} [1-9]`).MatchString(body) {
		t.Error("metrics show no successful fetch of west.example")
	}

	// A peer whose endpoint presents another identity is refused and the
	// last good bundle stays.
	h2 := start(t, func(c *Config) {
		c.Federation.FederatesWith = []FederatesWithConfig{{
			TrustDomain: "west.example", BundleEndpointURL: westURL,
			BundleEndpointProfile: "https_spiffe", EndpointSPIFFEID: "spiffe://west.example/someone-else",
		}}
	})
	admin2 := h2.admin(t)
	if _, err := admin2.SetFederatedBundle(ctx, &pb.Bundle{TrustDomain: "west.example", SpiffeBundle: published.GetSpiffeBundle()}); err != nil {
		t.Fatal(err)
	}
	_, err = admin2.RefreshFederatedBundle(ctx, &pb.RefreshFederatedBundleRequest{TrustDomain: "west.example"})
	if err == nil || !strings.Contains(err.Error(), "spiffe://west.example/someone-else") {
		t.Errorf("wrong endpoint ID: %v", err)
	}
	list2, err := admin2.ListFederatedBundles(ctx, &pb.ListFederatedBundlesRequest{})
	if err != nil || len(list2.GetBundles()) != 1 || list2.GetPeers()[0].GetLastError() == "" {
		t.Errorf("after a refused fetch: %v, %v", list2, err)
	}
}
