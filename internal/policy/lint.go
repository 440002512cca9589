package policy

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	secv1beta1 "istio.io/api/security/v1beta1"
)

// Finding is something in a policy set that Istio would ignore or that
// does something other than it seems to.
type Finding struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Kind    Kind   `json:"kind"`
	Policy  string `json:"policy"` // "ns/name"
	Message string `json:"message"`
}

func (f Finding) String() string {
	return fmt.Sprintf("%s:%d: %s %s: %s", f.File, f.Line, f.Kind, f.Policy, f.Message)
}

// Lint reports what Istio would ignore in the set, and policies that allow
// or deny everything or nothing. Findings are in file and line order.
func (s *Set) Lint() []Finding {
	var out []Finding
	add := func(d *Document, format string, args ...any) {
		out = append(out, Finding{File: d.File, Line: d.Line, Kind: d.Kind, Policy: d.Ref(), Message: fmt.Sprintf(format, args...)})
	}

	// PeerAuthentication: one mesh-wide and one namespace-wide policy count.
	first := map[string]*Document{} // namespace -> oldest selector-less policy
	bySelector := map[string]*Document{}
	for _, d := range s.peers {
		sel := d.Peer.GetSelector().GetMatchLabels()
		if !hasSelector(sel) {
			scope := "namespace-wide"
			if d.Namespace == s.root {
				scope = "mesh-wide"
			}
			if prev, ok := first[d.Namespace]; ok {
				add(d, "ignored: a second %s PeerAuthentication; Istio keeps only the oldest, %s", scope, prev.Ref())
			} else {
				first[d.Namespace] = d
			}
			if len(d.Peer.GetPortLevelMtls()) > 0 {
				add(d, "portLevelMtls is ignored on a policy without a selector (and Istio's validation refuses it)")
			}
		} else {
			if d.Namespace == s.root {
				add(d, "a selector in the root namespace %s: applies only to workloads in %s, not mesh-wide", s.root, s.root)
			}
			key := d.Namespace + " " + labelString(sel)
			if prev, ok := bySelector[key]; ok {
				add(d, "never in force: the older %s has the same selector and wins", prev.Ref())
			} else {
				bySelector[key] = d
			}
		}
	}

	for _, d := range s.reqs {
		if d.Namespace == s.root && hasSelector(d.Request.GetSelector().GetMatchLabels()) {
			add(d, "a selector in the root namespace %s: applies only to workloads in %s, not mesh-wide", s.root, s.root)
		}
		if len(d.Request.GetJwtRules()) == 0 {
			add(d, "no jwtRules: has no effect")
		}
	}

	for _, d := range s.authzs {
		a := d.Authz
		action := a.GetAction().String()
		if dryRun(d) {
			add(d, "dry-run (%s): not enforced", DryRunAnnotation)
		}
		if len(a.GetRules()) == 0 {
			switch a.GetAction() {
			case secv1beta1.AuthorizationPolicy_ALLOW:
				add(d, "ALLOW with no rules allows nothing: every request to the selected workloads is denied")
			default:
				add(d, "%s with no rules matches nothing: has no effect", action)
			}
			continue
		}
		for i, r := range a.GetRules() {
			if len(r.GetFrom()) == 0 && len(r.GetTo()) == 0 && len(r.GetWhen()) == 0 {
				switch a.GetAction() {
				case secv1beta1.AuthorizationPolicy_ALLOW:
					add(d, "rule %d is empty: allows every request", i)
				case secv1beta1.AuthorizationPolicy_DENY:
					add(d, "rule %d is empty: denies every request", i)
				default:
					add(d, "rule %d is empty: audits every request", i)
				}
				continue
			}
			if a.GetAction() == secv1beta1.AuthorizationPolicy_DENY && ruleUsesHTTP(r) && !ruleHasPorts(r) {
				add(d, "rule %d uses HTTP-only fields and no ports: on TCP ports Istio ignores those fields and denies all traffic the rest matches; scope it with ports", i)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		return out[i].Line < out[j].Line
	})
	return out
}

func ruleHasPorts(r *secv1beta1.Rule) bool {
	for _, t := range r.GetTo() {
		if len(t.GetOperation().GetPorts()) > 0 {
			return true
		}
	}
	for _, c := range r.GetWhen() {
		if c.GetKey() == "destination.port" && len(c.GetValues()) > 0 {
			return true
		}
	}
	return false
}

func labelString(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%s=%s,", k, m[k])
	}
	return b.String()
}
