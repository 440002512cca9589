package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	secv1beta1 "istio.io/api/security/v1beta1"
)

// Bounds on untrusted JWT input.
const (
	// MaxTokenSize bounds one JWT (Envoy's default header limit is 60 KiB;
	// a token is far smaller).
	MaxTokenSize = 16 << 10
	// MaxJWKSSize bounds one JSON Web Key Set.
	MaxJWKSSize = 256 << 10
	// ClockSkew is the leeway on exp and nbf, Envoy's default of 60 s.
	ClockSkew = 60 * time.Second
)

// signatureAlgorithms are those Envoy's jwt_authn accepts.
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// JWKSFetcher supplies the key set of a jwksUri rule. A Set never fetches
// anything itself: JWKSCache is the fetcher of a running proxy, and
// `meshfed policy explain` reads key sets from files.
type JWKSFetcher interface {
	FetchJWKS(uri string) ([]byte, error)
}

// JWKSDiscoverer is a JWKSFetcher that also finds the key set of a rule
// with neither jwks nor jwksUri, from the issuer's OpenID discovery document
// (<issuer>/.well-known/openid-configuration, its jwks_uri), as istiod does.
type JWKSDiscoverer interface {
	DiscoverJWKS(issuer string) ([]byte, error)
}

// JWKSFetcherFunc adapts a function to JWKSFetcher.
type JWKSFetcherFunc func(uri string) ([]byte, error)

// FetchJWKS calls f.
func (f JWKSFetcherFunc) FetchJWKS(uri string) ([]byte, error) { return f(uri) }

// JWTRule is a jwtRule in force for a workload, with the policy it came from.
type JWTRule struct {
	Policy string              `json:"policy"` // "ns/name"
	Index  int                 `json:"index"`  // in spec.jwtRules
	Rule   *secv1beta1.JWTRule `json:"rule"`

	doc *Document
}

// Locations describes where the rule looks for a token.
func (r JWTRule) Locations() []string {
	var out []string
	for _, l := range locations(r.Rule) {
		out = append(out, l.String())
	}
	return out
}

// AuthnResult is the outcome of request authentication.
type AuthnResult struct {
	// Principal is "<iss>/<sub>", the request.auth.principal; empty when the
	// request carries no token (which passes authentication, as in Istio).
	Principal string         `json:"principal,omitempty"`
	Issuer    string         `json:"issuer,omitempty"`
	Subject   string         `json:"subject,omitempty"`
	Audiences []string       `json:"audiences,omitempty"`
	Presenter string         `json:"presenter,omitempty"` // azp
	Claims    map[string]any `json:"claims,omitempty"`
	// Rule is the jwtRule that validated the token ("ns/name jwtRules[i]").
	Rule string `json:"rule,omitempty"`
	// Found names where the token was found, e.g. "header Authorization".
	Found string `json:"found,omitempty"`
	// ForwardOriginalToken and OutputPayloadToHeader report what the proxy
	// does with the token according to the rule.
	ForwardOriginalToken  bool   `json:"forwardOriginalToken,omitempty"`
	OutputPayloadToHeader string `json:"outputPayloadToHeader,omitempty"`
	// Payload is the token's payload segment, base64url as it arrived: what
	// the proxy puts in OutputPayloadToHeader. Never printed.
	Payload string `json:"-"`
	// TokenHeader is the header the token was found in, which the proxy
	// removes unless ForwardOriginalToken; empty for a query parameter or
	// a cookie, which stay (as Envoy leaves them).
	TokenHeader string `json:"-"`
	// Rules are the jwtRules in force for the workload.
	Rules []JWTRule `json:"rules"`
}

// JWTRules returns the jwtRules in force for a workload. Istio combines every
// matching RequestAuthentication as if it were one: the mesh-wide ones (root
// namespace, no selector), the workload's namespace's ones without a
// selector, and those of its namespace whose selector matches.
func (s *Set) JWTRules(ns string, labels map[string]string) []JWTRule {
	var out []JWTRule
	for _, d := range s.reqs {
		sel := d.Request.GetSelector().GetMatchLabels()
		mesh := d.Namespace == s.root && !hasSelector(sel)
		if !mesh && (d.Namespace != ns || !selects(sel, labels)) {
			continue
		}
		for i, r := range d.Request.GetJwtRules() {
			out = append(out, JWTRule{Policy: d.Ref(), Index: i, Rule: r, doc: d})
		}
	}
	return out
}

