package fetcher

import (
	"crypto/x509"
	"time"
)

// Hooks into a Refresher for the tests of package fetcher_test.

// SetLongPollSpacing sets the least time between the starts of two long
// polls of a peer (longPollSpacing). Call it before Run.
func SetLongPollSpacing(r *Refresher, d time.Duration) { r.spacing = d }

// LongPollsRunning is how many long-poll goroutines are alive.
func LongPollsRunning(r *Refresher) int { return int(r.pollsRunning.Load()) }

// LongPollsStarted is how many long-poll goroutines were ever started.
func LongPollsStarted(r *Refresher) int { return int(r.pollsStarted.Load()) }

// Wake makes Run look at the schedule again, as Refresh does: a test that
// moved the injected clock calls it, since Run's timer runs on the real one.
func Wake(r *Refresher) { r.poke() }

// RootCAsOf is the roots r verifies https_web endpoints with.
func RootCAsOf(r *Refresher) *x509.CertPool { return r.rootCAs.Load() }
