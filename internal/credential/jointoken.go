package credential

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Join tokens are 32 bytes from crypto/rand (256 bits) in unpadded
// base64url: 43 characters, safe in a URL, a shell argument and a file.
const (
	joinTokenBytes = 32
	joinTokenLen   = 43 // base64.RawURLEncoding.EncodedLen(joinTokenBytes)
)

var joinTokenEncoding = base64.RawURLEncoding.Strict()

// NewJoinToken makes a one-time join token and its hash. Give the token to
// the agent that will present it; store only the hash.
func NewJoinToken() (token string, hash []byte, err error) {
	b := make([]byte, joinTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("credential: join token: %w", err)
	}
	token = joinTokenEncoding.EncodeToString(b)
	return token, HashJoinToken(token), nil
}

// HashJoinToken returns the SHA-256 of a join token's text: what the store
// keeps and looks tokens up by. No salt and no slow hash are needed: a token
// has 256 random bits, so neither a dictionary nor brute force can find the
// token from its hash, and an unsalted hash lets the store find a token by
// equality, in one indexed lookup.
func HashJoinToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// JoinTokenID names a join token by its hash, "sha256:" and the first 8 hex
// digits, as logs, errors and 'meshfed token list' show it: enough to tell
// tokens apart, never enough to use one.
func JoinTokenID(hash []byte) string { return "sha256:" + hex.EncodeToString(hash[:4]) }

// TokenConsumer consumes join tokens: the server's store.
type TokenConsumer interface {
	// ConsumeJoinToken marks the unexpired, unused token with this hash as
	// used and returns the SPIFFE ID it was created for, atomically: of any
	// number of concurrent calls for one hash, across every server sharing
	// the store, at most one succeeds. It returns an error wrapping
	// ErrTokenRejected when no such token exists, it expired before now, or
	// it was used already; any other error means the store failed.
	ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (spiffeid.ID, error)
}

// ErrTokenRejected is what a TokenConsumer wraps when it refuses a token, as
// opposed to failing to check it.
var ErrTokenRejected = errors.New("join token rejected")

// JoinTokenVerifier verifies one-time join tokens by consuming them.
type JoinTokenVerifier struct {
	// Consumer consumes tokens. Required.
	Consumer TokenConsumer
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// Verify checks that token is well formed, then consumes it and returns the
// SPIFFE ID it was created for. A token is accepted once: a second Verify of
// the same token fails, on this server or any other sharing the store. A
// malformed token is refused without asking the store.
//
// When the store refuses the token, the message says only "unknown, expired
// or already used". When the store fails, or ctx ends first, the *Error is
// marked Unavailable and its message does not describe the database; the
// store's error is wrapped in the *Error for the server's log.
func (v JoinTokenVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	if v.Consumer == nil {
		return Identity{}, errors.New("credential: join token verifier has no token consumer")
	}
	if token == "" {
		return Identity{}, &Error{Kind: KindJoinToken, Reason: "no join token presented"}
	}
	if len(token) != joinTokenLen {
		return Identity{}, &Error{Kind: KindJoinToken, Reason: fmt.Sprintf(
			"join token is malformed: it is %d characters; a join token is %d", len(token), joinTokenLen)}
	}
	if _, err := joinTokenEncoding.DecodeString(token); err != nil {
		return Identity{}, &Error{Kind: KindJoinToken, Reason: "join token is malformed: a join token is unpadded base64url"}
	}
	hash := HashJoinToken(token)
	name := "join-token " + JoinTokenID(hash)
	id, err := v.Consumer.ConsumeJoinToken(ctx, hash, orNow(v.Clock)())
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return Identity{}, &Error{Kind: KindJoinToken, Reason: fmt.Sprintf(
				"%s could not be checked: %v", name, ctx.Err()), Unavailable: true, Err: err}
		case !errors.Is(err, ErrTokenRejected):
			// The store failed: the token may be good, so the caller should
			// retry rather than make a new one.
			return Identity{}, &Error{Kind: KindJoinToken, Reason: name + " could not be checked: the token store is unavailable",
				Unavailable: true, Err: err}
		}
		return Identity{}, &Error{Kind: KindJoinToken, Reason: name + " is unknown, expired or already used", Err: err}
	}
	if id.IsZero() {
		return Identity{}, fmt.Errorf("credential: the token store returned no SPIFFE ID for %s", name)
	}
	return Identity{ID: id, Kind: KindJoinToken, Caller: name}, nil
}
