package credential

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of JWTConfig.
const (
	// DefaultLeeway is the clock skew allowed on exp, nbf and iat.
	DefaultLeeway = 30 * time.Second
	// DefaultMaxTokenBytes bounds a JWT. A Kubernetes projected
	// service-account token is about 1 KiB (RS256 signature, pod and node
	// claims); 16 KiB is above any real one and keeps the JSON parsing and
	// the signature check of a hostile token cheap.
	DefaultMaxTokenBytes = 16 << 10
)

// allowedAlgs are the signature algorithms a JWT may use: asymmetric only.
// "none" and every HMAC algorithm (HS256, …) are refused before any key is
// looked up, which is what defeats "HMAC keyed with the issuer's public
// key".
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

var allowedAlgList = func() string {
	names := make([]string, len(allowedAlgs))
	for i, a := range allowedAlgs {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}()

func allowedAlg(alg string) bool {
	return slices.Contains(allowedAlgs, jose.SignatureAlgorithm(alg))
}

// Issuer is a JWT issuer whose tokens the server accepts.
type Issuer struct {
	// Issuer is the exact "iss" claim, e.g.
	// "https://kubernetes.default.svc.cluster.local".
	Issuer string
	// JWKSFile is a file holding the issuer's JWK Set. It is read again
	// when it changes. Exactly one of JWKSFile and JWKSURL is set.
	JWKSFile string
	// JWKSURL is an https URL serving the issuer's JWK Set, e.g.
	// "https://kubernetes.default.svc/openid/v1/jwks".
	JWKSURL string
	// Audiences are the "aud" values accepted; a token must carry at least
	// one of them. At least one is required.
	Audiences []string
}

// JWTConfig configures a JWTVerifier.
type JWTConfig struct {
	// TrustDomain is the trust domain of the SPIFFE IDs granted. Required.
	TrustDomain spiffeid.TrustDomain
	// Issuers are the issuers trusted. At least one is required.
	Issuers []Issuer
	// Clock defaults to time.Now.
	Clock func() time.Time
	// Leeway is the clock skew allowed on exp, nbf and iat; DefaultLeeway
	// if zero.
	Leeway time.Duration
	// HTTPClient fetches JWKS from URLs. The default follows redirects to
	// https only and times out after 10 s; pass one with the issuer's CA
	// and any credential it needs (a Kubernetes API server wants a token).
	HTTPClient *http.Client
	// MaxTokenBytes bounds a JWT; DefaultMaxTokenBytes (16 KiB) if zero.
	MaxTokenBytes int
}

// JWTVerifier verifies Kubernetes-style service-account JWTs. It is safe for
// concurrent use.
type JWTVerifier struct {
	td       spiffeid.TrustDomain
	issuers  map[string]*issuer
	clock    func() time.Time
	leeway   time.Duration
	maxBytes int
}

type issuer struct {
	name      string
	audiences []string
	keys      keySource
}

// NewJWTVerifier checks cfg, fills in its defaults and reads every JWKS
// file. JWKS URLs are fetched when the first token of their issuer arrives.
func NewJWTVerifier(cfg JWTConfig) (*JWTVerifier, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("credential: JWT verifier: a trust domain is required")
	}
	if len(cfg.Issuers) == 0 {
		return nil, errors.New("credential: JWT verifier: no issuers; configure at least one")
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("credential: JWT verifier: negative leeway %s", cfg.Leeway)
	}
	if cfg.MaxTokenBytes < 0 {
		return nil, fmt.Errorf("credential: JWT verifier: negative MaxTokenBytes %d", cfg.MaxTokenBytes)
	}
	v := &JWTVerifier{
		td:       cfg.TrustDomain,
		issuers:  make(map[string]*issuer, len(cfg.Issuers)),
		clock:    orNow(cfg.Clock),
		leeway:   cfg.Leeway,
		maxBytes: cfg.MaxTokenBytes,
	}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	}
	if v.maxBytes == 0 {
		v.maxBytes = DefaultMaxTokenBytes
	}
	client := cfg.HTTPClient
	if client == nil {
		client = defaultHTTPClient()
	}
	for _, ic := range cfg.Issuers {
		iss, err := newIssuer(ic, client, v.clock)
		if err != nil {
			return nil, fmt.Errorf("credential: JWT issuer %s: %w", quote(ic.Issuer), err)
		}
		if _, dup := v.issuers[iss.name]; dup {
			return nil, fmt.Errorf("credential: JWT issuer %s is configured twice", quote(ic.Issuer))
		}
		v.issuers[iss.name] = iss
	}
	return v, nil
}

