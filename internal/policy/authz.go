package policy

import (
	"fmt"
	"net/netip"
	"slices"
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

	parsed *principal // Principal, split once per evaluation
}

// peer is the request's Principal split into trust domain, namespace and
// service account, parsed on first use.
func (r *Request) peer() principal {
	if r.parsed == nil {
		p := parsePrincipal(r.Principal)
		r.parsed = &p
	}
	return *r.parsed
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
	a, ok := d.Annotations[DryRunAnnotation]
	if !ok {
		return false
	}
	v, _ := strconv.ParseBool(a)
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
	return ruleMismatch(r, req, policyNS, false) == ""
}

// ruleMismatch says why a rule does not match the request ("" when it
// does): the first of from, to and when that fails, and in it the first
// field, for `meshfed policy explain`.
// Without why it only returns a non-empty string, without formatting one
// (the request path).
func ruleMismatch(r *secv1beta1.Rule, req *Request, policyNS string, why bool) string {
	from := r.GetFrom()
	if m := noneMatches(len(from), why, "from", "sources", func(i int) string {
		return sourceMismatch(from[i].GetSource(), req, policyNS, why)
	}); m != "" {
		return m
	}
	to := r.GetTo()
	if m := noneMatches(len(to), why, "to", "operations", func(i int) string {
		return operationMismatch(to[i].GetOperation(), req, why)
	}); m != "" {
		return m
	}
	for i, c := range r.GetWhen() {
		if !conditionMatches(c, req) {
			if !why {
				return "when"
			}
			return fmt.Sprintf("when[%d]: %s does not hold", i, c.GetKey())
		}
	}
	return ""
}

// noneMatches is "" when one of a rule's n alternatives (the sources of
// from, the operations of to) matches, or when there are none; otherwise
// why the first one does not (mismatch(i) is the i-th's reason), named by
// section when why is set.
func noneMatches(n int, why bool, section, noun string, mismatch func(i int) string) string {
	first := ""
	for i := range n {
		m := mismatch(i)
		if m == "" {
			return ""
		}
		if i == 0 {
			first = m
		}
	}
	switch {
	case first == "" || !why:
		return first
	case n > 1:
		return fmt.Sprintf("%s: none of %d %s matches (%s[0]: %s)", section, n, noun, section, first)
	}
	return section + ": " + first
}

// field evaluates one positive/negative pair of a source or operation: the
// value must match one of pos (when pos is set) and none of neg. On TCP an
// HTTP-only field is skipped (only reached for DENY and AUDIT).
func field(pos, neg []string, match func(string) bool) bool {
	return fieldMismatch(false, "", "", pos, neg, nil, match) == ""
}

// fieldMismatch is field that says why not ("" when it matches), naming
// the fields (name and notName) and the request's value v when why is set.
// v gives the value only when why is set, so that the decision path
// formats nothing.
func fieldMismatch(why bool, name, notName string, pos, neg []string, v func() string, match func(string) bool) string {
	if len(pos) > 0 {
		ok := false
		for _, p := range pos {
			if match(p) {
				ok = true
				break
			}
		}
		if !ok {
			if !why {
				return name
			}
			return fmt.Sprintf("%s %q does not match %q", name, pos, v())
		}
	}
	for _, n := range neg {
		if match(n) {
			if !why {
				return notName
			}
			return fmt.Sprintf("%s %q matches %q", notName, neg, v())
		}
	}
	return ""
}

func sourceMismatch(s *secv1beta1.Source, req *Request, policyNS string, why bool) string {
	pr := req.peer()
	str := func(v string) func(string) bool { return func(p string) bool { return matchString(p, v) } }
	val := func(v string) func() string { return func() string { return v } }
	ip := func(a netip.Addr) func(string) bool {
		return func(p string) bool {
			pf, err := parseIPBlock(p)
			return err == nil && a.IsValid() && pf.Contains(a.Unmap())
		}
	}
	ipVal := func(a netip.Addr) func() string {
		return func() string {
			if !a.IsValid() {
				return ""
			}
			return a.Unmap().String()
		}
	}
	sa := func(p string) bool {
		ns, name, ok := strings.Cut(p, "/")
		if !ok {
			ns, name = policyNS, p
		}
		return pr.ok && ns == pr.ns && name == pr.sa
	}
	if m := fieldMismatch(why, "principals", "notPrincipals", s.GetPrincipals(), s.GetNotPrincipals(), val(req.Principal), str(req.Principal)); m != "" {
		return m
	}
	if m := fieldMismatch(why, "namespaces", "notNamespaces", s.GetNamespaces(), s.GetNotNamespaces(), val(pr.ns), str(pr.ns)); m != "" {
		return m
	}
	if m := fieldMismatch(why, "serviceAccounts", "notServiceAccounts", s.GetServiceAccounts(), s.GetNotServiceAccounts(), func() string { return pr.ns + "/" + pr.sa }, sa); m != "" {
		return m
	}
	if m := fieldMismatch(why, "trustDomains", "notTrustDomains", s.GetTrustDomains(), s.GetNotTrustDomains(), val(pr.td), str(pr.td)); m != "" {
		return m
	}
	if m := fieldMismatch(why, "ipBlocks", "notIpBlocks", s.GetIpBlocks(), s.GetNotIpBlocks(), ipVal(req.SourceIP), ip(req.SourceIP)); m != "" {
		return m
	}
	if m := fieldMismatch(why, "remoteIpBlocks", "notRemoteIpBlocks", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), ipVal(remoteIP(req)), ip(remoteIP(req))); m != "" {
		return m
	}
	if req.TCP {
		return ""
	}
	return fieldMismatch(why, "requestPrincipals", "notRequestPrincipals", s.GetRequestPrincipals(), s.GetNotRequestPrincipals(), val(authPrincipal(req)), str(authPrincipal(req)))
}

