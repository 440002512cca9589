package inspect

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// DefaultTimeout bounds a connection or a bundle fetch when the caller gives
// no timeout.
const DefaultTimeout = 10 * time.Second

// Bundle describes a SPIFFE trust bundle.
type Bundle struct {
	Source          string         `json:"source"` // the file or URL it was read from
	Format          bundle.Format  `json:"format"`
	TrustDomain     string         `json:"trust_domain"`
	TrustDomainFrom string         `json:"trust_domain_from"` // TrustDomainGiven or TrustDomainInferred
	Sequence        *uint64        `json:"spiffe_sequence,omitempty"`
	RefreshHint     *int64         `json:"spiffe_refresh_hint,omitempty"` // seconds, as in the document
	X509Authorities []Certificate  `json:"x509_authorities"`
	JWTAuthorities  []JWTAuthority `json:"jwt_authorities,omitempty"`
}

// Where a bundle's trust domain came from.
const (
	TrustDomainGiven    = "given"
	TrustDomainInferred = "inferred from the CA certificates' URI SAN"
)

// JWTAuthority describes one JWT-SVID signing key of a bundle.
type JWTAuthority struct {
	KeyID string `json:"kid"`
	Key   string `json:"key"` // algorithm and size, e.g. "ECDSA P-256"
}

// ErrUnknownTrustDomain is wrapped by DescribeBundle's error when the trust
// domain was not given and cannot be inferred; the caller should ask for it.
var ErrUnknownTrustDomain = errors.New("the trust domain of the bundle is unknown")

// DescribeBundle parses a bundle document (SPIFFE JSON or PEM, detected) read
// from source and describes it, judging validity at now. td is the trust
// domain the bundle is for; if zero, it is inferred from the CA certificates'
// spiffe://<td> URI SANs when every one carries one and they all agree.
func DescribeBundle(source string, data []byte, td spiffeid.TrustDomain, now time.Time) (*Bundle, error) {
	from := TrustDomainGiven
	if td.IsZero() {
		certs, err := authoritiesOf(data)
		if err != nil {
			return nil, fmt.Errorf("inspect: %s: %w", source, err)
		}
		td, err = InferTrustDomain(certs)
		if err != nil {
			return nil, fmt.Errorf("inspect: cannot tell which trust domain %s is for: %w", source, err)
		}
		from = TrustDomainInferred
	}
	b, err := bundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("inspect: %s: %w", source, err)
	}
	d := &Bundle{
		Source:          source,
		Format:          bundle.Detect(data),
		TrustDomain:     td.Name(),
		TrustDomainFrom: from,
		X509Authorities: Describe(b.X509Authorities(), now),
	}
	if seq, ok := b.SequenceNumber(); ok {
		d.Sequence = &seq
	}
	if hint, ok := b.RefreshHint(); ok {
		secs := int64(hint / time.Second)
		d.RefreshHint = &secs
	}
	jwt := b.JWTAuthorities()
	for _, kid := range slices.Sorted(maps.Keys(jwt)) {
		d.JWTAuthorities = append(d.JWTAuthorities, JWTAuthority{KeyID: kid, Key: pki.DescribeKey(jwt[kid])})
	}
	return d, nil
}

// InferTrustDomain returns the trust domain that every one of certs names as
// its spiffe://<td> URI SAN, and an error wrapping ErrUnknownTrustDomain when
// there are none, one carries no such SAN, or two disagree.
func InferTrustDomain(certs []*x509.Certificate) (spiffeid.TrustDomain, error) {
	if len(certs) == 0 {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: it holds no CA certificates to infer it from", ErrUnknownTrustDomain)
	}
	var td spiffeid.TrustDomain
	for i, c := range certs {
		id, err := spiffeIDOf(c)
		if err != nil {
			return spiffeid.TrustDomain{}, fmt.Errorf("%w: CA certificate %d (%s) has no single spiffe:// URI SAN (%v)", ErrUnknownTrustDomain, i+1, certName(c), err)
		}
		switch {
		case td.IsZero():
			td = id.TrustDomain()
		case td != id.TrustDomain():
			return spiffeid.TrustDomain{}, fmt.Errorf("%w: its CA certificates name both %q and %q", ErrUnknownTrustDomain, td.Name(), id.TrustDomain().Name())
		}
	}
	return td, nil
}

// unnamed stands in for the trust domain when a bundle is parsed only to see
// its certificates: the SPIFFE JSON format does not carry the trust domain.
var unnamed = spiffeid.RequireTrustDomainFromString("unnamed.invalid")

// authoritiesOf returns the X.509 authorities of a bundle document without
// knowing whose bundle it is.
func authoritiesOf(data []byte) ([]*x509.Certificate, error) {
	if len(data) > bundle.MaxBytes {
		return nil, fmt.Errorf("bundle: %w of %d bytes", pemfile.ErrTooLarge, bundle.MaxBytes)
	}
	if bundle.Detect(data) == bundle.FormatPEM {
		certs, err := pemfile.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		return certs, nil
	}
	b, err := spiffebundle.Parse(unnamed, data)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	return b.X509Authorities(), nil
}

// FetchConfig says where and how to fetch a bundle from a SPIFFE bundle
// endpoint.
type FetchConfig struct {
	URL string // https:// only
	// Timeout bounds the whole fetch; DefaultTimeout if zero.
	Timeout time.Duration
	// EndpointID and EndpointBundle select the https_spiffe profile: the
	// server must present an X.509-SVID of exactly EndpointID that verifies
	// with EndpointBundle, the bundle of EndpointID's trust domain. Leaving
	// both unset selects https_web: the server's certificate must verify for
	// the URL's host with Roots.
	EndpointID     spiffeid.ID
	EndpointBundle x509bundle.Source
	// Roots are the web PKI roots for https_web; the system's if nil.
	Roots *x509.CertPool
}

// FetchBundle fetches a bundle document from a SPIFFE bundle endpoint. The
// body is bounded by bundle.MaxBytes; redirects must stay on https.
func FetchBundle(ctx context.Context, cfg FetchConfig) ([]byte, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("inspect: bundle endpoint %q is not an https:// URL", cfg.URL)
	}
	if cfg.EndpointID.IsZero() != (cfg.EndpointBundle == nil) {
		return nil, errors.New("inspect: the https_spiffe profile needs both the endpoint's SPIFFE ID and its trust domain's bundle")
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var tlsConf *tls.Config
	if cfg.EndpointBundle != nil {
		tlsConf = tlsconfig.TLSClientConfig(cfg.EndpointBundle, tlsconfig.AuthorizeID(cfg.EndpointID))
	} else {
		tlsConf = &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12}
	}
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: timeout,
		ForceAttemptHTTP2:   true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport: transport,
		Timeout:   timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to %s leaves https", req.URL)
			}
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("inspect: fetch bundle: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("inspect: fetch bundle: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("inspect: fetch bundle from %s: the server answered %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, bundle.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("inspect: fetch bundle from %s: %w", u, err)
	}
	if len(data) > bundle.MaxBytes {
		return nil, fmt.Errorf("inspect: fetch bundle from %s: %w of %d bytes", u, pemfile.ErrTooLarge, bundle.MaxBytes)
	}
	return data, nil
}
