package credential

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/meshfed/meshfed/internal/pemfile"
)

// MaxJWKSBytes bounds a JWKS document, from a file or a URL. A Kubernetes
// API server publishes one or two keys in about 1 KiB; 1 MiB (the bound on a
// SPIFFE bundle, which is also a JWK Set) leaves room for any real issuer
// without letting a JWKS endpoint exhaust memory.
const MaxJWKSBytes = 1 << 20

// Timings of JWKS fetched from a URL.
const (
	// jwksRefetchInterval is the least time between two fetches of one
	// issuer's JWKS, whatever asks for them: a JWT with an unknown kid
	// triggers a fetch, so without this an attacker could make the server
	// hammer the issuer.
	jwksRefetchInterval = time.Minute
	// jwksMaxAge is how long fetched keys are used before they are fetched
	// again, so that a key the issuer withdraws stops being accepted. If
	// that fetch fails, the old keys stay in use and the fetch is retried
	// after jwksRefetchInterval.
	jwksMaxAge = 10 * time.Minute
	// jwksFetchTimeout bounds one fetch, connection to last byte.
	jwksFetchTimeout = 10 * time.Second
	// rsa key sizes accepted in a JWKS: below 2048 bits is breakable, above
	// 8192 makes every verification a denial of service.
	minRSABits = 2048
	maxRSABits = 8192
)

// keySet is a parsed JWKS: the public keys usable to verify JWTs.
type keySet struct {
	byKID map[string]*jose.JSONWebKey
	keys  []*jose.JSONWebKey
}

// find returns the key a JWT with header kid names: the key with that kid,
// or the only key when the JWT names none.
func (ks *keySet) find(kid string) (*jose.JSONWebKey, bool) {
	if kid == "" {
		if len(ks.keys) == 1 {
			return ks.keys[0], true
		}
		return nil, false
	}
	k, ok := ks.byKID[kid]
	return k, ok
}

// parseJWKS parses a JWK Set (RFC 7517 §5). It keeps the public keys meant
// for signatures (use absent, "sig" or "jwt-svid") and skips those for other
// uses ("enc", "x509-svid"). It refuses the whole set if any key is
// symmetric ("oct") or private, if a signing key is of a type or size this
// package does not verify with or declares an algorithm it does not allow,
// if two signing keys share a kid, or if no signing key is left. The input
// must be at most MaxJWKSBytes.
func parseJWKS(data []byte) (*keySet, error) {
	if len(data) > MaxJWKSBytes {
		return nil, fmt.Errorf("JWKS is %d bytes; the limit is %d", len(data), MaxJWKSBytes)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("JWKS is not a JSON object: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`JWKS has no "keys" array`)
	}
	ks := &keySet{byKID: make(map[string]*jose.JSONWebKey)}
	for i, raw := range doc.Keys {
		k := new(jose.JSONWebKey)
		if err := k.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		name := fmt.Sprintf("JWKS key %d (kid %s)", i, quote(k.KeyID))
		if _, ok := k.Key.([]byte); ok {
			return nil, fmt.Errorf("%s is a symmetric (oct) key; a JWKS for JWT verification must hold public keys only", name)
		}
		if !k.IsPublic() {
			return nil, fmt.Errorf("%s is a private key; publish only its public part", name)
		}
		switch k.Use {
		case "", "sig", "jwt-svid":
		default:
			continue // a key for encryption or for X.509-SVIDs
		}
		if err := checkJWKSKey(k); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if k.KeyID != "" {
			if _, dup := ks.byKID[k.KeyID]; dup {
				return nil, fmt.Errorf("JWKS has two signing keys with kid %s", quote(k.KeyID))
			}
			ks.byKID[k.KeyID] = k
		}
		ks.keys = append(ks.keys, k)
	}
	if len(ks.keys) == 0 {
		return nil, errors.New("JWKS has no key for verifying signatures")
	}
	return ks, nil
}

// checkJWKSKey refuses a public key this package will not verify with.
func checkJWKSKey(k *jose.JSONWebKey) error {
	if k.Algorithm != "" && !allowedAlg(k.Algorithm) {
		return fmt.Errorf("alg %s is not one of %s", quote(k.Algorithm), allowedAlgList)
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits; use %d to %d", n, minRSABits, maxRSABits)
		}
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return errors.New("ECDSA key on a curve other than P-256, P-384 or P-521")
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("unsupported key type %T", k.Key)
	}
	if k.Algorithm != "" && !keyFitsAlg(k.Key, k.Algorithm) {
		return fmt.Errorf("declares alg %s, which its %s key cannot verify", k.Algorithm, describeKey(k.Key))
	}
	return nil
}

// keyFitsAlg reports whether signature algorithm alg verifies with key.
func keyFitsAlg(key any, alg string) bool {
	switch pub := key.(type) {
	case *rsa.PublicKey:
		switch jose.SignatureAlgorithm(alg) {
		case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
			return true
		}
	case *ecdsa.PublicKey:
		switch jose.SignatureAlgorithm(alg) {
		case jose.ES256:
			return pub.Curve == elliptic.P256()
		case jose.ES384:
			return pub.Curve == elliptic.P384()
		case jose.ES512:
			return pub.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return jose.SignatureAlgorithm(alg) == jose.EdDSA
	}
	return false
}

// describeKey names a key's type for a message.
func describeKey(key any) string {
	switch pub := key.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", pub.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + pub.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", key)
}

// keySource yields one issuer's keys.
type keySource interface {
	// current returns the keys to verify with now.
	current(ctx context.Context) (*keySet, error)
	// refresh returns keys newer than seen if the source can get them; it
	// may return seen itself (nothing newer, or not allowed to look yet).
	refresh(ctx context.Context, seen *keySet) (*keySet, error)
}

