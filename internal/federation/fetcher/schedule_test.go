package fetcher

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	west = spiffeid.RequireTrustDomainFromString("west.example")
	// at is the last attempt in every case: a fixed instant, since the
	// schedule is a pure function of its arguments.
	at = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// authority is a CA certificate valid from at - lifetime + left to at + left.
func authority(t testing.TB, left, lifetime time.Duration) *x509.Certificate {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	// CreateRoot backdates NotBefore by pki.Backdate.
	c, err := pki.CreateRoot(pki.RootRequest{Signer: key, TTL: lifetime - pki.Backdate, Now: at.Add(left - lifetime + pki.Backdate)})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.NotAfter.Sub(at); got != left {
		t.Fatalf("authority expires %s after the attempt, want %s", got, left)
	}
	return c
}

const noHint = -1

// testBundle has an authority per entry of left (each valid for a year
// before that), and the refresh hint given unless it is noHint.
func testBundle(t testing.TB, hint time.Duration, left ...time.Duration) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.New(west)
	for _, l := range left {
		b.AddX509Authority(authority(t, l, 365*24*time.Hour))
	}
	if hint != noHint {
		b.SetRefreshHint(hint)
	}
	return b
}

var testSchedule = schedule{min: 10 * time.Second, max: time.Hour, defaultHint: 5 * time.Minute}

// TestScheduleDueAt pins the rules in schedule's comment, one case each.
func TestScheduleDueAt(t *testing.T) {
	const (
		s = time.Second
		m = time.Minute
		h = time.Hour
	)
	for _, tc := range []struct {
		name     string
		bundle   *spiffebundle.Bundle
		failures int
		want     time.Duration // after the attempt
	}{
		{"no bundle: default hint", nil, 0, 5 * m},
		{"no refresh hint: default hint", testBundle(t, noHint, 30*24*h), 0, 5 * m},
		{"refresh hint", testBundle(t, 2*m, 30*24*h), 0, 2 * m},
		{"hint under MinRefresh", testBundle(t, s, 30*24*h), 0, 10 * s},
		{"hint zero", testBundle(t, 0, 30*24*h), 0, 10 * s},
		{"hint over MaxRefresh", testBundle(t, 24*h, 30*24*h), 0, h},
		{"authority expires after the next refresh", testBundle(t, 5*m, 10*m), 0, 5 * m},
		{"authority expires exactly at the next refresh", testBundle(t, 5*m, 5*m), 0, 5 * m},
		{"authority expires before the next refresh: halfway", testBundle(t, 5*m, 3*m), 0, 90 * s},
		{"authority expires very soon: MinRefresh", testBundle(t, 5*m, 12*s), 0, 10 * s},
		{"authority already expired: ignored", testBundle(t, 5*m, -m), 0, 5 * m},
		{"earliest of two expiring authorities", testBundle(t, 5*m, 4*m, 2*m), 0, m},
		{"long hint, authority in 40 minutes", testBundle(t, h, 40*m), 0, 20 * m},
		{"first failure: MinRefresh", testBundle(t, 5*m, 30*24*h), 1, 10 * s},
		{"second failure", testBundle(t, 5*m, 30*24*h), 2, 20 * s},
		{"third failure", testBundle(t, 5*m, 30*24*h), 3, 40 * s},
		{"sixth failure: capped at the interval", testBundle(t, 5*m, 30*24*h), 6, 5 * m},
		{"hundredth failure: capped at the interval", testBundle(t, 5*m, 30*24*h), 100, 5 * m},
		{"failure with a short hint: the hint", testBundle(t, 15*s, 30*24*h), 2, 15 * s},
		{"failure with no bundle", nil, 4, 80 * s},
		{"failure with an expiring authority: the earlier", testBundle(t, 5*m, 3*m), 5, 90 * s},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := state{bundle: tc.bundle, lastAttempt: at, failures: tc.failures}
			if got := testSchedule.dueAt(st).Sub(at); got != tc.want {
				t.Fatalf("due %s after the attempt, want %s", got, tc.want)
			}
		})
	}
}

// TestShouldRefresh checks the decision at instants around the due time.
func TestShouldRefresh(t *testing.T) {
	b := testBundle(t, 2*time.Minute, 30*24*time.Hour)
	for _, tc := range []struct {
		name string
		st   state
		now  time.Time
		want bool
	}{
		{"never attempted", state{}, at, true},
		{"never attempted, stored bundle", state{bundle: b}, at, true},
		{"just attempted", state{bundle: b, lastAttempt: at}, at, false},
		{"a nanosecond early", state{bundle: b, lastAttempt: at}, at.Add(2*time.Minute - 1), false},
		{"due", state{bundle: b, lastAttempt: at}, at.Add(2 * time.Minute), true},
		{"overdue", state{bundle: b, lastAttempt: at}, at.Add(time.Hour), true},
		{"failed, before the backoff", state{bundle: b, lastAttempt: at, failures: 1}, at.Add(9 * time.Second), false},
		{"failed, after the backoff", state{bundle: b, lastAttempt: at, failures: 1}, at.Add(10 * time.Second), true},
		{"clock went back", state{bundle: b, lastAttempt: at}, at.Add(-time.Hour), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := testSchedule.shouldRefresh(tc.now, tc.st); got != tc.want {
				t.Fatalf("shouldRefresh = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestScheduleShortLived checks which authorities live under three
// refresh intervals.
func TestScheduleShortLived(t *testing.T) {
	long := authority(t, time.Hour, 15*time.Minute)              // 15m = 3 × 5m: not short
	short := authority(t, time.Hour, 15*time.Minute-time.Second) // just under (X.509 times are in seconds)
	b := spiffebundle.FromX509Authorities(west, []*x509.Certificate{long, short})
	got := testSchedule.shortLived(b)
	if len(got) != 1 || !got[0].Equal(short) {
		t.Fatalf("got %d short-lived authorities, want only the one of 14m59s", len(got))
	}
	b.SetRefreshHint(time.Minute) // 3m: neither is short now
	if got := testSchedule.shortLived(b); len(got) != 0 {
		t.Fatalf("got %d short-lived authorities with a 1m hint, want none", len(got))
	}
	if got := testSchedule.shortLived(nil); got != nil {
		t.Fatalf("got %d for no bundle", len(got))
	}
}