func newIssuer(ic Issuer, client *http.Client, clock func() time.Time) (*issuer, error) {
	if ic.Issuer == "" {
		return nil, errors.New("the issuer (iss) is empty")
	}
	if len(ic.Audiences) == 0 {
		return nil, errors.New("no audiences; a token for any audience would be accepted")
	}
	if slices.Contains(ic.Audiences, "") {
		return nil, errors.New("an audience is empty")
	}
	iss := &issuer{name: ic.Issuer, audiences: slices.Clone(ic.Audiences)}
	switch {
	case ic.JWKSFile != "" && ic.JWKSURL != "":
		return nil, errors.New("both a JWKS file and a JWKS URL; set one")
	case ic.JWKSFile != "":
		src, err := newFileSource(ic.Issuer, ic.JWKSFile)
		if err != nil {
			return nil, err
		}
		iss.keys = src
	case ic.JWKSURL != "":
		u, err := url.Parse(ic.JWKSURL)
		if err != nil {
			return nil, fmt.Errorf("JWKS URL: %w", err)
		}
		if u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("JWKS URL %s: an https URL is required", u.Redacted())
		}
		iss.keys = &urlSource{
			issuer: ic.Issuer,
			url:    u.String(),
			client: client,
			clock:  clock,
			sem:    make(chan struct{}, 1),
		}
	default:
		return nil, errors.New("no JWKS file or URL; set one")
	}
	return iss, nil
}

// tokenClaims are the claims read from a JWT besides the registered ones.
type tokenClaims struct {
	Kubernetes *kubernetesClaim `json:"kubernetes.io"`
}