type location struct {
	header, prefix string // header location
	param          string // query parameter
	cookie         string
}

func (l location) String() string {
	switch {
	case l.param != "":
		return "query parameter " + l.param
	case l.cookie != "":
		return "cookie " + l.cookie
	case l.prefix != "":
		return fmt.Sprintf("header %s (prefix %q)", l.header, l.prefix)
	}
	return "header " + l.header
}

// locations lists where a rule looks for its token. With no explicit
// location Istio (Envoy) looks in "Authorization: Bearer <token>" and then
// in the access_token query parameter.
func locations(r *secv1beta1.JWTRule) []location {
	var out []location
	for _, h := range r.GetFromHeaders() {
		out = append(out, location{header: h.GetName(), prefix: h.GetPrefix()})
	}
	for _, p := range r.GetFromParams() {
		out = append(out, location{param: p})
	}
	for _, c := range r.GetFromCookies() {
		out = append(out, location{cookie: c})
	}
	if len(out) == 0 {
		out = []location{{header: "Authorization", prefix: "Bearer "}, {param: "access_token"}}
	}
	return out
}

func (l location) extract(headers map[string][]string, query url.Values) (string, bool) {
	switch {
	case l.param != "":
		v := query.Get(l.param)
		return v, v != ""
	case l.cookie != "":
		r := http.Request{Header: http.Header{"Cookie": headerValues(headers, "Cookie")}}
		c, err := r.Cookie(l.cookie)
		if err != nil || c.Value == "" {
			return "", false
		}
		return c.Value, true
	}
	for _, v := range headerValues(headers, l.header) {
		if l.prefix != "" {
			if len(v) < len(l.prefix) || !strings.EqualFold(v[:len(l.prefix)], l.prefix) {
				continue
			}
			v = v[len(l.prefix):]
		}
		if v = strings.TrimSpace(v); v != "" {
			return v, true
		}
	}
	return "", false
}

// Authenticate validates the JWT of a request to a workload against the
// jwtRules in force. A request with no token at any rule's location passes
// with an empty Principal (Istio leaves requiring one to authorization); a
// token that fails any check is an error, which the proxy turns into 401.
// A token must validate against a rule whose issuer is the token's iss and
// that looks where the token was found. exp and nbf are checked against now
// with ClockSkew; aud must hold one of the rule's audiences when it lists
// any. When tokens are found at several locations each must be valid, and
// the first one found gives the result. Errors never contain the token.
func (s *Set) Authenticate(ns string, labels map[string]string, headers map[string][]string, query url.Values, now time.Time) (AuthnResult, error) {
	res := AuthnResult{Rules: s.JWTRules(ns, labels)}
	type found struct {
		token, where, header string
		rules                []JWTRule
	}
	var tokens []*found
	byToken := map[string]*found{}
	for _, r := range res.Rules {
		for _, l := range locations(r.Rule) {
			tok, ok := l.extract(headers, query)
			if !ok {
				continue
			}
			f := byToken[tok]
			if f == nil {
				f = &found{token: tok, where: l.String()}
				if l.param == "" && l.cookie == "" {
					f.header = l.header
				}
				byToken[tok] = f
				tokens = append(tokens, f)
			}
			f.rules = append(f.rules, r)
		}
	}
	for i, f := range tokens {
		out, err := s.validate(f.token, f.rules, now)
		if err != nil {
			return AuthnResult{Rules: res.Rules}, fmt.Errorf("policy: JWT in %s: %w", f.where, err)
		}
		if i == 0 {
			out.Rules, out.Found, out.TokenHeader = res.Rules, f.where, f.header
			res = out
		}
	}
	return res, nil
}

var errNoRule = errors.New("no jwtRule for its issuer looks for a token here")

