package fetcher_test

import (
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/federation/fetcher"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestPeerValidate(t *testing.T) {
	const u = "https://west.example:8443/bundle"
	for _, tc := range []struct {
		name    string
		peer    fetcher.Peer
		wantErr string
	}{
		{"https_web", fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSWeb}, ""},
		{"https_spiffe", fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: westServer}, ""},
		{
			"https_spiffe served by another trust domain",
			fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: spiffeid.RequireFromString("spiffe://east.example/bundle-server")},
			"",
		},
		{
			"no trust domain",
			fetcher.Peer{URL: u, Profile: fetcher.ProfileHTTPSWeb},
			"fetcher: a federation peer has no trust_domain",
		},
		{
			"no URL",
			fetcher.Peer{TrustDomain: west, Profile: fetcher.ProfileHTTPSWeb},
			"fetcher: west.example: bundle_endpoint_url is required",
		},
		{
			"not a URL",
			fetcher.Peer{TrustDomain: west, URL: "https://west example/", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "https://west example/" is not a URL: parse "https://west example/": invalid character " " in host name`,
		},
		{
			"http",
			fetcher.Peer{TrustDomain: west, URL: "http://west.example/", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "http://west.example/" is not an https URL; both profiles fetch over TLS`,
		},
		{
			"relative",
			fetcher.Peer{TrustDomain: west, URL: "/bundle", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "/bundle" is not an https URL; both profiles fetch over TLS`,
		},
		{
			"no host",
			fetcher.Peer{TrustDomain: west, URL: "https://:8443/bundle", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "https://:8443/bundle" has no host`,
		},
		{
			"opaque",
			fetcher.Peer{TrustDomain: west, URL: "https:west.example", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "https:west.example" has no host`,
		},
		{
			"user information",
			fetcher.Peer{TrustDomain: west, URL: "https://admin:secret@west.example/", Profile: fetcher.ProfileHTTPSWeb},
			`fetcher: west.example: bundle_endpoint_url "https://admin:secret@west.example/" carries user information; a bundle endpoint takes no client authentication (SPIFFE Federation §5.2)`,
		},
		{
			"no profile",
			fetcher.Peer{TrustDomain: west, URL: u},
			"fetcher: west.example: bundle_endpoint_profile is required; use https_web or https_spiffe",
		},
		{
			"unknown profile",
			fetcher.Peer{TrustDomain: west, URL: u, Profile: "https"},
			`fetcher: west.example: bundle_endpoint_profile "https" is unknown; use https_web or https_spiffe`,
		},
		{
			"https_spiffe without endpoint ID",
			fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSSPIFFE},
			"fetcher: west.example: bundle_endpoint_profile https_spiffe needs endpoint_spiffe_id, the SPIFFE ID the endpoint's certificate must carry",
		},
		{
			"https_spiffe with a trust domain ID",
			fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSSPIFFE, EndpointID: west.ID()},
			"fetcher: west.example: endpoint_spiffe_id spiffe://west.example names a trust domain, not the workload serving the endpoint; give its full SPIFFE ID",
		},
		{
			"https_web with endpoint ID",
			fetcher.Peer{TrustDomain: west, URL: u, Profile: fetcher.ProfileHTTPSWeb, EndpointID: westServer},
			"fetcher: west.example: endpoint_spiffe_id is for bundle_endpoint_profile https_spiffe only; https_web checks the URL's host name",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errText(tc.peer.Validate()); got != tc.wantErr {
				t.Fatalf("error:\n got %s\nwant %s", got, tc.wantErr)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	peer := fetcher.Peer{TrustDomain: west, URL: "https://west.example/", Profile: fetcher.ProfileHTTPSWeb}
	for _, tc := range []struct {
		name    string
		cfg     fetcher.Config
		wantErr string
	}{
		{"no store", fetcher.Config{Peers: []fetcher.Peer{peer}}, "fetcher: a store is required"},
		{"no peers", fetcher.Config{Store: newStore()}, ""},
		{"invalid peer", fetcher.Config{Store: newStore(), Peers: []fetcher.Peer{{TrustDomain: west}}}, "fetcher: west.example: bundle_endpoint_url is required"},
		{"peer twice", fetcher.Config{Store: newStore(), Peers: []fetcher.Peer{peer, peer}}, "fetcher: west.example: configured twice; give one bundle endpoint per trust domain"},
		{"negative timeout", fetcher.Config{Store: newStore(), Timeout: -time.Second}, "fetcher: Timeout is negative (-1s)"},
		{"negative hint", fetcher.Config{Store: newStore(), DefaultRefreshHint: -time.Second}, "fetcher: DefaultRefreshHint is negative (-1s)"},
		{"min over max", fetcher.Config{Store: newStore(), MinRefresh: 2 * time.Hour}, "fetcher: MinRefresh 2h0m0s is longer than MaxRefresh 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fetcher.New(tc.cfg)
			if got := errText(err); got != tc.wantErr {
				t.Fatalf("error:\n got %s\nwant %s", got, tc.wantErr)
			}
		})
	}
}
