package member

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestRenewAt(t *testing.T) {
	c := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
	cases := []struct {
		name   string
		before time.Duration
		jitter float64
		r      float64
		want   time.Time
	}{
		{"half life by default", 0, 0.1, 0, t0.Add(12 * time.Hour)},
		{"jitter pulls it earlier", 0, 0.1, 0.5, t0.Add(12*time.Hour - 36*time.Minute)},
		{"before expiry", 6 * time.Hour, 0.1, 0, t0.Add(18 * time.Hour)},
		{"before expiry with jitter", 6 * time.Hour, 0.1, 0.5, t0.Add(18*time.Hour - 54*time.Minute)},
		{"before longer than the life", 48 * time.Hour, 0, 0, t0.Add(12 * time.Hour)},
		{"before equal to the life", 24 * time.Hour, 0, 0, t0.Add(12 * time.Hour)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := renewAt(c, tc.before, tc.jitter, tc.r); !got.Equal(tc.want) {
				t.Errorf("renewAt = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	cases := []struct {
		n      int
		jitter float64
		r      float64
		want   time.Duration
	}{
		{1, 0.1, 0, time.Second},
		{2, 0.1, 0, 2 * time.Second},
		{3, 0.1, 0, 4 * time.Second},
		{6, 0.1, 0, 32 * time.Second},
		{7, 0.1, 0, time.Minute},
		{1000, 0.1, 0, time.Minute},
		{1, 0.1, 0.5, 950 * time.Millisecond},
		{1000, 0.1, 0.99, time.Minute - 5940*time.Millisecond},
	}
	for _, tc := range cases {
		if got := backoff(tc.n, time.Second, time.Minute, tc.jitter, tc.r); got != tc.want {
			t.Errorf("backoff(%d, r=%v) = %s, want %s", tc.n, tc.r, got, tc.want)
		}
	}
}

func TestRefreshAt(t *testing.T) {
	c := &x509.Certificate{NotBefore: t0.Add(-30 * time.Second), NotAfter: t0.Add(time.Hour)}
	if got, want := refreshAt(c), t0.Add(1785*time.Second); !got.Equal(want) {
		t.Errorf("refreshAt = %s, want %s", got, want)
	}
}
