package workloadapi

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	_ "crypto/sha256" // the hashes of the algorithms below
	_ "crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A quick validation of a JWT-SVID.
//
// ValidateJWTSVID's answer is go-spiffe's jwtsvid.ParseAndValidate's. That
// parses the token with go-jose, whose JSON decoder and header handling
// cost about a third as much again as the ECDSA verification itself
// (BenchmarkQuickValidate: 87 µs, 162 allocations and 9.5 KB for a new
// ES256 token, against 64 µs for the verification alone), and the cache
// then parsed the token a second time to learn its key ID and claims.
//
// quickValidate reads the tokens agents and SPIRE actually issue — a
// compact JWS with a protected header of alg, kid and typ only, signed with
// ES256/384/512 or RS256/384/512 — in one pass with the standard library
// (74 µs, 84 allocations, 4.1 KB), and accepts a token only if every check
// jwtsvid makes passes. Anything else, every refusal included, it leaves to
// jwtsvid (ok false), which then makes the decision and words it. So
// quickValidate may only ever say yes where jwtsvid would say yes, with the
// same SPIFFE ID and claims; FuzzQuickValidate checks exactly that against
// jwtsvid itself. Where the two libraries' JSON differ (go-jose's decoder
// refuses duplicate keys and matches claim names by case; encoding/json
// does neither), quickValidate declines.

// quickAlgorithms are the signature algorithms quickValidate checks, with
// their hash and, for ECDSA, the curve the key must be on and the size of
// r and s (as go-jose checks them).
var quickAlgorithms = map[string]struct {
	hash    crypto.Hash
	curve   elliptic.Curve // nil for RSA (PKCS #1 v1.5)
	keySize int
}{
	"ES256": {crypto.SHA256, elliptic.P256(), 32},
	"ES384": {crypto.SHA384, elliptic.P384(), 48},
	"ES512": {crypto.SHA512, elliptic.P521(), 66},
	"RS256": {hash: crypto.SHA256},
	"RS384": {hash: crypto.SHA384},
	"RS512": {hash: crypto.SHA512},
}

// registeredClaims are the claims go-jose's jwt.Claims decodes. Its
// decoder matches object keys to them without regard to case (as
// encoding/json does), so a token with a key that matches one only that
// way is left to jwtsvid.
var registeredClaims = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}

// maxQuickNumericDate bounds the dates quickValidate reads: go-jose
// refuses 2^62 seconds and beyond; anything past this bound (year 33658)
// is left to it.
const maxQuickNumericDate = 1 << 40

// quickResult is what quickValidate established.
type quickResult struct {
	id     spiffeid.ID
	kid    string
	key    crypto.PublicKey // that verified the signature
	claims jwt.Claims       // the registered claims, as jwtsvid checks them
	all    map[string]any   // every claim, as jwtsvid returns them
}

// strictBase64 is base64url without padding that also refuses non-zero
// trailing bits, so that a part decoded is the encoding go-jose signs and
// verifies over (it re-encodes what it decoded).
var strictBase64 = base64.RawURLEncoding.Strict()

// quickValidate validates token for audience against set at now, as
// jwtsvid.ParseAndValidate(token, set, []string{audience}) does, when the
// token is of the common form above; ok is false if it is not, or if any
// check fails.
func quickValidate(token string, set *jwtbundle.Set, audience string, now time.Time) (r quickResult, ok bool) {
	if !compactJWSChars(token) {
		return r, false
	}
	headerPart, rest, ok1 := strings.Cut(token, ".")
	payloadPart, sigPart, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sigPart, ".") {
		return r, false
	}

	// The protected header: alg, kid (not empty) and typ (JWT or JOSE, or
	// none), each a string, and nothing else.
	var header map[string]any
	if !decodePart(headerPart, &header) {
		return r, false
	}
	alg, kid, typ := stringField(header, "alg"), stringField(header, "kid"), stringField(header, "typ")
	if alg == nil || kid == nil || *kid == "" {
		return r, false
	}
	fields := 2
	if typ != nil {
		if *typ != "JWT" && *typ != "JOSE" {
			return r, false
		}
		fields = 3
	}
	if len(header) != fields {
		return r, false
	}
	spec, known := quickAlgorithms[*alg]
	if !known {
		return r, false
	}

	// The claims, as go-jose decodes them into jwt.Claims and a map.
	if !decodePart(payloadPart, &r.all) || r.all == nil {
		return r, false
	}
	for k := range r.all {
		if !asciiKey(k) {
			return r, false
		}
		for _, c := range registeredClaims {
			if k != c && strings.EqualFold(k, c) {
				return r, false
			}
		}
	}
	if !registered(r.all, &r.claims) || r.claims.Subject == "" || r.claims.Expiry == nil {
		return r, false
	}
	id, err := spiffeid.FromString(r.claims.Subject)
	if err != nil {
		return r, false
	}

	// The key: the caller's bundle for the subject's trust domain, under
	// the token's key ID.
	bundle, found := set.Get(id.TrustDomain())
	if !found {
		return r, false
	}
	key, found := bundle.FindJWTAuthority(*kid)
	if !found {
		return r, false
	}
	sig, err := strictBase64.DecodeString(sigPart)
	if err != nil || !verifySignature(spec.hash, spec.curve, spec.keySize, key, token[:len(headerPart)+1+len(payloadPart)], sig) {
		return r, false
	}

	if r.claims.Validate(jwt.Expected{AnyAudience: []string{audience}, Time: now}) != nil {
		return r, false
	}
	r.id, r.kid, r.key = id, *kid, key
	return r, true
}

