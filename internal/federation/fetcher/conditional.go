package fetcher

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The conditional long poll, as meshfed's bundle endpoint speaks it
// (internal/bundleendpoint): every 200 carries an ETag; a request whose
// If-None-Match names the current one gets 304 Not Modified; with Prefer:
// wait=N (RFC 7240) as well, the endpoint holds it until its bundle changes
// (200 with the new bundle) or N seconds pass (304), and says
// Preference-Applied: wait=N. Other endpoints (SPIRE's) ignore both headers.
// The helpers below read what the endpoint sent: they are parsers of
// untrusted input, bounded by maxResponseHeaderBytes and by their own limits.

// maxETagBytes bounds an entity tag the fetcher keeps and sends back. meshfed's
// is 66 bytes (a quoted hex SHA-256); a longer one is ignored, as if the
// endpoint had sent none, so that a peer cannot make every later request of
// this server carry its kilobytes.
const maxETagBytes = 256

// maxAppliedWait bounds the wait an endpoint may say it applied; a larger
// value is not believed (the fetcher's own request asks for far less).
const maxAppliedWait = 24 * time.Hour

// validETag says whether s is an RFC 9110 §8.8.3 entity-tag, weak or strong,
// of at most maxETagBytes: [W/] DQUOTE *etagc DQUOTE, where etagc is any
// visible byte but DQUOTE, or obs-text.
func validETag(s string) bool {
	if len(s) > maxETagBytes {
		return false
	}
	s = strings.TrimPrefix(s, "W/")
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if c := s[i]; c < 0x21 || c == '"' || c == 0x7f {
			return false
		}
	}
	return true
}

// showETag is an entity tag for an error: as it is when valid (it is
// quoted already), quoted and cut when not, since it may come from the
// endpoint.
func showETag(s string) string {
	if validETag(s) {
		return s
	}
	return strconv.Quote(clip(s))
}

// sameETag is RFC 9110's weak comparison (§8.8.3.2), the one If-None-Match
// uses: the opaque tags match, whether either is weak or not.
func sameETag(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// appliedWait reads the wait preference an endpoint says it honoured
// (Preference-Applied: wait=M, RFC 7240 §4.3), and whether it said so.
// Other preferences are skipped; a wait that is not a whole number of
// seconds up to maxAppliedWait counts as not applied.
func appliedWait(h http.Header) (time.Duration, bool) {
	for _, v := range h.Values("Preference-Applied") {
		for pref := range strings.SplitSeq(v, ",") {
			name, val, ok := strings.Cut(pref, "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			val = strings.TrimSpace(val)
			if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1]
			}
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil || time.Duration(n) > maxAppliedWait/time.Second {
				return 0, false
			}
			return time.Duration(n) * time.Second, true
		}
	}
	return 0, false
}

// pushState is what the Refresher knows of a peer's endpoint and long polls.
type pushState int

const (
	// pushUnknown: not long-polled yet, or the last long poll failed or was
	// answered at once with a new bundle. The next successful scheduled
	// fetch with an ETag starts a long poll.
	pushUnknown pushState = iota
	// pushOn: the last answer to a long poll carried Preference-Applied;
	// another long poll follows at once.
	pushOn
	// pushOff: the endpoint answered a long poll at once with 304 and no
	// Preference-Applied: it does not hold requests (or was too busy to).
	// It is long-polled again after MaxRefresh.
	pushOff
)

func (p pushState) String() string {
	switch p {
	case pushOn:
		return "on"
	case pushOff:
		return "off"
	default:
		return "unknown"
	}
}

// pushAfter decides, from the outcome of a long poll, what is known of the
// endpoint and whether the next long poll follows.
//
//   - An error stops long polling; the schedule takes over.
//   - Preference-Applied: the endpoint held the request; go on.
//   - 304 without it: the endpoint answered at once; stop (pushOff).
//   - 200 without it: the bundle had changed before the request arrived, so
//     the endpoint answered without waiting, as meshfed's does; or the
//     request was a plain fetch, since the store no longer held the bundle
//     the ETag named (an operator set one). Go on once after a long poll
//     the endpoint held, stop otherwise: an endpoint whose bundle changes on
//     every request, or a store that does not keep what it is given, costs
//     a request or two per scheduled fetch, not a loop.
func pushAfter(prev pushState, a Answer, err error) (next pushState, goOn bool) {
	switch {
	case err != nil:
		return pushUnknown, false
	case a.WaitApplied:
		return pushOn, true
	case a.NotModified:
		return pushOff, false
	case prev == pushOn:
		return pushUnknown, true
	default:
		return pushUnknown, false
	}
}
