package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
)

// TestAuthorities: adding is idempotent, the sequence moves by exactly one
// on each change to the set and not otherwise, and expired authorities go.
func TestAuthorities(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		caA := caDER(t, "east CA 1", t0.Add(time.Hour), true)
		caB := caDER(t, "east CA 2", t0.Add(48*time.Hour), true)
		keyA, keyB := publicKeyDER(t), publicKeyDER(t)

		xA := store.X509Authority{DER: caA, NotAfter: t0.Add(time.Hour).Truncate(time.Second), ServerID: "east-1", AddedAt: t0}
		xB := store.X509Authority{DER: caB, NotAfter: t0.Add(48 * time.Hour).Truncate(time.Second), ServerID: "east-2", AddedAt: t0.Add(time.Minute)}
		jA := store.JWTAuthority{KeyID: "kA", PublicKeyDER: keyA, NotAfter: t0.Add(2 * time.Hour), ServerID: "east-1", AddedAt: t0.Add(time.Minute)}

		steps := []struct {
			name         string
			do           func() error
			wantErr      string
			wantSequence uint64
		}{
			{"add CA A", func() error {
				return d.s.AddX509Authority(ctx, store.X509Authority{DER: caA, ServerID: "east-1"}) // NotAfter from the certificate
			}, "", 1},
			{"add CA A again, from another server", func() error {
				return d.s.AddX509Authority(ctx, store.X509Authority{DER: caA, ServerID: "east-2"})
			}, "", 1},
			{"add CA B a minute later", func() error {
				d.clock.Advance(time.Minute)
				return d.s.AddX509Authority(ctx, store.X509Authority{DER: caB, ServerID: "east-2"})
			}, "", 2},
			{"add JWT key A", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "kA", PublicKeyDER: keyA, NotAfter: jA.NotAfter, ServerID: "east-1"})
			}, "", 3},
			{"add JWT key A again", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "kA", PublicKeyDER: keyA, NotAfter: jA.NotAfter, ServerID: "east-2"})
			}, "", 3},
			{"another key under kA", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "kA", PublicKeyDER: keyB, NotAfter: jA.NotAfter, ServerID: "east-2"})
			}, `store: JWT authority key ID "kA" is taken by another key: already exists`, 3},
			{"remove expired: none yet", func() error {
				return wantRemoved(d.s.RemoveExpiredAuthorities(ctx, t0.Add(time.Hour)))(0)
			}, "", 3},
		}
		for _, st := range steps {
			checkErr(t, st.name, st.do(), st.wantErr)
			got, err := d.s.LocalAuthorities(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got.Sequence != st.wantSequence {
				t.Errorf("%s: sequence %d, want %d", st.name, got.Sequence, st.wantSequence)
			}
		}

		got, err := d.s.LocalAuthorities(ctx)
		want := store.Authorities{X509: []store.X509Authority{xA, xB}, JWT: []store.JWTAuthority{jA}, Sequence: 3}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("LocalAuthorities:\n got %+v, %v\nwant %+v", got, err, want)
		}

		// Past CA A's expiry: CA A goes; the sequence moves once.
		if err := wantRemoved(d.s.RemoveExpiredAuthorities(ctx, t0.Add(time.Hour+time.Second)))(1); err != nil {
			t.Error(err)
		}
		// Past JWT key A's: it goes.
		if err := wantRemoved(d.s.RemoveExpiredAuthorities(ctx, t0.Add(3*time.Hour)))(1); err != nil {
			t.Error(err)
		}
		got, err = d.s.LocalAuthorities(ctx)
		want = store.Authorities{X509: []store.X509Authority{xB}, Sequence: 5}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("after expiry:\n got %+v, %v\nwant %+v", got, err, want)
		}
		// Past everything: both X.509 and JWT go in one change.
		if err := d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "kB", PublicKeyDER: keyB, NotAfter: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := wantRemoved(d.s.RemoveExpiredAuthorities(ctx, t0.Add(100*time.Hour)))(2); err != nil {
			t.Error(err)
		}
		if got, err := d.s.LocalAuthorities(ctx); err != nil || !reflect.DeepEqual(got, store.Authorities{Sequence: 7}) {
			t.Errorf("after all expired: %+v, %v; want empty at sequence 7", got, err)
		}
	})
}

