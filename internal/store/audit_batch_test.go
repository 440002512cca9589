package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/meshfed/meshfed/internal/store"
)

// TestRecordIssuedConcurrent: rows recorded at once, which the store
// commits in shared batches, are each committed exactly once; a row refused
// for its own content fails only its own caller, with its own error.
func TestRecordIssuedConcurrent(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		const callers = 100
		ctx := context.Background()
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				r := store.Issued{Serial: fmt.Sprintf("%x", 0x1000+i), SPIFFEID: web.String(), CredentialKind: "svid", Caller: "node-a", NotAfter: t0}
				if i%10 == 0 {
					r.Caller = "node-a\x00" // refused before it can join a batch
				}
				errs[i] = d.s.RecordIssued(ctx, r)
			})
		}
		wg.Wait()
		var want []string
		for i, err := range errs {
			if i%10 == 0 {
				checkErr(t, fmt.Sprintf("row %d", i), err, `store: issued certificate caller "node-a\x00" is not UTF-8 text without NUL`)
				if !errors.Is(err, store.ErrInvalid) {
					t.Errorf("row %d: %v is not ErrInvalid", i, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("row %d: %v", i, err)
			}
			want = append(want, fmt.Sprintf("%x", 0x1000+i))
		}
		rows, err := d.s.ListIssued(ctx, store.AuditFilter{Limit: store.MaxAuditLimit})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.Serial)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("audit log has serials\n%v\nwant\n%v", got, want)
		}
	})
}

// TestRecordIssuedFailureNamesEachRow: when the database fails a commit,
// every caller in it learns, with its own serial in the error.
func TestRecordIssuedFailureNamesEachRow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		s, err := store.Open(context.Background(), d.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		errs := make([]error, 20)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				errs[i] = s.RecordIssued(context.Background(), store.Issued{Serial: fmt.Sprintf("%x", 0xa0+i), SPIFFEID: web.String(), CredentialKind: "svid", NotAfter: t0})
			})
		}
		wg.Wait()
		for i, err := range errs {
			prefix := fmt.Sprintf("store: recording issued certificate %x: ", 0xa0+i)
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || errors.Is(err, store.ErrInvalid) {
				t.Errorf("row %d: %v, want an error starting %q", i, err, prefix)
			}
		}
	})
}
