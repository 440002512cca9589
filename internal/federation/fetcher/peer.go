package fetcher

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Profile is a SPIFFE bundle endpoint profile (SPIFFE Federation §5.2): how
// the endpoint is authenticated.
type Profile string

// Endpoint profiles.
const (
	// ProfileHTTPSWeb checks the endpoint's certificate against Web PKI roots
	// and the host name of the URL.
	ProfileHTTPSWeb Profile = "https_web"
	// ProfileHTTPSSPIFFE checks that the endpoint presents an X.509-SVID of
	// the configured SPIFFE ID, verified against the stored bundle of that
	// ID's trust domain.
	ProfileHTTPSSPIFFE Profile = "https_spiffe"
)

// Peer is a foreign trust domain and the bundle endpoint its bundle is
// fetched from (SPIFFE Federation §5.1). The field names in errors are the
// configuration keys SPIRE uses for the same parameters.
type Peer struct {
	// TrustDomain is the trust domain the fetched bundle is stored for. It
	// is never inferred from the URL (SPIFFE Federation §7.2).
	TrustDomain spiffeid.TrustDomain
	// URL is the bundle endpoint: https, without user information.
	URL string
	// Profile says how the endpoint is authenticated.
	Profile Profile
	// EndpointID is the SPIFFE ID the endpoint's X.509-SVID must carry
	// (https_spiffe only). It may be in another trust domain than
	// TrustDomain; the bundle of its trust domain must be in the Store.
	EndpointID spiffeid.ID
}

// Validate checks p and returns an error naming the field that is wrong.
func (p Peer) Validate() error {
	if p.TrustDomain.IsZero() {
		return errors.New("fetcher: a federation peer has no trust_domain")
	}
	td := p.TrustDomain.Name()
	if p.URL == "" {
		return fmt.Errorf("fetcher: %s: bundle_endpoint_url is required", td)
	}
	u, err := url.Parse(p.URL)
	if err != nil {
		return fmt.Errorf("fetcher: %s: bundle_endpoint_url %q is not a URL: %w", td, p.URL, err)
	}
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("fetcher: %s: bundle_endpoint_url %q is not an https URL; both profiles fetch over TLS", td, p.URL)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("fetcher: %s: bundle_endpoint_url %q has no host", td, p.URL)
	case u.User != nil:
		return fmt.Errorf("fetcher: %s: bundle_endpoint_url %q carries user information; a bundle endpoint takes no client authentication (SPIFFE Federation §5.2)", td, p.URL)
	}
	switch p.Profile {
	case ProfileHTTPSWeb:
		if !p.EndpointID.IsZero() {
			return fmt.Errorf("fetcher: %s: endpoint_spiffe_id is for bundle_endpoint_profile %s only; %s checks the URL's host name", td, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
		}
	case ProfileHTTPSSPIFFE:
		if p.EndpointID.IsZero() {
			return fmt.Errorf("fetcher: %s: bundle_endpoint_profile %s needs endpoint_spiffe_id, the SPIFFE ID the endpoint's certificate must carry", td, ProfileHTTPSSPIFFE)
		}
		if p.EndpointID.Path() == "" {
			return fmt.Errorf("fetcher: %s: endpoint_spiffe_id %s names a trust domain, not the workload serving the endpoint; give its full SPIFFE ID", td, p.EndpointID)
		}
	case "":
		return fmt.Errorf("fetcher: %s: bundle_endpoint_profile is required; use %s or %s", td, ProfileHTTPSWeb, ProfileHTTPSSPIFFE)
	default:
		return fmt.Errorf("fetcher: %s: bundle_endpoint_profile %q is unknown; use %s or %s", td, p.Profile, ProfileHTTPSWeb, ProfileHTTPSSPIFFE)
	}
	return nil
}