func wantRemoved(n int, err error) func(int) error {
	return func(want int) error {
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("RemoveExpiredAuthorities removed %d, want %d", n, want)
		}
		return nil
	}
}

// TestAuthoritiesRefuse: what is not a CA certificate or a public key, or is
// too big, is refused.
func TestAuthoritiesRefuse(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		leaf := caDER(t, "leaf", t0.Add(time.Hour), false)
		key := publicKeyDER(t)
		tests := []struct {
			name string
			do   func() error
			want string
		}{
			{"empty DER", func() error { return d.s.AddX509Authority(ctx, store.X509Authority{}) }, "store: X.509 authority is empty"},
			{"DER over 64 KiB", func() error {
				return d.s.AddX509Authority(ctx, store.X509Authority{DER: bytes.Repeat([]byte{1}, 64<<10+1)})
			}, "store: X.509 authority is 65537 bytes of DER, more than the 65536 allowed"},
			{"not a certificate", func() error { return d.s.AddX509Authority(ctx, store.X509Authority{DER: []byte{0x30, 0}}) },
				"store: X.509 authority is not a DER certificate: x509: malformed tbs certificate"},
			{"not a CA", func() error { return d.s.AddX509Authority(ctx, store.X509Authority{DER: leaf}) }, `store: X.509 authority "CN=leaf" is not a CA certificate`},
			{"no key ID", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{PublicKeyDER: key, NotAfter: t0})
			}, "store: JWT authority key ID is empty"},
			{"key ID too long", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: strings.Repeat("k", 257), PublicKeyDER: key, NotAfter: t0})
			}, "store: JWT authority key ID is 257 bytes, more than the 256 allowed"},
			{"key over 64 KiB", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "k", PublicKeyDER: make([]byte, 64<<10+1), NotAfter: t0})
			}, "store: JWT authority k is 65537 bytes of DER, more than the 65536 allowed"},
			{"not a public key", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "k", PublicKeyDER: []byte{0x30, 0}, NotAfter: t0})
			}, "store: JWT authority k is not a PKIX public key: asn1: syntax error: sequence truncated"},
			{"no expiry", func() error {
				return d.s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "k", PublicKeyDER: key})
			}, "store: JWT authority k has no expiry"},
		}
		for _, tt := range tests {
			err := tt.do()
			checkErr(t, tt.name, err, tt.want)
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s: %v is not ErrInvalid", tt.name, err)
			}
		}
		if got, err := d.s.LocalAuthorities(ctx); err != nil || !reflect.DeepEqual(got, store.Authorities{}) {
			t.Errorf("LocalAuthorities = %+v, %v; want empty", got, err)
		}
	})
}

// TestRemoveX509Authority: a retired root leaves the bundle at once, moving
// the sequence; removing it twice is ErrNotFound.
func TestRemoveX509Authority(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		oldRoot, newRoot := caDER(t, "east root CA", t0.Add(48*time.Hour), true), caDER(t, "east root CA 2", t0.Add(96*time.Hour), true)
		for _, der := range [][]byte{oldRoot, newRoot} {
			if err := d.s.AddX509Authority(ctx, store.X509Authority{DER: der, ServerID: "east-1"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.s.RemoveX509Authority(ctx, oldRoot); err != nil {
			t.Fatal(err)
		}
		got, err := d.s.LocalAuthorities(ctx)
		if err != nil || len(got.X509) != 1 || !bytes.Equal(got.X509[0].DER, newRoot) || got.Sequence != 3 {
			t.Fatalf("after removing the old root: %+v, %v", got, err)
		}
		if err := d.s.RemoveX509Authority(ctx, oldRoot); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("removing it again: %v", err)
		}
		if got, _ := d.s.LocalAuthorities(ctx); got.Sequence != 3 {
			t.Errorf("a failed removal moved the sequence to %d", got.Sequence)
		}
	})
}