// fileSource reads a JWKS file and reads it again when its modification
// time or size changes. A replacement that does not parse is refused and
// so are the JWTs verified meanwhile (the old keys are not kept: the
// replacement may have been made to withdraw one); the file is read again
// at each verification until it is good.
type fileSource struct {
	issuer string
	path   string

	mu      sync.Mutex
	keys    *keySet
	modTime time.Time
	size    int64
}

func newFileSource(issuer, path string) (*fileSource, error) {
	s := &fileSource{issuer: issuer, path: path}
	if _, err := s.current(context.Background()); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *fileSource) current(context.Context) (*keySet, error) {
	fi, err := os.Stat(s.path)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.keys != nil && fi.ModTime().Equal(s.modTime) && fi.Size() == s.size {
		return s.keys, nil
	}
	if err == nil {
		err = s.load()
	}
	if err != nil {
		return nil, &Error{
			Kind:        KindKubernetesJWT,
			Reason:      fmt.Sprintf("JWKS file of issuer %s: %v", quote(s.issuer), err),
			Unavailable: true,
			Err:         err,
		}
	}
	return s.keys, nil
}

// load reads and parses the file; s.mu is held.
func (s *fileSource) load() error {
	f, err := os.Open(s.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	data, err := pemfile.ReadAll(f, MaxJWKSBytes)
	if err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	ks, err := parseJWKS(data)
	if err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	s.keys, s.modTime, s.size = ks, fi.ModTime(), fi.Size()
	return nil
}

// The file is checked at every verification, so there is nothing newer to
// look for.
func (s *fileSource) refresh(ctx context.Context, _ *keySet) (*keySet, error) {
	return s.current(ctx)
}

// urlSource fetches a JWKS over HTTPS and caches it. It fetches when it has
// no keys, when its keys are older than jwksMaxAge, and when a JWT names a
// kid it does not have, but never twice within jwksRefetchInterval; one
// fetch runs at a time.
type urlSource struct {
	issuer string
	url    string
	client *http.Client
	clock  func() time.Time

	sem chan struct{} // holds a token while a fetch runs

	mu        sync.Mutex
	keys      *keySet   // nil until a fetch succeeds
	fetched   time.Time // when keys were fetched
	attempted time.Time // when the last fetch started
	lastErr   error     // why the last fetch failed, nil if it succeeded
}

func (s *urlSource) current(ctx context.Context) (*keySet, error) {
	s.mu.Lock()
	ks, fresh := s.keys, s.clock().Sub(s.fetched) < jwksMaxAge
	s.mu.Unlock()
	if ks != nil && fresh {
		return ks, nil
	}
	// With no keys, wait for them; with stale ones, refresh them unless
	// another caller is already doing so, and meanwhile use them.
	return s.fetch(ctx, ks, ks == nil)
}

func (s *urlSource) refresh(ctx context.Context, seen *keySet) (*keySet, error) {
	return s.fetch(ctx, seen, true)
}

// fetch returns keys newer than seen: fetched now, or fetched by another
// caller while this one waited. When it may not fetch yet, or the fetch
// fails, it returns the keys it has, if any. If wait is false and another
// fetch is running, it returns seen at once.
func (s *urlSource) fetch(ctx context.Context, seen *keySet, wait bool) (*keySet, error) {
	if err := ctx.Err(); err != nil {
		return nil, s.unavailable("waiting for its JWKS", err)
	}
	if wait {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, s.unavailable("waiting for its JWKS", ctx.Err())
		}
	} else {
		select {
		case s.sem <- struct{}{}:
		default:
			return seen, nil
		}
	}
	defer func() { <-s.sem }()

	s.mu.Lock()
	now := s.clock()
	if s.keys != seen {
		ks := s.keys
		s.mu.Unlock()
		return ks, nil
	}
	if next := s.attempted.Add(jwksRefetchInterval); !s.attempted.IsZero() && now.Before(next) {
		ks, lastErr := s.keys, s.lastErr
		s.mu.Unlock()
		if ks == nil {
			return nil, s.unavailable(fmt.Sprintf("its JWKS was not fetched (the next try is at %s)", formatTime(next)), lastErr)
		}
		return ks, nil
	}
	prev := s.attempted
	s.attempted = now
	s.mu.Unlock()

	ks, err := s.get(ctx)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && ctx.Err() != nil {
		// The caller gave up: that says nothing about the issuer, and must
		// not cost the next caller its fetch.
		s.attempted = prev
		return nil, s.unavailable("fetching its JWKS", ctx.Err())
	}
	s.lastErr = err
	if err != nil {
		if s.keys == nil {
			return nil, s.unavailable("fetching its JWKS", err)
		}
		return s.keys, nil
	}
	s.keys, s.fetched = ks, now
	return ks, nil
}

// get fetches and parses the JWKS.
func (s *urlSource) get(ctx context.Context) (*keySet, error) {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", s.url, resp.Status)
	}
	data, err := pemfile.ReadAll(resp.Body, MaxJWKSBytes)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", s.url, err)
	}
	ks, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", s.url, err)
	}
	return ks, nil
}

func (s *urlSource) unavailable(doing string, err error) *Error {
	reason := fmt.Sprintf("issuer %s: %s", quote(s.issuer), doing)
	if err != nil {
		reason += ": " + err.Error()
	}
	return &Error{Kind: KindKubernetesJWT, Reason: reason, Unavailable: true, Err: err}
}

// defaultHTTPClient fetches JWKS when the configuration names no client. It
// follows redirects only to https URLs.
func defaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: jwksFetchTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to %s refused: JWKS are fetched over https only", req.URL.Redacted())
			}
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			return nil
		},
	}
}
