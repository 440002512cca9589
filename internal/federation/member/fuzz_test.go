package member

import (
	"testing"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/pki"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// FuzzStateFile feeds the state file parser; what parses must survive a
// round trip unchanged. Seeds: testdata/fuzz/FuzzStateFile.
func FuzzStateFile(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"name":"vm","roots":["MAA="],"signingRoot":"MAA="}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseStateFile(data)
		if err != nil {
			return
		}
		again, err := protojson.Marshal(stateToProto(s))
		if err != nil {
			t.Fatal(err)
		}
		s2, err := parseStateFile(again)
		if err != nil {
			t.Fatalf("a parsed state does not parse again: %v", err)
		}
		if !sameState(s, s2) {
			t.Fatal("the state changed in a round trip")
		}
	})
}

// FuzzIntermediateResponse feeds the check of what the controller answers
// to a join or a renewal, as protobuf; it must never accept an intermediate
// for another key. Seeds: testdata/fuzz/FuzzIntermediateResponse.
func FuzzIntermediateResponse(f *testing.F) {
	clk := newFakeClock()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var resp pb.IntermediateResponse
		if proto.Unmarshal(data, &resp) != nil {
			return
		}
		in, _, err := checkResponse(&resp, east, key, clk.Now)
		if err == nil && !samePublicKey(in.cert().PublicKey, key.Public()) {
			t.Fatal("accepted an intermediate for another key")
		}
	})
}
