package member

import (
	"crypto/x509"
	"time"
)

// The schedule is pure functions of the certificate, the clock and a random
// fraction r in [0, 1), so tests pin it exactly.

// renewAt returns when to renew an intermediate: before ahead of its
// expiry, or at half its life when before is zero or not shorter than its
// life; pulled earlier by up to jitter of the time from its start to that
// point.
func renewAt(c *x509.Certificate, before time.Duration, jitter, r float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	if before <= 0 || before >= life {
		before = life / 2
	}
	return c.NotBefore.Add(jittered(life-before, jitter, r))
}

// refreshAt returns when to replace a short-lived client SVID: at half its
// life.
func refreshAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

// backoff returns the wait after the n-th failure in a row (n >= 1):
// minWait doubled for every failure after the first, capped at maxWait,
// then jittered.
func backoff(n int, minWait, maxWait time.Duration, jitter, r float64) time.Duration {
	d := minWait
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	return jittered(min(d, maxWait), jitter, r)
}

// jittered shortens d by the fraction jitter*r, so that members started
// together do not all call the controller at the same instant.
func jittered(d time.Duration, jitter, r float64) time.Duration {
	return d - time.Duration(float64(d)*jitter*r)
}