func (s *Set) validate(token string, rules []JWTRule, now time.Time) (AuthnResult, error) {
	if len(token) > MaxTokenSize {
		return AuthnResult{}, fmt.Errorf("larger than %d bytes", MaxTokenSize)
	}
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil {
		return AuthnResult{}, errors.New("not a signed JWT with an accepted algorithm")
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return AuthnResult{}, errors.New("claims are not JSON")
	}
	var rule *JWTRule
	for i := range rules {
		if rules[i].Rule.GetIssuer() == unverified.Issuer {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return AuthnResult{}, fmt.Errorf("issuer %q: %w", unverified.Issuer, errNoRule)
	}
	keys, err := s.keys(*rule)
	if err != nil {
		return AuthnResult{}, err
	}
	var claims jwt.Claims
	var raw map[string]any
	verified := false
	for _, k := range candidateKeys(keys, tok) {
		if err := tok.Claims(k.Key, &claims, &raw); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return AuthnResult{}, fmt.Errorf("signature does not verify with the keys of %s jwtRules[%d]", rule.Policy, rule.Index)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: rule.Rule.GetIssuer(), Time: now}, ClockSkew); err != nil {
		switch {
		case errors.Is(err, jwt.ErrExpired):
			return AuthnResult{}, errors.New("token is expired")
		case errors.Is(err, jwt.ErrNotValidYet):
			return AuthnResult{}, errors.New("token is not valid yet (nbf)")
		case errors.Is(err, jwt.ErrIssuedInTheFuture):
			return AuthnResult{}, errors.New("token is issued in the future (iat)")
		}
		return AuthnResult{}, fmt.Errorf("claims: %w", err)
	}
	if aud := rule.Rule.GetAudiences(); len(aud) > 0 && !claims.Audience.Contains(aud[0]) {
		ok := false
		for _, a := range aud {
			if claims.Audience.Contains(a) {
				ok = true
				break
			}
		}
		if !ok {
			return AuthnResult{}, fmt.Errorf("audience %v is not one of %v", []string(claims.Audience), aud)
		}
	}
	azp, _ := raw["azp"].(string)
	payload := ""
	if parts := strings.Split(token, "."); len(parts) == 3 {
		payload = parts[1]
	}
	return AuthnResult{
		Payload:               payload,
		Principal:             claims.Issuer + "/" + claims.Subject,
		Issuer:                claims.Issuer,
		Subject:               claims.Subject,
		Audiences:             []string(claims.Audience),
		Presenter:             azp,
		Claims:                raw,
		Rule:                  fmt.Sprintf("%s jwtRules[%d]", rule.Policy, rule.Index),
		ForwardOriginalToken:  rule.Rule.GetForwardOriginalToken(),
		OutputPayloadToHeader: rule.Rule.GetOutputPayloadToHeader(),
	}, nil
}

// candidateKeys are the keys with the token's kid, or all keys when the
// token names none.
func candidateKeys(set *jose.JSONWebKeySet, tok *jwt.JSONWebToken) []jose.JSONWebKey {
	if len(tok.Headers) > 0 && tok.Headers[0].KeyID != "" {
		return set.Key(tok.Headers[0].KeyID)
	}
	return set.Keys
}

func (s *Set) keys(r JWTRule) (*jose.JSONWebKeySet, error) {
	if r.doc != nil && r.Index < len(r.doc.jwks) && r.doc.jwks[r.Index] != nil {
		return r.doc.jwks[r.Index], nil
	}
	uri := r.Rule.GetJwksUri()
	if uri == "" {
		// As Istio: the keys of the issuer's OpenID discovery document.
		d, ok := s.fetcher.(JWKSDiscoverer)
		if !ok {
			return nil, fmt.Errorf("%s jwtRules[%d] has neither jwks nor jwksUri, and nothing here does OpenID discovery for issuer %s", r.Policy, r.Index, r.Rule.GetIssuer())
		}
		data, err := d.DiscoverJWKS(r.Rule.GetIssuer())
		if err != nil {
			return nil, fmt.Errorf("key set of issuer %s by OpenID discovery: %w", r.Rule.GetIssuer(), err)
		}
		set, err := parseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("key set of issuer %s by OpenID discovery: %w", r.Rule.GetIssuer(), err)
		}
		return set, nil
	}
	if s.fetcher == nil {
		return nil, fmt.Errorf("no key set for jwksUri %s: give one", uri)
	}
	data, err := s.fetcher.FetchJWKS(uri)
	if err != nil {
		return nil, fmt.Errorf("key set for jwksUri %s: %w", uri, err)
	}
	set, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("key set for jwksUri %s: %w", uri, err)
	}
	return set, nil
}

// parseJWKS parses a JSON Web Key Set of public keys.
func parseJWKS(data []byte) (*jose.JSONWebKeySet, error) {
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("JWKS larger than %d bytes", MaxJWKSSize)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS: %v", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("JWKS has no keys")
	}
	for i, k := range set.Keys {
		if !k.IsPublic() {
			return nil, fmt.Errorf("JWKS key %d is not a public key", i)
		}
	}
	return &set, nil
}
