package member

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/cadir"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
)

// StateFile is the file in the member's directory that holds the last
// federation state applied, as the controller's FederationState in
// protobuf JSON (certificates as base64 DER).
const StateFile = "federation-state.json"

// MaxStateBytes bounds the state file: MaxRoots roots of at most a few KiB
// each and the names of the member trust domains fit in far less.
const MaxStateBytes = 1 << 20

// dirFiles returns every file of the member's directory for in and s: the
// cacerts layout and the state file, to be written together. root-cert.pem
// holds the state's roots with the one in chains to first (added if the
// state no longer lists it, so the files always load as a CA), which is the
// order cert-chain.pem and Istio expect.
func dirFiles(in *intermediate, s *State) ([]pemfile.File, error) {
	roots := []*x509.Certificate{in.root}
	for _, r := range s.Roots {
		if !r.Equal(in.root) {
			roots = append(roots, r)
		}
	}
	files, err := cadir.IstioFiles([]*x509.Certificate{in.cert(), in.root}, roots, in.key)
	if err != nil {
		return nil, fmt.Errorf("member: %w", err)
	}
	data, err := protojson.MarshalOptions{Multiline: true}.Marshal(stateToProto(s))
	if err != nil {
		return nil, fmt.Errorf("member: state: %w", err)
	}
	return append(files, pemfile.File{Name: StateFile, Data: append(data, '\n'), Mode: pemfile.ModePublic}), nil
}

// writeDir replaces the member's directory's files all at once, or leaves
// them all as they were.
func writeDir(dir string, in *intermediate, s *State) error {
	files, err := dirFiles(in, s)
	if err != nil {
		return err
	}
	if err := pemfile.WriteFiles(dir, files...); err != nil {
		return fmt.Errorf("member: write %s: %w", dir, err)
	}
	return nil
}

// parseStateFile parses the state file's content.
func parseStateFile(data []byte) (*State, error) {
	if len(data) > MaxStateBytes {
		return nil, fmt.Errorf("%w of %d bytes", pemfile.ErrTooLarge, MaxStateBytes)
	}
	var m pb.FederationState
	if err := protojson.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return stateFromProto(&m)
}

// errNoIntermediate is wrapped when the directory holds no intermediate at
// all (as opposed to one that is unusable).
var errNoIntermediate = errors.New("no intermediate")

// loadDir reads the intermediate and state in dir and checks that the
// intermediate is usable now: its key matches, it is limited to td, valid
// now, and chains to a root in root-cert.pem (the persisted state's roots,
// and the intermediate's own root first).
func loadDir(dir string, td spiffeid.TrustDomain, clock pki.Clock) (*intermediate, *State, error) {
	if _, ok := pemfile.Exists(dir, cadir.IstioCertFile, StateFile); !ok {
		return nil, nil, fmt.Errorf("%s holds %w", dir, errNoIntermediate)
	}
	data, err := pemfile.ReadFile(filepath.Join(dir, StateFile), MaxStateBytes)
	if err != nil {
		return nil, nil, err
	}
	s, err := parseStateFile(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	m, err := cadir.Read(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%s holds %w: %w", dir, errNoIntermediate, err)
		}
		return nil, nil, err
	}
	if m.Layout != cadir.LayoutIstio {
		return nil, nil, fmt.Errorf("%s holds a CA in the %s layout, not Istio's cacerts layout", dir, m.Layout)
	}
	in, err := checkIntermediate(m.Chain, m.Key, m.Roots, s.SigningRoot, td, clock)
	if err != nil {
		return nil, nil, fmt.Errorf("the intermediate in %s: %w", dir, err)
	}
	return in, s, nil
}
