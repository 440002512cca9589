package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	secv1beta1 "istio.io/api/security/v1beta1"
)

// Request is what authorization sees of a connection or HTTP request.
type Request struct {
	// TCP marks a plain TCP connection: the HTTP-only attributes (hosts,
	// methods, paths, requestPrincipals, request.* conditions) don't exist.
	TCP bool
	// Principal is the peer's identity from its mTLS certificate,
	// "<trust domain>/ns/<ns>/sa/<sa>" (the SPIFFE ID without "spiffe://");
	// empty for plaintext.
	Principal string
	SourceIP  netip.Addr
	RemoteIP  netip.Addr // original client, from X-Forwarded-For or PROXY
	DestIP    netip.Addr
	Port      uint32 // destination port
	SNI       string
	Host      string
	Method    string
	Path      string
	Headers   map[string][]string
	// Auth is the result of request authentication; nil or with an empty
	// Principal when the request carries no JWT.
	Auth *AuthnResult
}

// Actions of an AuthzDecision.
const (
	ActionAllow = "ALLOW"
	ActionDeny  = "DENY"
)

// AuthzDecision is the outcome of authorization.
type AuthzDecision struct {
	Allowed bool   `json:"allowed"`
	Policy  string `json:"policy,omitempty"` // "ns/name" of the deciding policy
	Rule    int    `json:"rule"`             // index in its rules; -1 when no rule decided
	Action  string `json:"action"`           // the action of the deciding policy, or of the default
	Reason  string `json:"reason"`
	// Audit is set when an AUDIT policy matched; AuditPolicy names it.
	Audit       bool   `json:"audit,omitempty"`
	AuditPolicy string `json:"auditPolicy,omitempty"`
}

// DryRunAnnotation marks an AuthorizationPolicy that is evaluated by Istio
// only for its logs; it is never enforced.
const DryRunAnnotation = "istio.io/dry-run"

