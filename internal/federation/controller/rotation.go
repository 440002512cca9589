package controller

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// Phase is where a rotation of the shared root stands.
type Phase string

// The phases of a rotation, in order; stable is both start and end.
const (
	// PhaseStable: one root, which signs.
	PhaseStable Phase = "stable"
	// PhasePublishing: a new root is published beside the old one, which
	// still signs. Ends when every joined member has applied the state
	// that publishes it and all its agents have received it.
	PhasePublishing Phase = "publishing"
	// PhaseReissuing: the new root signs; members renew their
	// intermediates. Ends when every member's intermediate, issued and in
	// use, chains to the new root.
	PhaseReissuing Phase = "reissuing"
	// PhaseRetiring: the old root is still published so that SVIDs issued
	// under it keep verifying. Ends when no member reports a live SVID
	// chaining to it and no intermediate under it is in use; then the old
	// root is dropped and the phase is stable again.
	PhaseRetiring Phase = "retiring"
)

// RootState is a root's part in the federation.
type RootState string

// Root states, as status shows them.
const (
	RootActive    RootState = "active"    // trusted and signing intermediates
	RootPublished RootState = "published" // trusted, not yet signing
	RootRetiring  RootState = "retiring"  // trusted, no longer signing
)

// next is the phase after p.
func (p Phase) next() Phase {
	switch p {
	case PhasePublishing:
		return PhaseReissuing
	case PhaseReissuing:
		return PhaseRetiring
	case PhaseRetiring:
		return PhaseStable
	}
	return PhasePublishing
}

// rootIn returns the record of the root in state rs, or nil.
func (st *state) rootIn(rs RootState) *rootRecord {
	for i := range st.Roots {
		if st.Roots[i].State == rs {
			return &st.Roots[i]
		}
	}
	return nil
}

// signing is the root that signs intermediates: the active one.
func (st *state) signing() *rootRecord { return st.rootIn(RootActive) }

// bump marks a change of the FederationState.
func (st *state) bump() { st.Generation++ }

// enterPhase moves to phase p and records the generation it began at.
func (st *state) enterPhase(p Phase) {
	st.Phase = p
	st.bump()
	st.PhaseGeneration = st.Generation
}

// startRotation publishes rec, a new root, beside the active one.
func (st *state) startRotation(rec rootRecord) {
	rec.State = RootPublished
	st.Roots = append(st.Roots, rec)
	st.enterPhase(PhasePublishing)
}

// advance moves the state to the next phase and returns the roots it
// dropped (on the way back to stable).
func (st *state) advance() (dropped []rootRecord) {
	switch st.Phase {
	case PhasePublishing:
		st.signing().State = RootRetiring
		st.rootIn(RootPublished).State = RootActive
	case PhaseRetiring:
		st.Roots = slices.DeleteFunc(st.Roots, func(r rootRecord) bool {
			if r.State == RootRetiring {
				dropped = append(dropped, r)
				if c, err := x509.ParseCertificate(r.Cert); err == nil {
					st.RetiredRoots = append(st.RetiredRoots, skid(c))
				}
				return true
			}
			return false
		})
	}
	st.enterPhase(st.Phase.next())
	return dropped
}

// waitingFor says, member by member, why the phase cannot end yet; nil
// when it can. It is a pure function of the state and the clock. Only
// joined members count: one that joins later gets the roots of its time.
// skids maps root numbers to subject key IDs.
func (st *state) waitingFor(skids map[int]string, now time.Time) []string {
	if st.Phase == PhaseStable {
		return nil
	}
	tds := make([]string, 0, len(st.Members))
	for td := range st.Members {
		tds = append(tds, td)
	}
	slices.Sort(tds)
	var out []string
	wait := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	var oldSKID, newSKID string
	if r := st.rootIn(RootRetiring); r != nil {
		oldSKID = skids[r.Number]
	}
	if r := st.signing(); r != nil {
		newSKID = skids[r.Number]
	}
	for _, td := range tds {
		m := st.Members[td]
		r := m.Report
		fresh := r != nil && r.AppliedGeneration >= st.PhaseGeneration
		cur := m.current()
		switch st.Phase {
		case PhasePublishing:
			switch {
			case !fresh:
				wait("%s has not applied generation %d (the new root)", td, st.PhaseGeneration)
			case r.AgentsCurrent < r.Agents:
				wait("%s: %d of %d agents do not have the new root yet", td, r.Agents-r.AgentsCurrent, r.Agents)
			}
		case PhaseReissuing:
			switch {
			case cur == nil || cur.Root != newSKID:
				wait("%s: its intermediate chains to the old root; waiting for it to renew", td)
			case !fresh:
				wait("%s has not reported since generation %d", td, st.PhaseGeneration)
			case m.intermediate(r.IntermediateSerial) == nil || m.intermediate(r.IntermediateSerial).Root != newSKID:
				wait("%s still signs with intermediate %s, not the one under the new root", td, orNone(r.IntermediateSerial))
			}
		case PhaseRetiring:
			if cur != nil && cur.Root == oldSKID && now.Before(cur.NotAfter) {
				wait("%s: its current intermediate %s chains to the old root", td, cur.Serial)
				continue
			}
			if !fresh {
				wait("%s has not reported since generation %d", td, st.PhaseGeneration)
				continue
			}
			// Audit rows from before the member recorded roots ("") may
			// chain to the old root: they count as if they did.
			switch n := r.LiveSVIDsByRoot[oldSKID] + r.LiveSVIDsByRoot[""]; {
			case n == 1:
				wait("%s: 1 live SVID chains to the old root", td)
			case n > 1:
				wait("%s: %d live SVIDs chain to the old root", td, n)
			}
			if in := m.intermediate(r.IntermediateSerial); in != nil && in.Root == oldSKID && now.Before(in.NotAfter) {
				wait("%s still uses intermediate %s under the old root", td, in.Serial)
			}
		}
	}
	return out
}

// rotationDue reports whether the schedule starts a rotation: the active
// root has less than before left. before is capped at half the root's
// lifetime, so that a short-lived root is not rotated again as soon as it
// is made.
func rotationDue(notBefore, notAfter, now time.Time, before time.Duration) bool {
	if before <= 0 {
		return false
	}
	if half := notAfter.Sub(notBefore) / 2; before > half {
		before = half
	}
	return !now.Before(notAfter.Add(-before))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
