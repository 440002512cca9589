package policy

import (
	"fmt"

	secv1beta1 "istio.io/api/security/v1beta1"
)

// Mode is an effective mutual TLS mode.
type Mode string

// The effective modes (UNSET is always resolved to one of these).
const (
	ModeStrict     Mode = "STRICT"
	ModePermissive Mode = "PERMISSIVE"
	ModeDisable    Mode = "DISABLE"
)

// DefaultPolicy names the built-in default when no policy sets the mode.
const DefaultPolicy = "(default)"

// Decision is the effective mTLS mode of a workload's port.
type Decision struct {
	Mode   Mode   `json:"mode"`
	Policy string `json:"policy"` // "ns/name" of the deciding policy, or "(default)"
	Reason string `json:"reason"`
}

// PeerScopes are the PeerAuthentication policies that Istio considers for
// a workload: the one mesh-wide and the one namespace-wide policy that count
// (the oldest of each), and the oldest workload policy whose selector
// matches. Any may be nil.
type PeerScopes struct {
	Mesh, Namespace, Workload *Document
}

// PeerPolicies finds the PeerAuthentication policies in force for a workload.
func (s *Set) PeerPolicies(ns string, labels map[string]string) PeerScopes {
	var sc PeerScopes
	for _, d := range s.peers { // oldest first
		sel := d.Peer.GetSelector().GetMatchLabels()
		switch {
		case d.Namespace == s.root && !hasSelector(sel):
			if sc.Mesh == nil {
				sc.Mesh = d
			}
		case d.Namespace != ns:
		case !hasSelector(sel):
			if sc.Namespace == nil {
				sc.Namespace = d
			}
		case selects(sel, labels):
			if sc.Workload == nil {
				sc.Workload = d
			}
		}
	}
	return sc
}

func modeOf(m *secv1beta1.PeerAuthentication_MutualTLS) secv1beta1.PeerAuthentication_MutualTLS_Mode {
	return m.GetMode()
}

func toMode(m secv1beta1.PeerAuthentication_MutualTLS_Mode) Mode {
	switch m {
	case secv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict
	case secv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable
	}
	return ModePermissive
}

// MTLS resolves the mutual TLS mode of a workload (namespace and labels) on
// one port, with Istio's precedence: workload over namespace over mesh, a
// mode of UNSET inheriting from the wider scope, a mesh-wide UNSET (or no
// mesh-wide policy) meaning PERMISSIVE, and portLevelMtls of the workload
// policy overriding for its port. portLevelMtls on a policy without a
// selector is ignored, as Istio does.
func (s *Set) MTLS(ns string, labels map[string]string, port uint32) Decision {
	sc := s.PeerPolicies(ns, labels)
	dec := Decision{Mode: ModePermissive, Policy: DefaultPolicy, Reason: "no mesh-wide PeerAuthentication: PERMISSIVE by default"}
	if sc.Mesh != nil {
		if m := modeOf(sc.Mesh.Peer.GetMtls()); m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			dec = Decision{Mode: toMode(m), Policy: sc.Mesh.Ref(), Reason: "mesh-wide policy"}
		} else {
			dec = Decision{Mode: ModePermissive, Policy: sc.Mesh.Ref(), Reason: "mesh-wide policy leaves the mode UNSET: PERMISSIVE"}
		}
	}
	if sc.Namespace != nil {
		if m := modeOf(sc.Namespace.Peer.GetMtls()); m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			dec = Decision{Mode: toMode(m), Policy: sc.Namespace.Ref(), Reason: "namespace-wide policy"}
		}
	}
	if w := sc.Workload; w != nil {
		if m := modeOf(w.Peer.GetMtls()); m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			dec = Decision{Mode: toMode(m), Policy: w.Ref(), Reason: "workload policy"}
		}
		if pm, ok := w.Peer.GetPortLevelMtls()[port]; ok {
			if m := modeOf(pm); m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
				dec = Decision{Mode: toMode(m), Policy: w.Ref(), Reason: fmt.Sprintf("workload policy, portLevelMtls for port %d", port)}
			}
		}
	}
	return dec
}