// kubernetesClaim is the "kubernetes.io" claim of a projected
// service-account token.
type kubernetesClaim struct {
	Namespace      string `json:"namespace"`
	ServiceAccount *struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"serviceaccount"`
}

// legacySubjectPrefix starts the "sub" of every service-account token.
const legacySubjectPrefix = "system:serviceaccount:"

func refuseJWT(format string, args ...any) *Error {
	return &Error{Kind: KindKubernetesJWT, Reason: fmt.Sprintf(format, args...)}
}

// Verify verifies a service-account JWT (the bare token, without "Bearer ")
// and returns the identity it grants: spiffe://<td>/ns/<namespace>/sa/<name>.
// The checks, in order: size; an allowed asymmetric alg; a configured
// issuer; a key of that issuer named by kid (the only key if the token has
// no kid), fetching the issuer's JWKS again for an unknown kid at most once a
// minute; the signature; exp (required), nbf and iat with the leeway; an
// audience of the issuer's; the service account, from the "kubernetes.io"
// claim or else from "sub", which must agree when both are present.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, refuseJWT("no JWT presented")
	}
	if len(token) > v.maxBytes {
		return Identity{}, refuseJWT("JWT is %d bytes; the limit is %d", len(token), v.maxBytes)
	}
	tok, err := jwt.ParseSigned(token, allowedAlgs)
	if err != nil {
		if bad, ok := errors.AsType[*jose.ErrUnexpectedSignatureAlgorithm](err); ok {
			return Identity{}, refuseJWT("JWT signed with alg %s; allowed: %s", quote(string(bad.Got)), allowedAlgList)
		}
		e := refuseJWT("JWT is malformed: not a JWS in compact form with a valid header")
		e.Err = err
		return Identity{}, e
	}
	if len(tok.Headers) != 1 {
		return Identity{}, refuseJWT("JWT has %d signatures; want 1", len(tok.Headers))
	}
	header := tok.Headers[0]
	// Decoded once, before the signature is checked, to find the issuer;
	// they become the issuer's claims when the signature over this same
	// payload verifies below.
	var claims jwt.Claims
	var extra tokenClaims
	if err := tok.UnsafeClaimsWithoutVerification(&claims, &extra); err != nil {
		e := refuseJWT("JWT claims are malformed: not a JSON object with valid registered claims")
		e.Err = err
		return Identity{}, e
	}
	if claims.Issuer == "" {
		return Identity{}, refuseJWT("JWT has no issuer (iss)")
	}
	iss, ok := v.issuers[claims.Issuer]
	if !ok {
		return Identity{}, refuseJWT("JWT issuer %s is not a configured issuer", quote(claims.Issuer))
	}

	key, err := iss.key(ctx, header.KeyID)
	if err != nil {
		return Identity{}, err
	}
	alg := header.Algorithm
	if key.Algorithm != "" && key.Algorithm != alg {
		return Identity{}, refuseJWT("JWT alg %s does not match key %s of issuer %s, which is for %s",
			quote(alg), quote(key.KeyID), quote(iss.name), quote(key.Algorithm))
	}
	if !keyFitsAlg(key.Key, alg) {
		return Identity{}, refuseJWT("JWT alg %s cannot be verified with key %s of issuer %s (%s)",
			quote(alg), quote(key.KeyID), quote(iss.name), describeKey(key.Key))
	}
	if err := tok.Claims(key.Key); err != nil {
		e := refuseJWT("JWT signature does not verify with key %s of issuer %s", quote(key.KeyID), quote(iss.name))
		e.Err = err
		return Identity{}, e
	}

	// From here on the claims are the issuer's.
	now := v.clock()
	if claims.Expiry == nil {
		return Identity{}, refuseJWT("JWT has no expiry (exp); tokens without one are refused")
	}
	exp := claims.Expiry.Time()
	if now.Add(-v.leeway).After(exp) {
		return Identity{}, refuseJWT("JWT expired at %s", formatTime(exp))
	}
	if claims.NotBefore != nil && now.Add(v.leeway).Before(claims.NotBefore.Time()) {
		return Identity{}, refuseJWT("JWT is not valid before %s", formatTime(claims.NotBefore.Time()))
	}
	if claims.IssuedAt != nil && now.Add(v.leeway).Before(claims.IssuedAt.Time()) {
		return Identity{}, refuseJWT("JWT was issued at %s, in the future", formatTime(claims.IssuedAt.Time()))
	}
	if !slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(iss.audiences, a) }) {
		want := quote(iss.audiences[0])
		if len(iss.audiences) > 1 {
			want = "any of " + quoteList(iss.audiences)
		}
		return Identity{}, refuseJWT("JWT audience %s does not include %s", quoteList(claims.Audience), want)
	}

	ns, sa, err := serviceAccount(claims.Subject, extra.Kubernetes)
	if err != nil {
		return Identity{}, err
	}
	id, err := spiffeid.FromSegments(v.td, "ns", ns, "sa", sa)
	if err != nil { // unreachable: DNS names are valid path segments
		return Identity{}, refuseJWT("service account %s/%s makes no valid SPIFFE ID: %v", ns, sa, err)
	}
	return Identity{
		ID:      id,
		Kind:    KindKubernetesJWT,
		Caller:  fmt.Sprintf("iss=%s sub=%s", claims.Issuer, claims.Subject),
		Expires: exp,
	}, nil
}

// key returns the key a JWT with header kid is verified with.
func (iss *issuer) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	ks, err := iss.keys.current(ctx)
	if err != nil {
		return nil, err
	}
	k, ok := ks.find(kid)
	if !ok && kid != "" {
		if ks, err = iss.keys.refresh(ctx, ks); err != nil {
			return nil, err
		}
		k, ok = ks.find(kid)
	}
	if ok {
		return k, nil
	}
	if kid == "" {
		return nil, refuseJWT("JWT has no key ID (kid) and issuer %s has %d keys; a kid is required to choose one",
			quote(iss.name), len(ks.keys))
	}
	return nil, refuseJWT("no key %s from issuer %s", quote(kid), quote(iss.name))
}

// serviceAccount returns the namespace and service account a token names:
// from its kubernetes.io claim if it has one, else from a legacy subject
// "system:serviceaccount:<ns>:<sa>". When both are present they must agree.
func serviceAccount(sub string, k8s *kubernetesClaim) (ns, sa string, err error) {
	var subNS, subSA string
	legacy := false
	if rest, ok := strings.CutPrefix(sub, legacySubjectPrefix); ok {
		subNS, subSA, legacy = strings.Cut(rest, ":")
	}
	switch {
	case k8s != nil:
		if k8s.ServiceAccount == nil || k8s.ServiceAccount.Name == "" {
			return "", "", refuseJWT("JWT kubernetes.io claim names no service account")
		}
		ns, sa = k8s.Namespace, k8s.ServiceAccount.Name
		if sub != "" && (!legacy || subNS != ns || subSA != sa) {
			return "", "", refuseJWT("JWT sub %s disagrees with its kubernetes.io claim (namespace %s, service account %s)",
				quote(sub), quote(ns), quote(sa))
		}
	case legacy:
		ns, sa = subNS, subSA
	default:
		return "", "", refuseJWT("JWT names no Kubernetes service account: no kubernetes.io claim and sub %s is not %s<namespace>:<name>",
			quote(sub), legacySubjectPrefix)
	}
	if !isDNSLabel(ns) {
		return "", "", refuseJWT("JWT namespace %s is not a valid Kubernetes namespace (a DNS-1123 label)", quote(ns))
	}
	if !isDNSSubdomain(sa) {
		return "", "", refuseJWT("JWT service account %s is not a valid Kubernetes name (a DNS-1123 subdomain)", quote(sa))
	}
	return ns, sa, nil
}

// isDNSLabel reports whether s is an RFC 1123 label as Kubernetes checks it
// for namespaces: 1 to 63 of a-z, 0-9 and '-', starting and ending with an
// alphanumeric.
func isDNSLabel(s string) bool { return len(s) <= 63 && isLabelChars(s) }

// isDNSSubdomain reports whether s is an RFC 1123 subdomain as Kubernetes
// checks it for most names, service accounts included: at most 253
// characters, labels as in isDNSLabel (of any length) joined by '.'.
func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isLabelChars(label) {
			return false
		}
	}
	return true
}

// isLabelChars reports whether s is non-empty, of a-z, 0-9 and '-', and
// starts and ends with an alphanumeric.
func isLabelChars(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}