// AuthorizationPolicies returns the AuthorizationPolicies that apply to a
// workload, oldest first: those of its namespace and of the root namespace
// whose selector is empty or matches its labels.
func (s *Set) AuthorizationPolicies(ns string, labels map[string]string) []*Document {
	var out []*Document
	for _, d := range s.authzs {
		if d.Namespace != ns && d.Namespace != s.root {
			continue
		}
		if !selects(d.Authz.GetSelector().GetMatchLabels(), labels) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// Authorize decides a request to a workload as Istio does: a matching DENY
// policy denies; otherwise, if any ALLOW policy applies to the workload, one
// of them must match; with no ALLOW policy the request is allowed. AUDIT
// policies only mark the request. CUSTOM policies are refused when loaded.
// Policies annotated istio.io/dry-run: "true" are not enforced.
func (s *Set) Authorize(ns string, labels map[string]string, req Request) AuthzDecision {
	pols := s.AuthorizationPolicies(ns, labels)
	var dec AuthzDecision
	audit := func() {
		for _, d := range pols {
			if d.Authz.GetAction() == secv1beta1.AuthorizationPolicy_AUDIT && !dryRun(d) {
				if i := firstMatch(d, &req); i >= 0 {
					dec.Audit, dec.AuditPolicy = true, d.Ref()
					return
				}
			}
		}
	}
	for _, d := range pols {
		if d.Authz.GetAction() != secv1beta1.AuthorizationPolicy_DENY || dryRun(d) {
			continue
		}
		if i := firstMatch(d, &req); i >= 0 {
			dec = AuthzDecision{Allowed: false, Policy: d.Ref(), Rule: i, Action: ActionDeny, Reason: fmt.Sprintf("DENY policy %s rule %d matched", d.Ref(), i)}
			audit()
			return dec
		}
	}
	haveAllow := false
	for _, d := range pols {
		if d.Authz.GetAction() != secv1beta1.AuthorizationPolicy_ALLOW || dryRun(d) {
			continue
		}
		haveAllow = true
		if i := firstMatch(d, &req); i >= 0 {
			dec = AuthzDecision{Allowed: true, Policy: d.Ref(), Rule: i, Action: ActionAllow, Reason: fmt.Sprintf("ALLOW policy %s rule %d matched", d.Ref(), i)}
			audit()
			return dec
		}
	}
	if haveAllow {
		dec = AuthzDecision{Allowed: false, Rule: -1, Action: ActionDeny, Reason: "ALLOW policies apply to the workload and none matched: denied"}
	} else {
		dec = AuthzDecision{Allowed: true, Rule: -1, Action: ActionAllow, Reason: "no ALLOW policy applies to the workload: allowed"}
	}
	audit()
	return dec
}

func dryRun(d *Document) bool {
	v, _ := strconv.ParseBool(d.Annotations[DryRunAnnotation])
	return v
}

// firstMatch returns the index of the first rule of a policy that matches,
// or -1. A policy with no rules matches nothing ("spec: {}" as an ALLOW
// policy allows nothing); a rule with no fields ("{}") matches everything.
func firstMatch(d *Document, req *Request) int {
	// For a TCP request Istio cannot evaluate HTTP-only attributes: an ALLOW
	// rule that uses one never matches, and a DENY or AUDIT rule ignores it
	// ("missing attributes are treated as matches").
	ignoreHTTP := d.Authz.GetAction() != secv1beta1.AuthorizationPolicy_ALLOW
	for i, r := range d.Authz.GetRules() {
		if req.TCP && !ignoreHTTP && ruleUsesHTTP(r) {
			continue
		}
		if ruleMatches(r, req, d.Namespace) {
			return i
		}
	}
	return -1
}

// ruleUsesHTTP reports whether a rule uses an HTTP-only attribute.
func ruleUsesHTTP(r *secv1beta1.Rule) bool {
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		if len(s.GetRequestPrincipals()) > 0 || len(s.GetNotRequestPrincipals()) > 0 {
			return true
		}
	}
	for _, t := range r.GetTo() {
		o := t.GetOperation()
		if len(o.GetHosts())+len(o.GetNotHosts())+len(o.GetMethods())+len(o.GetNotMethods())+len(o.GetPaths())+len(o.GetNotPaths()) > 0 {
			return true
		}
	}
	for _, c := range r.GetWhen() {
		if k, err := parseKey(c.GetKey()); err == nil && k.httpOnly() {
			return true
		}
	}
	return false
}

func ruleMatches(r *secv1beta1.Rule, req *Request, policyNS string) bool {
	if len(r.GetFrom()) > 0 {
		ok := false
		for _, f := range r.GetFrom() {
			if sourceMatches(f.GetSource(), req, policyNS) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.GetTo()) > 0 {
		ok := false
		for _, t := range r.GetTo() {
			if operationMatches(t.GetOperation(), req) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, c := range r.GetWhen() {
		if !conditionMatches(c, req) {
			return false
		}
	}
	return true
}

// field evaluates one positive/negative pair of a source or operation: the
// value must match one of pos (when pos is set) and none of neg. On TCP an
// HTTP-only field is skipped (only reached for DENY and AUDIT).
func field(pos, neg []string, match func(string) bool) bool {
	if len(pos) > 0 {
		ok := false
		for _, p := range pos {
			if match(p) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, n := range neg {
		if match(n) {
			return false
		}
	}
	return true
}

func sourceMatches(s *secv1beta1.Source, req *Request, policyNS string) bool {
	pr := parsePrincipal(req.Principal)
	str := func(v string) func(string) bool { return func(p string) bool { return matchString(p, v) } }
	ip := func(a netip.Addr) func(string) bool {
		return func(p string) bool {
			pf, err := parseIPBlock(p)
			return err == nil && a.IsValid() && pf.Contains(a.Unmap())
		}
	}
	sa := func(p string) bool {
		if !strings.Contains(p, "/") {
			p = policyNS + "/" + p
		}
		return pr.ok && p == pr.ns+"/"+pr.sa
	}
	ok := field(s.GetPrincipals(), s.GetNotPrincipals(), str(req.Principal)) &&
		field(s.GetNamespaces(), s.GetNotNamespaces(), str(pr.ns)) &&
		field(s.GetServiceAccounts(), s.GetNotServiceAccounts(), sa) &&
		field(s.GetTrustDomains(), s.GetNotTrustDomains(), str(pr.td)) &&
		field(s.GetIpBlocks(), s.GetNotIpBlocks(), ip(req.SourceIP)) &&
		field(s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), ip(remoteIP(req)))
	if !ok || req.TCP {
		return ok
	}
	return field(s.GetRequestPrincipals(), s.GetNotRequestPrincipals(), str(authPrincipal(req)))
}

func operationMatches(o *secv1beta1.Operation, req *Request) bool {
	port := func(p string) bool {
		n, err := parsePort(p)
		return err == nil && n == req.Port
	}
	if !field(o.GetPorts(), o.GetNotPorts(), port) {
		return false
	}
	if req.TCP {
		return true // hosts, methods and paths are HTTP only
	}
	host := strings.ToLower(req.Host)
	return field(o.GetHosts(), o.GetNotHosts(), func(p string) bool { return matchString(strings.ToLower(p), host) }) &&
		field(o.GetMethods(), o.GetNotMethods(), func(p string) bool { return matchString(p, req.Method) }) &&
		field(o.GetPaths(), o.GetNotPaths(), func(p string) bool { return matchString(p, req.Path) })
}

func conditionMatches(c *secv1beta1.Condition, req *Request) bool {
	k, err := parseKey(c.GetKey())
	if err != nil {
		return false // refused at load
	}
	if req.TCP && k.httpOnly() {
		return true // only reached for DENY and AUDIT, which ignore it
	}
	pr := parsePrincipal(req.Principal)
	var values []string // the request's values for the key; none when absent
	var match func(pattern, v string) bool = matchString
	switch k.name {
	case "source.ip", "remote.ip", "destination.ip":
		a := req.SourceIP
		if k.name == "remote.ip" {
			a = remoteIP(req)
		} else if k.name == "destination.ip" {
			a = req.DestIP
		}
		if a.IsValid() {
			values = []string{a.Unmap().String()}
		}
		match = func(p, v string) bool {
			pf, err := parseIPBlock(p)
			addr, err2 := netip.ParseAddr(v)
			return err == nil && err2 == nil && pf.Contains(addr)
		}
	case "destination.port":
		values = []string{strconv.FormatUint(uint64(req.Port), 10)}
		match = func(p, v string) bool { return p == v }
	case "source.namespace":
		values = nonEmpty(pr.ns)
	case "source.principal":
		values = nonEmpty(req.Principal)
	case "source.serviceAccount":
		if pr.ok {
			values = []string{pr.ns + "/" + pr.sa}
		}
	case "connection.sni":
		values = nonEmpty(req.SNI)
	case "request.auth.principal":
		values = nonEmpty(authPrincipal(req))
	case "request.auth.audiences":
		if req.Auth != nil {
			values = req.Auth.Audiences
		}
	case "request.auth.presenter":
		if req.Auth != nil {
			values = nonEmpty(req.Auth.Presenter)
		}
	case "request.auth.claims":
		if req.Auth != nil {
			values = claimValues(req.Auth.Claims, k.args)
		}
	case "request.headers":
		values = headerValues(req.Headers, k.args[0])
	}
	any := func(patterns []string) bool {
		for _, v := range values {
			for _, p := range patterns {
				if match(p, v) {
					return true
				}
			}
		}
		return false
	}
	if len(c.GetValues()) > 0 && !any(c.GetValues()) {
		return false
	}
	return !any(c.GetNotValues())
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func headerValues(h map[string][]string, name string) []string {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}

func authPrincipal(req *Request) string {
	if req.Auth == nil {
		return ""
	}
	return req.Auth.Principal
}

func remoteIP(req *Request) netip.Addr {
	if req.RemoteIP.IsValid() {
		return req.RemoteIP
	}
	return req.SourceIP
}

type principal struct {
	td, ns, sa string
	ok         bool
}

// parsePrincipal splits "<td>/ns/<ns>/sa/<sa>".
func parsePrincipal(p string) principal {
	parts := strings.Split(p, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		return principal{}
	}
	return principal{td: parts[0], ns: parts[2], sa: parts[4], ok: true}
}
