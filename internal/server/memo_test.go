package server

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/credential"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestSVIDMemoHonoursRevisionAndValidity(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{Raw: []byte("leaf"), NotBefore: nb, NotAfter: nb.Add(time.Hour)}
	other := &x509.Certificate{Raw: []byte("other"), NotBefore: nb, NotAfter: nb.Add(time.Hour)}
	ident := credential.Identity{ID: spiffeid.RequireFromString("spiffe://east.example/node/a"), Kind: credential.KindSVID}
	var m svidMemo
	m.put([]*x509.Certificate{leaf}, 7, ident)
	cases := []struct {
		name  string
		chain *x509.Certificate
		rev   int64
		at    time.Time
		hit   bool
	}{
		{"same chain, revision and within validity", leaf, 7, nb.Add(time.Minute), true},
		{"the bundle changed since", leaf, 8, nb.Add(time.Minute), false},
		{"after the leaf expired", leaf, 7, nb.Add(time.Hour + time.Second), false},
		{"before it is valid", leaf, 7, nb.Add(-time.Second), false},
		{"another chain", other, 7, nb.Add(time.Minute), false},
	}
	for _, tc := range cases {
		got, ok := m.get([]*x509.Certificate{tc.chain}, tc.rev, tc.at)
		if ok != tc.hit || (ok && got.ID != ident.ID) {
			t.Errorf("%s: hit=%v %v, want hit=%v", tc.name, ok, got.ID, tc.hit)
		}
	}
}
