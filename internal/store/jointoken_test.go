package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const tokenInvalid = "store: join token is unknown, expired or already used"

// TestJoinTokenLifecycle: a token is consumed once, before its expiry, and
// every way of failing is the same error.
func TestJoinTokenLifecycle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		s := d.s
		expires := t0.Add(10 * time.Minute)
		for _, tok := range []string{"a", "b", "expired"} {
			if err := s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash(tok), SPIFFEID: node1, ExpiresAt: expires}); err != nil {
				t.Fatal(err)
			}
		}
		d.clock.Advance(time.Minute) // CreatedAt is t0; consumption later

		steps := []struct {
			name  string
			token string
			hash  []byte // overrides token
			now   time.Time
			want  string
		}{
			{name: "valid", token: "a", now: t0.Add(time.Minute)},
			{name: "replayed", token: "a", now: t0.Add(2 * time.Minute), want: tokenInvalid},
			{name: "unknown", token: "never created", now: t0, want: tokenInvalid},
			{name: "not a SHA-256", hash: []byte("short"), now: t0, want: tokenInvalid},
			{name: "at expiry", token: "expired", now: expires, want: tokenInvalid},
			{name: "after expiry", token: "expired", now: expires.Add(time.Hour), want: tokenInvalid},
			{name: "last millisecond", token: "b", now: expires.Add(-time.Millisecond)},
		}
		for _, st := range steps {
			hash := st.hash
			if hash == nil {
				hash = tokenHash(st.token)
			}
			// The token's subject, read without spending it, agrees with
			// what consuming it says next.
			id, err := s.JoinTokenSubject(ctx, hash, st.now)
			checkErr(t, st.name+" (subject)", err, st.want)
			if st.want == "" && id != node1 {
				t.Errorf("%s: subject %s, want %s", st.name, id, node1)
			}
			got, err := s.ConsumeJoinToken(ctx, hash, st.now)
			checkErr(t, st.name, err, st.want)
			if st.want != "" {
				if !errors.Is(err, store.ErrTokenInvalid) {
					t.Errorf("%s: %v is not ErrTokenInvalid", st.name, err)
				}
				continue
			}
			want := store.JoinToken{Hash: hash, SPIFFEID: node1, ExpiresAt: expires, CreatedAt: t0, UsedAt: st.now}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: got %+v, want %+v", st.name, got, want)
			}
		}
	})
}

// TestCreateJoinTokenRefuses: bad tokens are refused before storing, and a
// hash already stored is ErrAlreadyExists.
func TestCreateJoinTokenRefuses(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		ok := store.JoinToken{Hash: tokenHash("t"), SPIFFEID: node1, ExpiresAt: t0.Add(time.Hour)}
		if err := d.s.CreateJoinToken(ctx, ok); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			tok  store.JoinToken
			want string
		}{
			{"duplicate", ok, "store: join token: already exists"},
			{"raw token instead of hash", store.JoinToken{Hash: []byte("t"), SPIFFEID: node1, ExpiresAt: t0}, "store: join token hash is 1 bytes; it must be a SHA-256 (32 bytes)"},
			{"no SPIFFE ID", store.JoinToken{Hash: tokenHash("u"), ExpiresAt: t0}, "store: join token SPIFFE ID is empty"},
			{"no expiry", store.JoinToken{Hash: tokenHash("u"), SPIFFEID: node1}, "store: join token has no expiry"},
		}
		for _, tt := range tests {
			err := d.s.CreateJoinToken(ctx, tt.tok)
			checkErr(t, tt.name, err, tt.want)
		}
		if err := d.s.CreateJoinToken(ctx, ok); !errors.Is(err, store.ErrAlreadyExists) {
			t.Errorf("duplicate: %v is not ErrAlreadyExists", err)
		}
	})
}

// TestJoinTokenRace: many consumers of one token, half of them through a
// second Store on the same database (a second server), and exactly one wins,
// every round.
func TestJoinTokenRace(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		servers := []*store.Store{d.s, d.open(t)}
		const (
			rounds    = 10
			consumers = 16
		)
		for round := range rounds {
			hash := tokenHash(fmt.Sprint("race", round))
			if err := d.s.CreateJoinToken(ctx, store.JoinToken{Hash: hash, SPIFFEID: node1, ExpiresAt: t0.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			var (
				wins  atomic.Int32
				wg    sync.WaitGroup
				start = make(chan struct{})
				errs  = make(chan error, consumers)
			)
			for i := range consumers {
				s := servers[i%len(servers)]
				wg.Go(func() {
					<-start
					_, err := s.ConsumeJoinToken(ctx, hash, t0)
					switch {
					case err == nil:
						wins.Add(1)
					case !errors.Is(err, store.ErrTokenInvalid):
						errs <- err
					}
				})
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("round %d: unexpected error: %v", round, err)
			}
			if n := wins.Load(); n != 1 {
				t.Fatalf("round %d: %d consumers won, want exactly 1", round, n)
			}
		}
	})
}

