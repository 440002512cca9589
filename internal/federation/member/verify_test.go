package member

import (
	"fmt"
	"strings"
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/testjwt"
)

// The JWT-SVID keys of a federation state: kept per member trust domain,
// written to the state file and read back; keys of a trust domain that is
// not a member, twice, or malformed make the state refused.
func TestStateJWTAuthorities(t *testing.T) {
	e := newEnv(t)
	_, der := testjwt.NewKey(t)
	westKeys := &pb.MemberJWTAuthorities{TrustDomain: "west.example", Authorities: []*pb.JWTAuthority{{KeyId: "w1", PublicKey: der}}}
	with := func(keys ...*pb.MemberJWTAuthorities) *pb.FederationState {
		m := e.ctl.currentState()
		m.TrustDomains = []string{"east.example", "west.example"}
		m.JwtAuthorities = keys
		return m
	}
	s, err := stateFromProto(with(westKeys))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.JWTAuthorities[west]; len(got) != 1 || got[0].ID != "w1" || len(s.JWTAuthorities) != 1 {
		t.Fatalf("JWT keys %+v", s.JWTAuthorities)
	}
	back, err := stateFromProto(stateToProto(s))
	if err != nil || !sameState(s, back) {
		t.Fatalf("through the state file: %v, same %v", err, sameState(s, back))
	}
	other := with(&pb.MemberJWTAuthorities{TrustDomain: "west.example", Authorities: []*pb.JWTAuthority{{KeyId: "w2", PublicKey: der}}})
	if s2, _ := stateFromProto(other); sameState(s, s2) {
		t.Error("states with other JWT keys are the same")
	}
	defer func(old int) { maxStateJWTBytes = old }(maxStateJWTBytes)
	maxStateJWTBytes = len("w1") + len(der) // west's one key, and no more
	for _, tc := range []struct {
		name string
		m    *pb.FederationState
		want string
	}{
		{"not a member", with(&pb.MemberJWTAuthorities{TrustDomain: "north.example", Authorities: westKeys.Authorities}), "JWT authorities of north.example, which is not a member"},
		{"twice", with(westKeys, westKeys), "JWT authorities of west.example twice"},
		{"bad trust domain", with(&pb.MemberJWTAuthorities{TrustDomain: "West"}), `JWT authorities of trust domain "West": `},
		{"bad key", with(&pb.MemberJWTAuthorities{TrustDomain: "west.example", Authorities: []*pb.JWTAuthority{{KeyId: "w1", PublicKey: []byte{1}}}}),
			`west.example: JWT authority "w1": public key does not parse`},
		{"more than members", with(westKeys, westKeys, westKeys), "JWT authorities of 3 trust domains; there are 2 members"},
		{"too many bytes", with(westKeys, &pb.MemberJWTAuthorities{TrustDomain: "east.example", Authorities: westKeys.Authorities}),
			fmt.Sprintf("JWT authorities of more than %d bytes", len("w1")+len(der))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := stateFromProto(tc.m); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("stateFromProto: %v, want %q", err, tc.want)
			}
		})
	}
}
