package inspect

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/meshfed/meshfed/internal/bundle"
	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// MaxJWTBytes bounds a token DescribeJWT reads: far above any JWT-SVID or
// service-account token.
const MaxJWTBytes = 16 << 10

// JWT describes a token in JWS compact form, read without verifying it: its
// header, its registered claims (the names of the others), its validity by
// exp and nbf, and whether it conforms to the JWT-SVID specification. The
// token itself and its signature are not kept.
type JWT struct {
	Algorithm   string      `json:"alg"`
	KeyID       string      `json:"kid,omitempty"`
	Type        string      `json:"typ,omitempty"`
	Subject     string      `json:"sub,omitempty"`
	SPIFFEID    string      `json:"spiffe_id,omitempty"`
	TrustDomain string      `json:"trust_domain,omitempty"`
	Audience    []string    `json:"aud,omitempty"`
	Issuer      string      `json:"iss,omitempty"`
	Expires     *time.Time  `json:"exp,omitempty"`
	NotBefore   *time.Time  `json:"nbf,omitempty"`
	IssuedAt    *time.Time  `json:"iat,omitempty"`
	ID          string      `json:"jti,omitempty"`
	OtherClaims []string    `json:"other_claims,omitempty"`
	Validity    Validity    `json:"validity"` // at the time the description was made
	SVID        Conformance `json:"svid"`
}

// jwtSVIDAlgorithms are the algorithms of JWT-SVID §2.1.
var jwtSVIDAlgorithms = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}

// DescribeJWT reads token (a JWS in compact form) and describes it at now.
// It verifies nothing: a description says what a token claims, not that it
// is true (VerifyJWT does that). Its errors name what is malformed and
// never contain the token.
func DescribeJWT(token string, now time.Time) (*JWT, error) {
	if len(token) > MaxJWTBytes {
		return nil, fmt.Errorf("inspect: the token is %d bytes, more than the %d a JWT here may be", len(token), MaxJWTBytes)
	}
	parts := strings.Split(token, ".")
	switch len(parts) {
	case 3:
	case 5:
		return nil, errors.New("inspect: the token has five parts: an encrypted JWT (JWE), not a signed one; JWT-SVIDs are signed (JWS)")
	default:
		return nil, fmt.Errorf("inspect: the token has %d dot-separated parts; a JWS in compact form has three (header.claims.signature)", len(parts))
	}
	var header map[string]any
	if err := decodeJWTPart(parts[0], &header); err != nil {
		return nil, fmt.Errorf("inspect: the token's header: %w", err)
	}
	var claims map[string]any
	if err := decodeJWTPart(parts[1], &claims); err != nil {
		return nil, fmt.Errorf("inspect: the token's claims: %w", err)
	}
	if parts[2] == "" {
		return nil, errors.New("inspect: the token has no signature (an unsecured JWT)")
	}
	j := &JWT{}
	var vs []Violation
	add := func(rule, format string, args ...any) {
		vs = append(vs, Violation{Rule: rule, Message: fmt.Sprintf(format, args...)})
	}

	j.Algorithm, _ = header["alg"].(string)
	switch {
	case j.Algorithm == "":
		add("JWT-SVID §2.1", "no alg header")
	case !slices.Contains(jwtSVIDAlgorithms, j.Algorithm):
		add("JWT-SVID §2.1", "alg %q is not one of %s", j.Algorithm, strings.Join(jwtSVIDAlgorithms, ", "))
	}
	j.KeyID, _ = header["kid"].(string)
	if typ, ok := header["typ"]; ok {
		j.Type, _ = typ.(string)
		if j.Type != "JWT" && j.Type != "JOSE" {
			add("JWT-SVID §2.3", "typ %v is set and is neither JWT nor JOSE", typ)
		}
	}

	for name, v := range claims {
		switch name {
		case "sub":
			j.Subject, _ = v.(string)
		case "aud":
			j.Audience = audienceOf(v)
		case "iss":
			j.Issuer, _ = v.(string)
		case "jti":
			j.ID, _ = v.(string)
		case "exp":
			j.Expires = numericDate(v)
		case "nbf":
			j.NotBefore = numericDate(v)
		case "iat":
			j.IssuedAt = numericDate(v)
		default:
			j.OtherClaims = append(j.OtherClaims, name)
		}
	}
	slices.Sort(j.OtherClaims)
	if id, err := spiffeid.FromString(j.Subject); err == nil {
		j.SPIFFEID, j.TrustDomain = id.String(), id.TrustDomain().Name()
	} else {
		add("JWT-SVID §3.1", "sub %q is not a SPIFFE ID", j.Subject)
	}
	if len(j.Audience) == 0 {
		add("JWT-SVID §3.2", "no aud claim with a value")
	}
	if _, ok := claims["exp"]; !ok || j.Expires == nil {
		add("JWT-SVID §3.3", "no exp claim (a NumericDate)")
	}
	j.Validity = Valid
	switch {
	case j.NotBefore != nil && now.Before(*j.NotBefore):
		j.Validity = NotYetValid
	case j.Expires != nil && !now.Before(*j.Expires):
		j.Validity = Expired
	}

	j.SVID = Conformance{Status: Conforms, Checked: "JWT-SVID"}
	if len(vs) > 0 {
		j.SVID.Status, j.SVID.Violations = DoesNotConform, vs
	}
	return j, nil
}

