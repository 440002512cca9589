package fetcher

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// Schedule defaults (Config fields of the same names).
const (
	// DefaultMinRefresh is the shortest wait between two fetches of a peer,
	// whatever its refresh hint, an expiring authority or a failure say.
	DefaultMinRefresh = 10 * time.Second
	// DefaultMaxRefresh is the longest: a hint of a day still means hourly
	// fetches, so a removed (revoked) key leaves within the hour.
	DefaultMaxRefresh = time.Hour
	// DefaultRefreshHint applies to a bundle without spiffe_refresh_hint:
	// five minutes, as SPIFFE Federation §4.1 recommends and SPIRE does.
	DefaultRefreshHint = 5 * time.Minute
)

// schedule decides when a peer is fetched. Its methods are pure functions of
// their arguments, so that "should it be fetched now?" is a table test.
//
// The rules:
//
//   - After a success, the next fetch is one interval later: the refresh
//     hint of the last good bundle, or defaultHint without one, clamped to
//     [min, max] (SPIFFE Federation §4.1: poll at the hint).
//   - Early, when an X.509 authority of the last good bundle expires before
//     that: halfway between the last attempt and its NotAfter, but never
//     sooner than min. Successive fetches halve the time left, so a
//     successor the peer publishes late is seen within half the remaining
//     lifetime, at a cost of a few fetches per rotation. An authority that
//     had already expired at the last attempt is ignored: fetching more
//     often cannot bring it back.
//   - After n failures in a row, min·2^(n−1), capped at what the wait
//     would be after a success: a failing peer is retried sooner, never
//     later, than a healthy one, and a peer that is down is asked at most
//     once an interval (SPIFFE Federation §6.2 asks not to retry
//     aggressively).
type schedule struct {
	min, max, defaultHint time.Duration
}

// state is what the schedule reads about a peer.
type state struct {
	bundle      *spiffebundle.Bundle // last good bundle; nil if none is stored
	lastAttempt time.Time            // zero: never tried by this process
	failures    int                  // failed attempts since the last success
}

// interval is the regular wait after a fetch of b: its refresh hint (or the
// default) clamped to [min, max].
func (s schedule) interval(b *spiffebundle.Bundle) time.Duration {
	d := s.defaultHint
	if b != nil {
		if hint, ok := b.RefreshHint(); ok {
			d = hint
		}
	}
	return min(max(d, s.min), s.max)
}

// wait is how long after from, when b was fetched, the next fetch is due if
// nothing fails: the interval, shortened when an authority expires first.
func (s schedule) wait(b *spiffebundle.Bundle, from time.Time) time.Duration {
	interval := s.interval(b)
	if b == nil {
		return interval
	}
	d := interval
	for _, c := range b.X509Authorities() {
		left := c.NotAfter.Sub(from)
		if left <= 0 || left >= interval {
			continue
		}
		d = min(d, max(left/2, s.min))
	}
	return d
}

// backoff is the wait after the n-th failure in a row (n ≥ 1): min doubled
// n−1 times, saturating at max.
func (s schedule) backoff(n int) time.Duration {
	d := s.min
	for i := 1; i < n && d < s.max; i++ {
		d *= 2
	}
	return min(d, s.max)
}

// dueAt is when the peer in st is to be fetched next; the zero time (due at
// once) if it never was.
func (s schedule) dueAt(st state) time.Time {
	if st.lastAttempt.IsZero() {
		return time.Time{}
	}
	d := s.wait(st.bundle, st.lastAttempt)
	if st.failures > 0 {
		d = min(d, s.backoff(st.failures))
	}
	return st.lastAttempt.Add(d)
}

// shouldRefresh says whether the peer in st is due at now.
func (s schedule) shouldRefresh(now time.Time, st state) bool {
	return !now.Before(s.dueAt(st))
}

// shortLived returns the X.509 authorities of b that are valid for less than
// three intervals. Such a CA is replaced within a few fetches, and SPIFFE
// Federation §6.2 expects a client to be able to miss one or two polls: two
// failed fetches could then leave this side without the CA that signs the
// peer's new SVIDs.
func (s schedule) shortLived(b *spiffebundle.Bundle) []*x509.Certificate {
	if b == nil {
		return nil
	}
	limit := 3 * s.interval(b)
	var out []*x509.Certificate
	for _, c := range b.X509Authorities() {
		if c.NotAfter.Sub(c.NotBefore) < limit {
			out = append(out, c)
		}
	}
	return out
}

// earliestExpiry is the first NotAfter among b's X.509 authorities; zero if
// it has none.
func earliestExpiry(b *spiffebundle.Bundle) time.Time {
	var t time.Time
	if b == nil {
		return t
	}
	for _, c := range b.X509Authorities() {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// fingerprint names a certificate in logs: SHA-256 of its DER.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}