// compactJWSChars reports whether token has only the characters of
// base64url and the dots between its parts. (The base64 decoder skips CR
// and LF, so a part with them would decode to what go-jose verifies over
// re-encoded, without them, while the signature is checked here over the
// token as it is.)
func compactJWSChars(token string) bool {
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// decodePart decodes one base64url part of a token into v, a JSON object.
func decodePart(part string, v any) bool {
	raw, err := strictBase64.DecodeString(part)
	if err != nil || len(raw) == 0 || raw[0] != '{' || !uniqueKeys(raw) {
		return false
	}
	return json.Unmarshal(raw, v) == nil
}

// uniqueKeys reports whether no object in raw has a key twice: go-jose's
// decoder (a fork of encoding/json) refuses such input, where
// encoding/json keeps the last value. It only finds the keys; whether raw
// is JSON at all is json.Unmarshal's to say after it. A key with an escape
// in it counts as a duplicate (it is left to go-jose, which compares keys
// unescaped).
func uniqueKeys(raw []byte) bool {
	type container struct {
		object bool
		key    bool     // an object's next string is a key
		keys   [][]byte // an object's keys so far
	}
	var open []container
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '{':
			open = append(open, container{object: true, key: true})
		case '[':
			open = append(open, container{})
		case '}', ']':
			if len(open) == 0 {
				return false
			}
			open = open[:len(open)-1]
		case ',':
			if n := len(open); n > 0 && open[n-1].object {
				open[n-1].key = true
			}
		case '"':
			j, escaped := i+1, false
			for ; j < len(raw) && raw[j] != '"'; j++ {
				if raw[j] == '\\' {
					escaped = true
					j++
				}
			}
			if n := len(open); n > 0 && open[n-1].object && open[n-1].key {
				top := &open[n-1]
				k := raw[i+1 : min(j, len(raw))]
				if escaped || slices.ContainsFunc(top.keys, func(seen []byte) bool { return bytes.Equal(seen, k) }) {
					return false
				}
				top.keys = append(top.keys, k)
				top.key = false
			}
			i = j
		}
	}
	return true
}

// stringField returns m[k] if it is a string, else nil (absent, null or
// another type).
func stringField(m map[string]any, k string) *string {
	s, ok := m[k].(string)
	if !ok {
		return nil
	}
	return &s
}

// asciiKey reports whether k is printable ASCII and valid UTF-8 (so that
// no Unicode case folding can make it match a registered claim).
func asciiKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// registered fills c from the claims in all, as go-jose's decoder would,
// and reports false where a claim has a form it would refuse, or a null
// (which it skips, and which is left to it).
func registered(all map[string]any, c *jwt.Claims) bool {
	for _, f := range [...]struct {
		name string
		dst  *string
	}{{"iss", &c.Issuer}, {"sub", &c.Subject}, {"jti", &c.ID}} {
		v, present := all[f.name]
		if !present {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return false
		}
		*f.dst = s
	}
	if v, present := all["aud"]; present {
		switch aud := v.(type) {
		case string:
			c.Audience = jwt.Audience{aud}
		case []any:
			c.Audience = make(jwt.Audience, len(aud))
			for i, a := range aud {
				s, ok := a.(string)
				if !ok {
					return false
				}
				c.Audience[i] = s
			}
		default:
			return false
		}
	}
	for _, d := range [...]struct {
		name string
		date **jwt.NumericDate
	}{{"exp", &c.Expiry}, {"nbf", &c.NotBefore}, {"iat", &c.IssuedAt}} {
		v, present := all[d.name]
		if !present {
			continue
		}
		f, ok := v.(float64)
		if !ok || f >= maxQuickNumericDate || f <= -maxQuickNumericDate {
			return false
		}
		n := jwt.NumericDate(f)
		*d.date = &n
	}
	return true
}

// verifySignature checks sig over input with key, as go-jose does for the
// algorithm of hash, curve and keySize: ECDSA with r and s of keySize bytes
// each and a key on curve, or RSA PKCS #1 v1.5 when curve is nil.
func verifySignature(hash crypto.Hash, curve elliptic.Curve, keySize int, key crypto.PublicKey, input string, sig []byte) bool {
	h := hash.New()
	h.Write([]byte(input))
	digest := h.Sum(nil)
	if curve == nil {
		k, ok := key.(*rsa.PublicKey)
		return ok && k != nil && rsa.VerifyPKCS1v15(k, hash, digest, sig) == nil
	}
	k, ok := key.(*ecdsa.PublicKey)
	if !ok || k == nil || k.Curve != curve || len(sig) != 2*keySize {
		return false
	}
	r := new(big.Int).SetBytes(sig[:keySize])
	s := new(big.Int).SetBytes(sig[keySize:])
	return ecdsa.Verify(k, digest, r, s)
}
