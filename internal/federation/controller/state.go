package controller

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// File names in the data directory.
const (
	stateFile    = "state.json"
	rootCertFile = "root-cert.pem"
	socketFile   = "admin.sock"
)

// rootKeyFile is the key file of generated root number n, in the data dir.
func rootKeyFile(n int) string { return fmt.Sprintf("root-%d.key", n) }

// MaxStateBytes bounds the state file: a thousand members with a few
// intermediates and reports each, and a thousand tokens, are under 16 MiB.
const MaxStateBytes = 64 << 20

// stateVersion is the state file's format; a file of another version is
// refused rather than misread.
const stateVersion = 1

// state is everything the controller must not lose across a restart. It is
// written whole, atomically, after every change and before the change is
// answered (a token is spent on disk before the intermediate it paid for
// leaves). It holds no key and no token: roots name their key files, and
// tokens are stored as SHA-256 hashes.
type state struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Generation is the FederationState's, bumped on every change of it.
	Generation uint64 `json:"generation"`
	Phase      Phase  `json:"phase"`
	// PhaseGeneration is the generation at which the phase began: the one
	// members must have applied before it can end.
	PhaseGeneration      uint64                   `json:"phase_generation"`
	Roots                []rootRecord             `json:"roots"`
	TrustDomains         []string                 `json:"trust_domains"`
	EnforceAccessControl bool                     `json:"enforce_access_control"`
	Tokens               []tokenRecord            `json:"tokens"`
	Members              map[string]*memberRecord `json:"members"`
	// RetiredRoots are the subject key IDs (hex) of the roots rotations
	// dropped, so that none is trusted again as a next root from files:
	// intermediates signed under it would be trusted again with it.
	RetiredRoots []string `json:"retired_roots,omitempty"`
}

// rootRecord is one shared root, by number (1, 2, … as rotations make
// them).
type rootRecord struct {
	Number int    `json:"number"`
	Cert   []byte `json:"cert"` // DER
	// KeyFile is relative to the data dir for a root the controller made,
	// and absolute for a root given as files (never copied).
	KeyFile string    `json:"key_file"`
	State   RootState `json:"state"`
}

// tokenRecord is a join token, kept as the SHA-256 of its text.
type tokenRecord struct {
	Hash        []byte    `json:"sha256"`
	TrustDomain string    `json:"trust_domain"`
	ExpiresAt   time.Time `json:"expires_at"`
	UsedAt      time.Time `json:"used_at,omitzero"`
}

// memberRecord is a joined member.
type memberRecord struct {
	TrustDomain string    `json:"trust_domain"`
	Address     string    `json:"address,omitempty"`
	JoinedAt    time.Time `json:"joined_at"`
	LastContact time.Time `json:"last_contact"`
	// Intermediates issued to the member, oldest first; the last is its
	// current one. Expired ones are pruned, the current one never.
	Intermediates []intermediateRecord `json:"intermediates"`
	Report        *reportRecord        `json:"report,omitempty"`
	// JWTAuthorities are the JWT-SVID keys the member last reported, by
	// key ID, which every member is sent.
	JWTAuthorities []jwtAuthorityRecord `json:"jwt_authorities,omitempty"`
}

type jwtAuthorityRecord struct {
	KeyID     string `json:"key_id"`
	PublicKey []byte `json:"public_key"` // PKIX DER
	ExpiresAt int64  `json:"expires_at,omitempty"`
}

type intermediateRecord struct {
	Serial   string    `json:"serial"` // hex
	Cert     []byte    `json:"cert"`   // DER
	Root     string    `json:"root"`   // subject key ID (hex) of the root that signed it
	NotAfter time.Time `json:"not_after"`
}

// reportRecord is a member's last MemberReport.
type reportRecord struct {
	At                    time.Time        `json:"at"`
	AppliedGeneration     uint64           `json:"applied_generation"`
	IntermediateSerial    string           `json:"intermediate_serial"`
	IntermediateExpiresAt int64            `json:"intermediate_expires_at"`
	LiveSVIDsByRoot       map[string]int64 `json:"live_svids_by_root,omitempty"`
	Agents                int64            `json:"agents"`
	AgentsCurrent         int64            `json:"agents_current"`
}

func (m *memberRecord) current() *intermediateRecord {
	if len(m.Intermediates) == 0 {
		return nil
	}
	return &m.Intermediates[len(m.Intermediates)-1]
}

func (m *memberRecord) intermediate(serial string) *intermediateRecord {
	for i := range m.Intermediates {
		if m.Intermediates[i].Serial == serial {
			return &m.Intermediates[i]
		}
	}
	return nil
}

// loadState reads the state file; ok is false when there is none yet.
func loadState(dir string) (st *state, ok bool, err error) {
	path := filepath.Join(dir, stateFile)
	data, err := pemfile.ReadFile(path, MaxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("federation controller: state: %w", err)
	}
	st = &state{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, false, fmt.Errorf("federation controller: state file %s is corrupt: %w; restore it from a backup", path, err)
	}
	if st.Version != stateVersion {
		return nil, false, fmt.Errorf("federation controller: state file %s is version %d; this meshfed reads version %d", path, st.Version, stateVersion)
	}
	if st.Members == nil {
		st.Members = map[string]*memberRecord{}
	}
	return st, true, nil
}

// save writes the state file atomically, owner-only.
func (st *state) save(dir string) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("federation controller: state: %w", err)
	}
	if err := pemfile.WriteFile(filepath.Join(dir, stateFile), data, pemfile.ModeKey); err != nil {
		return fmt.Errorf("federation controller: saving state: %w", err)
	}
	return nil
}

// clone deep-copies the state, so that a change can be rolled back when it
// cannot be saved.
func (st *state) clone() *state {
	data, err := json.Marshal(st)
	if err != nil {
		panic(err) // only plain data: cannot fail
	}
	out := &state{}
	if err := json.Unmarshal(data, out); err != nil {
		panic(err)
	}
	if out.Members == nil {
		out.Members = map[string]*memberRecord{}
	}
	return out
}

// findToken returns the index of the token with this hash, comparing every
// stored hash in constant time, or -1.
func (st *state) findToken(hash []byte) int {
	found := -1
	for i, t := range st.Tokens {
		if subtle.ConstantTimeCompare(t.Hash, hash) == 1 {
			found = i
		}
	}
	return found
}

// prune drops tokens past their expiry and intermediates past theirs (but
// never a member's current one).
func (st *state) prune(now time.Time) bool {
	changed := false
	n := len(st.Tokens)
	st.Tokens = slices.DeleteFunc(st.Tokens, func(t tokenRecord) bool { return !now.Before(t.ExpiresAt) })
	changed = changed || len(st.Tokens) != n
	for _, m := range st.Members {
		if len(m.Intermediates) < 2 {
			continue
		}
		cur := m.Intermediates[len(m.Intermediates)-1]
		old := m.Intermediates[:len(m.Intermediates)-1]
		n := len(old)
		old = slices.DeleteFunc(old, func(r intermediateRecord) bool { return now.After(r.NotAfter) })
		if len(old) != n {
			m.Intermediates = append(old, cur)
			changed = true
		}
	}
	return changed
}

// ensureDir makes the data directory owner-only.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("federation controller: data dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("federation controller: data dir: %w", err)
	}
	return nil
}
