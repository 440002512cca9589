package workloadapi

import (
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bounds of the verified-token cache of ValidateJWTSVID.
const (
	// defaultJWTCacheSize is Config.JWTCacheSize when it is zero.
	defaultJWTCacheSize = 1000
	// maxCachedTokenBytes bounds the tokens the cache keeps, and with it
	// the memory of an entry: a JWT-SVID of one audience is well under
	// 1 KiB, but a workload may have one signed for 16 audiences of 2 KiB
	// (32 KiB), and such a token is validated every time rather than kept.
	maxCachedTokenBytes = 4 << 10
)

// jwtCache remembers the JWT-SVIDs ValidateJWTSVID has verified, so that a
// workload presenting the same token again is answered without checking
// its signature again (as Envoy's jwt_authn does with jwt_cache_config).
//
// An entry is only ever a shortcut to the decision jwtsvid.ParseAndValidate
// would make now. That decision depends on the token (the key is its
// SHA-256; the cache never holds the token itself), on the key the
// caller's bundles have for the token's trust domain and key ID, and on the
// clock and the audience asked for. So a lookup hits only if
//
//   - the Source has not changed since the bundles of the validation were
//     read (its Changed channel is still open), and
//   - the caller's bundle set (built exactly as for a validation) has a
//     bundle for the token's trust domain, with the same key under the
//     token's key ID,
//
// and then checks the token's registered claims (aud, nbf, exp, iat) with
// go-jose's jwt.Claims.Validate, as jwtsvid does, against the audience of
// the request and the cache's clock, with jwtsvid's error texts. Anything
// else is a miss, validated in full. Failed validations are never kept.
//
// The cache holds at most size entries; when it is full, the oldest
// insertion is dropped (a ring of keys, O(1)). An entry keeps a digest, the
// response (SPIFFE ID and claims), the parsed registered claims and the key
// ID of a token of at most maxCachedTokenBytes: measured, 1.1 KiB of heap
// for a token of 300 bytes, 6 KiB for one of 2.4 KiB (16 audiences), so at
// most about 10 KiB. An entry the Source's change or another key made stale
// stays until it is replaced or evicted.
type jwtCache struct {
	// clock is what a hit checks exp, nbf and iat with: time.Now, the
	// clock jwtsvid.ParseAndValidate uses, unless a test sets another.
	clock func() time.Time
	hits  atomic.Uint64 // lookups answered, for tests and metrics

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*verifiedToken
	ring    [][sha256.Size]byte // insertion order; ring[next] is the oldest
	next    int
}

// verifiedToken is what a successful validation of a token established.
type verifiedToken struct {
	slot    int                  // its place in the ring
	changed <-chan struct{}      // the Source's, taken before the bundles were read
	td      spiffeid.TrustDomain // of its subject: whose bundle verified it
	kid     string
	key     crypto.PublicKey // that verified its signature
	claims  jwt.Claims       // the registered claims, as jwtsvid checks them
	resp    *workload.ValidateJWTSVIDResponse
}

// newJWTCache returns a cache of size entries, or nil (no cache) if size is
// negative; zero means defaultJWTCacheSize.
func newJWTCache(size int) *jwtCache {
	if size < 0 {
		return nil
	}
	if size == 0 {
		size = defaultJWTCacheSize
	}
	return &jwtCache{
		clock:   time.Now,
		entries: make(map[[sha256.Size]byte]*verifiedToken, size),
		ring:    make([][sha256.Size]byte, size),
	}
}

// cacheable reports whether a token may be kept, and its digest.
func (c *jwtCache) cacheable(token string) ([sha256.Size]byte, bool) {
	if c == nil || len(token) > maxCachedTokenBytes {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256([]byte(token)), true
}

// lookup returns, if the token of digest sum was verified and that still
// holds for a caller trusting set, the response, or the error jwtsvid
// would return for its claims now (hit true); hit false means: validate.
func (c *jwtCache) lookup(sum [sha256.Size]byte, set *jwtbundle.Set, audience string) (resp *workload.ValidateJWTSVIDResponse, hit bool, err error) {
	c.mu.Lock()
	e, ok := c.entries[sum]
	c.mu.Unlock()
	if !ok {
		return nil, false, nil
	}
	select {
	case <-e.changed:
		return nil, false, nil // bundles may have changed: validate again
	default:
	}
	bundle, ok := set.Get(e.td)
	if !ok {
		return nil, false, nil // not trusted by this caller: jwtsvid will say so
	}
	authority, ok := bundle.FindJWTAuthority(e.kid)
	if !ok || !samePublicKey(authority, e.key) {
		return nil, false, nil
	}
	c.hits.Add(1)
	audiences := []string{audience}
	if err := e.claims.Validate(jwt.Expected{AnyAudience: audiences, Time: c.clock()}); err != nil {
		if errors.Is(err, jwt.ErrExpired) {
			c.drop(sum, e) // it will not validate again
		}
		return nil, true, claimsError(err, audiences, e.claims.Audience)
	}
	return e.resp, true, nil
}

// claimsError is the error jwtsvid.ParseAndValidate returns when the
// registered claims do not validate (svid.go, parse).
func claimsError(err error, audience []string, claimed jwt.Audience) error {
	switch err {
	case jwt.ErrExpired:
		return errors.New("jwtsvid: token has expired")
	case jwt.ErrInvalidAudience:
		return fmt.Errorf("jwtsvid: expected audience in %q (audience=%q)", audience, claimed)
	}
	return err
}

// add keeps what the quick validation of a token (digest sum) with the
// bundles read after changed (the Source's channel) established, and resp,
// the answer made of it. (Tokens only jwtsvid validates, of rarer forms,
// are not kept: they are validated in full each time.)
func (c *jwtCache) add(sum [sha256.Size]byte, changed <-chan struct{}, v quickResult, resp *workload.ValidateJWTSVIDResponse) {
	e := &verifiedToken{changed: changed, td: v.id.TrustDomain(), kid: v.kid, key: v.key, claims: v.claims, resp: resp}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[c.ring[c.next]]; ok && old.slot == c.next {
		delete(c.entries, c.ring[c.next])
	}
	e.slot = c.next
	c.ring[c.next] = sum
	c.entries[sum] = e // replaces an older entry of the token, whose slot is then stale
	c.next = (c.next + 1) % len(c.ring)
}

// drop removes e, unless another entry for its token replaced it.
func (c *jwtCache) drop(sum [sha256.Size]byte, e *verifiedToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[sum] == e {
		delete(c.entries, sum)
	}
}

// len is the number of entries.
func (c *jwtCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// samePublicKey reports whether a and b are the same key; keys of the
// standard library have an Equal method, and a key without one is never
// the same.
func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
