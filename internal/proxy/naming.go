package proxy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SecureNaming is Istio's secure naming information: for each service name,
// the SPIFFE IDs allowed to run it. A client dialling a service refuses a
// server whose ID is not among them, even one with a valid SVID of a trusted
// trust domain (the seed's test-team identity impersonating datastore).
//
// An entry is either an exact SPIFFE ID, "spiffe://td/ns/db/sa/infra-team",
// or every ID of one trust domain, written "spiffe://td/*". A service with no
// entry admits no server.
type SecureNaming struct {
	services map[string][]namePattern
}

// namePattern is an exact ID, or a whole trust domain when id is zero.
type namePattern struct {
	id spiffeid.ID
	td spiffeid.TrustDomain
}

func (p namePattern) matches(id spiffeid.ID) bool {
	if p.id.IsZero() {
		return id.MemberOf(p.td)
	}
	return id == p.id
}

func (p namePattern) String() string {
	if p.id.IsZero() {
		return p.td.IDString() + "/*"
	}
	return p.id.String()
}

// NewSecureNaming parses a map from service name to allowed IDs in the syntax
// of SecureNaming.
func NewSecureNaming(services map[string][]string) (*SecureNaming, error) {
	n := &SecureNaming{services: make(map[string][]namePattern, len(services))}
	for svc, entries := range services {
		if svc == "" {
			return nil, errors.New("proxy: secure naming: empty service name")
		}
		if len(entries) == 0 {
			return nil, fmt.Errorf("proxy: secure naming: service %q lists no SPIFFE IDs; list the IDs allowed to run it, or remove it", svc)
		}
		for _, e := range entries {
			p, err := parseNamePattern(e)
			if err != nil {
				return nil, fmt.Errorf("proxy: secure naming: service %q: %w", svc, err)
			}
			n.services[svc] = append(n.services[svc], p)
		}
	}
	return n, nil
}

func parseNamePattern(s string) (namePattern, error) {
	if tdID, ok := strings.CutSuffix(s, "/*"); ok {
		td, err := spiffeid.TrustDomainFromString(tdID)
		if err != nil || !strings.HasPrefix(tdID, "spiffe://") || td.IDString() != tdID {
			return namePattern{}, fmt.Errorf("%q: want spiffe://<trust domain>/* for a whole trust domain", s)
		}
		return namePattern{td: td}, nil
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return namePattern{}, fmt.Errorf("%q is not a SPIFFE ID: %w", s, err)
	}
	if id.Path() == "" {
		return namePattern{}, fmt.Errorf("%q names a trust domain, not a workload; write %s/* to allow all of it", s, s)
	}
	return namePattern{id: id, td: id.TrustDomain()}, nil
}

// Check returns nil if id may run service, and otherwise an error that names
// both.
func (n *SecureNaming) Check(service string, id spiffeid.ID) error {
	patterns, ok := n.services[service]
	if !ok {
		return fmt.Errorf("proxy: secure naming: server %s refused for service %q: no SPIFFE IDs are configured for that service", id, service)
	}
	for _, p := range patterns {
		if p.matches(id) {
			return nil
		}
	}
	allowed := make([]string, len(patterns))
	for i, p := range patterns {
		allowed[i] = p.String()
	}
	return fmt.Errorf("proxy: secure naming: server %s is not allowed to run service %q (allowed: %s)", id, service, strings.Join(allowed, ", "))
}

// Authorizer returns the check of the client dialling service, for ClientTLS.
func (n *SecureNaming) Authorizer(service string) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		return n.Check(service, id)
	}
}

// Services returns the configured service names, sorted.
func (n *SecureNaming) Services() []string {
	out := make([]string, 0, len(n.services))
	for s := range n.services {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}
