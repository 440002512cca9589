package credential

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind names a kind of credential, for the audit log and metrics.
type Kind string

// Credential kinds.
const (
	KindKubernetesJWT Kind = "k8s-sat"    // Kubernetes service-account token
	KindJoinToken     Kind = "join-token" // one-time join token
	KindSVID          Kind = "x509-svid"  // X.509-SVID presented for renewal
)

// Identity is what a verified credential proves.
type Identity struct {
	// ID is the SPIFFE ID the credential grants, derived from the credential.
	ID spiffeid.ID
	// Kind is the kind of credential that was verified.
	Kind Kind
	// Caller describes the credential for the audit log without any secret
	// in it: "iss=<issuer> sub=<subject>" for a JWT, "join-token
	// sha256:<first 8 hex digits of the hash>" for a join token, "svid serial
	// <hex>" for an SVID.
	Caller string
	// Expires is when the credential itself expires: the JWT's exp, the
	// SVID's NotAfter. It is zero for a join token, which the verification
	// that returned this Identity has spent.
	Expires time.Time
}

// Error is returned for every credential that is refused or could not be
// checked. Its message says why, starts with "credential: ", and is safe to
// send to the caller: it never contains a token, a JWT or a key. The API
// edge answers Unauthenticated for every *Error, or Unavailable when
// Unavailable is set so that the caller retries. An error that is not an
// *Error is a fault of the verifier's configuration, not of the credential.
type Error struct {
	// Kind is the kind of credential concerned.
	Kind Kind
	// Reason is the message without the "credential: " prefix.
	Reason string
	// Unavailable is set when the credential could not be checked because
	// something it depends on failed (the issuer's JWKS, the token store, the
	// request's context) rather than because the credential is bad. The
	// caller may retry.
	Unavailable bool
	// Err is the underlying cause, if any, for errors.Is and errors.As and
	// the server's own log. It is not part of the message, because it may
	// describe the server's internals (a database error). The verifiers hand
	// no join token to anything that could put it in an error (the store gets
	// its hash).
	Err error
}

func (e *Error) Error() string { return "credential: " + e.Reason }

func (e *Error) Unwrap() error { return e.Err }

// maxQuoted bounds how much of a caller-supplied string (an issuer, a kid,
// an audience) an error message repeats. The strings come from inside the
// credential, so they are bounded by it, but a message should stay one
// readable line.
const maxQuoted = 64

// quote quotes s for an error message, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		cut := maxQuoted
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strconv.Quote(s)
}

// quoteList quotes at most a few strings of ss, as a bracketed list.
func quoteList(ss []string) string {
	const most = 4
	parts := make([]string, 0, min(len(ss), most)+1)
	for i, s := range ss {
		if i == most {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, quote(s))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// formatTime is how times appear in messages.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// orNow returns clock, or time.Now if clock is nil.
func orNow(clock func() time.Time) func() time.Time {
	if clock == nil {
		return time.Now
	}
	return clock
}