func operationMismatch(o *secv1beta1.Operation, req *Request, why bool) string {
	port := func(p string) bool {
		n, err := parsePort(p)
		return err == nil && n == req.Port
	}
	portVal := func() string { return strconv.FormatUint(uint64(req.Port), 10) }
	if m := fieldMismatch(why, "ports", "notPorts", o.GetPorts(), o.GetNotPorts(), portVal, port); m != "" {
		return m
	}
	if req.TCP {
		return "" // hosts, methods and paths are HTTP only
	}
	host := strings.ToLower(req.Host)
	if m := fieldMismatch(why, "hosts", "notHosts", o.GetHosts(), o.GetNotHosts(), func() string { return req.Host }, func(p string) bool { return matchString(strings.ToLower(p), host) }); m != "" {
		return m
	}
	if m := fieldMismatch(why, "methods", "notMethods", o.GetMethods(), o.GetNotMethods(), func() string { return req.Method }, func(p string) bool { return matchString(p, req.Method) }); m != "" {
		return m
	}
	return fieldMismatch(why, "paths", "notPaths", o.GetPaths(), o.GetNotPaths(), func() string { return req.Path }, func(p string) bool { return matchString(p, req.Path) })
}

func conditionMatches(c *secv1beta1.Condition, req *Request) bool {
	k, err := parseKey(c.GetKey())
	if err != nil {
		return false // refused at load
	}
	if req.TCP && k.httpOnly() {
		return true // only reached for DENY and AUDIT, which ignore it
	}
	pr := req.peer()
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
	td, rest, ok1 := strings.Cut(p, "/ns/")
	ns, sa, ok2 := strings.Cut(rest, "/sa/")
	if !ok1 || !ok2 || td == "" || strings.Contains(td, "/") || ns == "" || strings.Contains(ns, "/") || sa == "" || strings.Contains(sa, "/") {
		return principal{}
	}
	return principal{td: td, ns: ns, sa: sa, ok: true}
}

// RuleTrace is how one rule of an AuthorizationPolicy fared against a
// request.
type RuleTrace struct {
	Index   int    `json:"index"`
	Matched bool   `json:"matched"`
	Why     string `json:"why,omitempty"` // why it did not match
}

// PolicyTrace is an AuthorizationPolicy that applies to a workload, with
// how each of its rules fared.
type PolicyTrace struct {
	Policy string      `json:"policy"` // ns/name
	Action string      `json:"action"`
	DryRun bool        `json:"dryRun,omitempty"`
	Rules  []RuleTrace `json:"rules"`
}

// TraceAuthorization evaluates every rule of every AuthorizationPolicy that
// applies to the workload against req, as Authorize does, and says for each
// whether it matched and, if not, the first field that did not. Policies
// come in the order Authorize weighs them: DENY, then ALLOW, then AUDIT,
// oldest first within each. It is for explaining a decision; Authorize is
// the decision.
func (s *Set) TraceAuthorization(ns string, labels map[string]string, req Request) []PolicyTrace {
	var out []PolicyTrace
	pols := s.AuthorizationPolicies(ns, labels)
	rank := map[secv1beta1.AuthorizationPolicy_Action]int{secv1beta1.AuthorizationPolicy_DENY: 0, secv1beta1.AuthorizationPolicy_ALLOW: 1}
	slices.SortStableFunc(pols, func(a, b *Document) int {
		ra, ok := rank[a.Authz.GetAction()]
		if !ok {
			ra = 2
		}
		rb, ok := rank[b.Authz.GetAction()]
		if !ok {
			rb = 2
		}
		return ra - rb
	})
	for _, d := range pols {
		t := PolicyTrace{Policy: d.Ref(), Action: d.Authz.GetAction().String(), DryRun: dryRun(d)}
		ignoreHTTP := d.Authz.GetAction() != secv1beta1.AuthorizationPolicy_ALLOW
		for i, r := range d.Authz.GetRules() {
			rt := RuleTrace{Index: i}
			switch {
			case req.TCP && !ignoreHTTP && ruleUsesHTTP(r):
				rt.Why = "uses HTTP-only fields, which an ALLOW rule cannot match on a TCP port"
			default:
				rt.Why = ruleMismatch(r, &req, d.Namespace, true)
				rt.Matched = rt.Why == ""
			}
			t.Rules = append(t.Rules, rt)
		}
		out = append(out, t)
	}
	return out
}
