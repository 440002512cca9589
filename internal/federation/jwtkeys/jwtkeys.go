// Package jwtkeys checks the JWT-SVID signing keys VirtualMesh members
// exchange through the controller: a member reports its own trust domain's
// keys (MemberReport.jwt_authorities), and the controller passes every
// member's on in the FederationState, so that a member can validate the
// others' JWT-SVIDs. Both ends parse them here, with the same bounds.
package jwtkeys

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/meshfed/meshfed/internal/api/federationv1"
	"github.com/meshfed/meshfed/internal/pki"
)

// Bounds. A trust domain signs with one key, two or three around a
// rotation. Every member is sent every member's keys in each federation
// state, so the keys of all members together are bounded too.
const (
	// MaxKeys bounds the keys of one trust domain.
	MaxKeys = 8
	// MaxKeyIDBytes bounds a key ID.
	MaxKeyIDBytes = 255
	// MaxKeyBytes bounds a PKIX public key: RSA-8192 is about 1.1 KiB,
	// P-256 91 bytes.
	MaxKeyBytes = 2 << 10
	// MaxTotalBytes bounds the key IDs and keys of all members in one
	// federation state: a thousand members with two P-384 keys each take
	// about 300 KiB. The controller refuses a report that would go past it.
	MaxTotalBytes = 1 << 20
)

// Size is what keys count against MaxTotalBytes.
func Size(keys []Key) int {
	n := 0
	for _, k := range keys {
		n += len(k.ID) + len(k.DER)
	}
	return n
}

// Key is one parsed JWT-SVID signing key.
type Key struct {
	ID        string
	Public    crypto.PublicKey
	DER       []byte    // PKIX
	ExpiresAt time.Time // zero: none given
}

// Parse checks a list of keys of one trust domain: at most MaxKeys, each
// with a unique key ID of 1 to MaxKeyIDBytes bytes and a PKIX public key
// of a type and size pki accepts. The result is sorted by key ID. An empty
// list is valid: a trust domain that signs no JWT-SVIDs reports none.
func Parse(list []*pb.JWTAuthority) ([]Key, error) {
	if len(list) > MaxKeys {
		return nil, fmt.Errorf("%d JWT authorities; at most %d", len(list), MaxKeys)
	}
	out := make([]Key, 0, len(list))
	for _, a := range list {
		id := a.GetKeyId()
		switch {
		case id == "" || len(id) > MaxKeyIDBytes:
			return nil, fmt.Errorf("JWT authority key ID of %d bytes; want 1 to %d", len(id), MaxKeyIDBytes)
		case len(a.GetPublicKey()) > MaxKeyBytes:
			return nil, fmt.Errorf("JWT authority %q: public key of %d bytes; at most %d", id, len(a.GetPublicKey()), MaxKeyBytes)
		case a.GetExpiresAt() < 0:
			return nil, fmt.Errorf("JWT authority %q: negative expires_at", id)
		}
		pub, err := x509.ParsePKIXPublicKey(a.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: public key does not parse: %w", id, err)
		}
		if err := pki.CheckPublicKey(pub); err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", id, err)
		}
		k := Key{ID: id, Public: pub, DER: slices.Clone(a.GetPublicKey())}
		if a.GetExpiresAt() > 0 {
			k.ExpiresAt = time.Unix(a.GetExpiresAt(), 0)
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b Key) int { return strings.Compare(a.ID, b.ID) })
	for i := 1; i < len(out); i++ {
		if out[i].ID == out[i-1].ID {
			return nil, fmt.Errorf("two JWT authorities with key ID %q", out[i].ID)
		}
	}
	return out, nil
}

// ToProto is the inverse of Parse.
func ToProto(keys []Key) []*pb.JWTAuthority {
	out := make([]*pb.JWTAuthority, 0, len(keys))
	for _, k := range keys {
		a := &pb.JWTAuthority{KeyId: k.ID, PublicKey: k.DER}
		if !k.ExpiresAt.IsZero() {
			a.ExpiresAt = k.ExpiresAt.Unix()
		}
		out = append(out, a)
	}
	return out
}

// Equal reports whether two parsed lists hold the same keys.
func Equal(a, b []Key) bool {
	return slices.EqualFunc(a, b, func(x, y Key) bool {
		return x.ID == y.ID && x.ExpiresAt.Equal(y.ExpiresAt) && string(x.DER) == string(y.DER)
	})
}