// TestPruneJoinTokens deletes the tokens that expired before the cut-off,
// used or not, and nothing else.
func TestPruneJoinTokens(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		for i, exp := range []time.Duration{time.Minute, 2 * time.Minute, time.Hour} {
			if err := d.s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash(fmt.Sprint(i)), SPIFFEID: node1, ExpiresAt: t0.Add(exp)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.s.ConsumeJoinToken(ctx, tokenHash("0"), t0); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct {
			before time.Time
			want   int64
		}{
			{t0, 0},
			{t0.Add(time.Minute), 0}, // expiring exactly at the cut-off stays
			{t0.Add(3 * time.Minute), 2},
			{t0.Add(3 * time.Minute), 0},
		} {
			n, err := d.s.PruneJoinTokens(ctx, step.before)
			if err != nil || n != step.want {
				t.Errorf("PruneJoinTokens(%s) = %d, %v; want %d", step.before, n, err, step.want)
			}
		}
		if _, err := d.s.ConsumeJoinToken(ctx, tokenHash("2"), t0); err != nil {
			t.Errorf("the unexpired token was pruned: %v", err)
		}
	})
}

// TestListAndRevokeJoinTokens: the list holds only tokens that could still
// attest (unused, unexpired), of one SPIFFE ID if asked; a revocation
// deletes the unused tokens of an ID, or only the one whose hash begins
// with the prefix, and a revoked token consumes as an unknown one.
func TestListAndRevokeJoinTokens(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		for _, tok := range []struct {
			name string
			id   spiffeid.ID
			exp  time.Duration
		}{
			{"a", node1, time.Hour}, {"b", node1, 2 * time.Hour}, {"used", node1, time.Hour}, {"old", node1, -time.Minute}, {"c", node2, time.Hour},
		} {
			if err := d.s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash(tok.name), SPIFFEID: tok.id, ExpiresAt: t0.Add(tok.exp)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.s.ConsumeJoinToken(ctx, tokenHash("used"), t0); err != nil {
			t.Fatal(err)
		}
		hashes := func(ts []store.JoinToken) [][]byte {
			var out [][]byte
			for _, tk := range ts {
				out = append(out, tk.Hash)
			}
			return out
		}
		all, err := d.s.ListJoinTokens(ctx, spiffeid.ID{}, t0)
		if err != nil || !reflect.DeepEqual(hashes(all), [][]byte{tokenHash("a"), tokenHash("b"), tokenHash("c")}) {
			t.Fatalf("ListJoinTokens(all) = %x, %v; want a, b (node1, by expiry), c", hashes(all), err)
		}
		if all[0].SPIFFEID != node1 || !all[0].ExpiresAt.Equal(t0.Add(time.Hour)) || !all[0].CreatedAt.Equal(t0) {
			t.Errorf("first token: %+v", all[0])
		}
		if two, err := d.s.ListJoinTokens(ctx, node2, t0); err != nil || len(two) != 1 {
			t.Errorf("ListJoinTokens(node2) = %d, %v; want 1", len(two), err)
		}

		// Only b, by its prefix; then the rest of node1's unused ones.
		if n, err := d.s.RevokeJoinTokens(ctx, node1, tokenHash("b")[:4]); err != nil || n != 1 {
			t.Fatalf("RevokeJoinTokens(b's prefix) = %d, %v; want 1", n, err)
		}
		if _, err := d.s.ConsumeJoinToken(ctx, tokenHash("b"), t0); !errors.Is(err, store.ErrTokenInvalid) {
			t.Errorf("consuming a revoked token: %v, want ErrTokenInvalid", err)
		}
		if n, err := d.s.RevokeJoinTokens(ctx, node1, nil); err != nil || n != 2 { // a and the expired one
			t.Fatalf("RevokeJoinTokens(node1) = %d, %v; want 2", n, err)
		}
		left, _ := d.s.ListJoinTokens(ctx, spiffeid.ID{}, t0)
		if !reflect.DeepEqual(hashes(left), [][]byte{tokenHash("c")}) {
			t.Errorf("left after revoking node1's: %x, want c", hashes(left))
		}
		_, err = d.s.RevokeJoinTokens(ctx, spiffeid.ID{}, nil)
		checkErr(t, "RevokeJoinTokens(no ID)", err, "store: join token SPIFFE ID is empty")
	})
}
