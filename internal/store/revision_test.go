package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
)

// TestRevision: the revision moves by one on each change to entries,
// authorities and federated bundles, in the same transaction, and on nothing
// else; a second server on the same database sees the same value.
func TestRevision(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		other := d.open(t)
		ca := caDER(t, "east CA", t0.Add(time.Hour), true)
		var entryID string
		steps := []struct {
			name string
			do   func() error
			want int64
		}{
			{"create entry", func() error {
				e, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}})
				entryID = e.ID
				return err
			}, 1},
			{"duplicate entry (refused)", func() error {
				_, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}})
				return ignore(err, store.ErrAlreadyExists)
			}, 1},
			{"join token", func() error {
				return d.s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash("t"), SPIFFEID: node1, ExpiresAt: t0.Add(time.Hour)})
			}, 1},
			{"node", func() error {
				return d.s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "1", ExpiresAt: t0})
			}, 1},
			{"audit", func() error {
				return d.s.RecordIssued(ctx, store.Issued{Serial: "1", SPIFFEID: web.String(), CredentialKind: "svid", NotAfter: t0})
			}, 1},
			{"add CA", func() error { return d.s.AddX509Authority(ctx, store.X509Authority{DER: ca}) }, 2},
			{"add CA again, other server", func() error { return other.AddX509Authority(ctx, store.X509Authority{DER: ca}) }, 2},
			{"add JWT key", func() error {
				return other.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "k", PublicKeyDER: publicKeyDER(t), NotAfter: t0.Add(time.Hour)})
			}, 3},
			{"set bundle", func() error { return d.s.SetFederatedBundle(ctx, west, []byte(`{"keys":[]}`)) }, 4},
			{"set same bundle", func() error { return d.s.SetFederatedBundle(ctx, west, []byte(`{"keys":[]}`)) }, 4},
			{"change bundle", func() error { return other.SetFederatedBundle(ctx, west, []byte(`{"keys": []}`)) }, 5},
			{"delete bundle", func() error { return d.s.DeleteFederatedBundle(ctx, west) }, 6},
			{"delete missing bundle", func() error { return ignore(d.s.DeleteFederatedBundle(ctx, west), store.ErrNotFound) }, 6},
			{"delete entry", func() error { return other.DeleteEntry(ctx, entryID) }, 7},
			{"delete missing entry", func() error { return ignore(d.s.DeleteEntry(ctx, entryID), store.ErrNotFound) }, 7},
			{"remove expired, none", func() error { _, err := d.s.RemoveExpiredAuthorities(ctx, t0); return err }, 7},
			{"remove expired, two", func() error { _, err := d.s.RemoveExpiredAuthorities(ctx, t0.Add(2*time.Hour)); return err }, 8},
		}
		for _, st := range steps {
			if err := st.do(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			for i, s := range []*store.Store{d.s, other} {
				if rev := mustRevision(t, s); rev != st.want {
					t.Errorf("%s: server %d sees revision %d, want %d", st.name, i+1, rev, st.want)
				}
			}
		}
	})
}

// ignore returns nil if err is target, else err (or an error if err is nil).
func ignore(err, target error) error {
	if errors.Is(err, target) {
		return nil
	}
	if err == nil {
		return errors.New("no error, want " + target.Error())
	}
	return err
}

// TestConcurrentChanges: two servers change entries, authorities and
// bundles at once, including deleting an entry while the other re-creates
// it. Every call ends in success or its documented error (never a deadlock
// or a serialization failure), and the revision counts exactly the changes
// that succeeded.
func TestConcurrentChanges(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		servers := []*store.Store{d.s, d.open(t)}
		entry := store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}}
		first, err := d.s.CreateEntry(ctx, entry)
		if err != nil {
			t.Fatal(err)
		}
		var (
			changes atomic.Int64
			mu      sync.Mutex
			ids     = []string{first.ID}
		)
		changes.Add(1)
		const rounds = 20
		cas := make([][]byte, rounds)
		for i := range cas {
			cas[i] = caDER(t, fmt.Sprint("CA ", i), t0.Add(time.Hour), true)
		}
		for round := range rounds {
			var wg sync.WaitGroup
			for i, s := range servers {
				wg.Go(func() { // delete the entry
					mu.Lock()
					id := ids[len(ids)-1]
					mu.Unlock()
					switch err := s.DeleteEntry(ctx, id); {
					case err == nil:
						changes.Add(1)
					case !errors.Is(err, store.ErrNotFound):
						t.Errorf("DeleteEntry: %v", err)
					}
				})
				wg.Go(func() { // re-create it
					switch e, err := s.CreateEntry(ctx, entry); {
					case err == nil:
						changes.Add(1)
						mu.Lock()
						ids = append(ids, e.ID)
						mu.Unlock()
					case !errors.Is(err, store.ErrAlreadyExists):
						t.Errorf("CreateEntry: %v", err)
					}
				})
				wg.Go(func() { // both servers add this round's CA; one changes the set
					if err := s.AddX509Authority(ctx, store.X509Authority{DER: cas[round]}); err != nil {
						t.Errorf("AddX509Authority: %v", err)
					}
				})
				wg.Go(func() { // each call stores new content: always a change
					if err := s.SetFederatedBundle(ctx, west, fmt.Appendf(nil, `{"round":%d,"server":%d}`, round, i)); err != nil {
						t.Errorf("SetFederatedBundle: %v", err)
					}
					changes.Add(1)
				})
			}
			wg.Wait()
			changes.Add(1) // one of the two CA adds
		}
		auth, err := d.s.LocalAuthorities(ctx)
		if err != nil || auth.Sequence != rounds || len(auth.X509) != rounds {
			t.Errorf("LocalAuthorities: sequence %d, %d CAs, %v; want %d and %d", auth.Sequence, len(auth.X509), err, rounds, rounds)
		}
		if rev := mustRevision(t, d.s); rev != changes.Load() {
			t.Errorf("revision %d after %d changes", rev, changes.Load())
		}
	})
}