// decodeJWTPart decodes one base64url part of a JWS into a JSON object.
func decodeJWTPart(part string, v *map[string]any) error {
	raw, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return fmt.Errorf("not base64url without padding: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not a JSON object: %v", err)
	}
	if dec.More() {
		return errors.New("not a JSON object: data after it")
	}
	if *v == nil {
		return errors.New("not a JSON object: null")
	}
	return nil
}

// audienceOf is aud as RFC 7519 §4.1.3 allows it: a string or an array of
// strings; anything else is no audience.
func audienceOf(v any) []string {
	switch a := v.(type) {
	case string:
		return []string{a}
	case []any:
		var out []string
		for _, e := range a {
			s, ok := e.(string)
			if !ok {
				return nil
			}
			out = append(out, s)
		}
		return out
	}
	return nil
}

// numericDate is a NumericDate claim (seconds since the epoch, possibly
// fractional) as a time, or nil if it is not one.
func numericDate(v any) *time.Time {
	n, ok := v.(json.Number)
	if !ok {
		return nil
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return nil
	}
	sec, frac := math.Modf(f)
	t := time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return &t
}

// JWTTrust is what a JWT-SVID is verified against: the JWT authorities of
// a SPIFFE bundle.
type JWTTrust struct {
	Source string
	Bundle *jwtbundle.Bundle
}

// LoadJWTBundle reads a SPIFFE bundle (SPIFFE JSON) of trust domain td for
// its JWT authorities.
func LoadJWTBundle(path string, td spiffeid.TrustDomain) (*JWTTrust, error) {
	data, err := pemfile.ReadFile(path, bundle.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	b, err := bundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("inspect: %s: %w", path, err)
	}
	if len(b.JWTAuthorities()) == 0 {
		return nil, fmt.Errorf("inspect: %s: the bundle holds no JWT authorities (use: jwt-svid keys), so it cannot verify a JWT-SVID", path)
	}
	return &JWTTrust{Source: path, Bundle: jwtbundle.FromJWTAuthorities(td, b.JWTAuthorities())}, nil
}

// VerifyJWT verifies token as a JWT-SVID for audience with trust, as a
// validator does now (go-spiffe's jwtsvid.ParseAndValidate): the signature
// by a key of the bundle under the token's kid, alg, aud, exp. The reason
// of a failure never contains the token.
func VerifyJWT(token string, trust *JWTTrust, audience string) Verdict {
	v := Verdict{Method: "JWT-SVID", Against: trust.Source, TrustDomain: trust.Bundle.TrustDomain().Name()}
	svid, err := jwtsvid.ParseAndValidate(token, trust.Bundle, []string{audience})
	if err != nil {
		v.Status, v.Reason = StatusFailed, err.Error()
		return v
	}
	v.Status, v.SPIFFEID = StatusOK, svid.ID.String()
	return v
}

// JWTReport is what inspect jwt says of one token.
type JWTReport struct {
	Source  string   `json:"source"`
	Token   *JWT     `json:"token"`
	Verdict *Verdict `json:"verification,omitempty"`
}

// WriteText writes the report for people.
func (r JWTReport) WriteText(w io.Writer) error {
	t := &textWriter{w: w}
	j := r.Token
	t.printf("%s: a JWT, read without verifying it\n", r.Source)
	in := "  "
	t.field(in, "SPIFFE ID", orNone(j.SPIFFEID))
	t.field(in, "Trust domain", orNone(j.TrustDomain))
	if j.SPIFFEID == "" {
		t.field(in, "Subject", orEmpty(j.Subject))
	}
	t.field(in, "Audience", orNone(strings.Join(j.Audience, ", ")))
	if j.Issuer != "" {
		t.field(in, "Issuer", j.Issuer)
	}
	t.field(in, "Algorithm", orNone(j.Algorithm))
	if j.KeyID != "" {
		t.field(in, "Key ID", j.KeyID)
	}
	if j.Type != "" {
		t.field(in, "Type", j.Type)
	}
	if j.IssuedAt != nil {
		t.field(in, "Issued", stamp(*j.IssuedAt))
	}
	from, to := "-", "never"
	if j.NotBefore != nil {
		from = stamp(*j.NotBefore)
	}
	if j.Expires != nil {
		to = stamp(*j.Expires)
	}
	t.field(in, "Validity", fmt.Sprintf("%s to %s (%s)", from, to, j.Validity))
	if j.ID != "" {
		t.field(in, "JWT ID", j.ID)
	}
	if len(j.OtherClaims) > 0 {
		t.field(in, "Other claims", strings.Join(j.OtherClaims, ", "))
	}
	t.field(in, "SVID", j.SVID.lines()...)
	if r.Verdict != nil {
		t.printf("\n")
		r.Verdict.write(t)
	}
	return t.err
}
