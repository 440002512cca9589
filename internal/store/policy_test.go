package store_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/store"
)

func peerAuth(ns, name, mode string) store.Policy {
	return store.Policy{Kind: "PeerAuthentication", Namespace: ns, Name: name, YAML: []byte(
		"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\nspec:\n  mtls:\n    mode: " + mode + "\n")}
}

// TestPolicies: apply creates, a second apply with other YAML configures
// (keeping CreatedAt, moving UpdatedAt, Generation and Revision), the same
// YAML is unchanged and moves no revision; list is ordered by kind,
// namespace, name; delete removes one and then says not found.
func TestPolicies(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		if got, rev, err := d.s.ListPolicies(ctx); err != nil || got != nil || rev != 0 {
			t.Fatalf("ListPolicies on a fresh store = %v, %d, %v; want nothing, 0", got, rev, err)
		}
		strict := peerAuth("default", "default", "STRICT")
		authz := store.Policy{Kind: "AuthorizationPolicy", Namespace: "foo", Name: "allow-sleep", YAML: []byte("kind: AuthorizationPolicy\n")}
		root := peerAuth("istio-system", "mesh", "PERMISSIVE")
		applied, prev, err := d.s.ApplyPolicies(ctx, []store.Policy{strict, authz, root})
		if err != nil {
			t.Fatal(err)
		}
		if prev != 1 {
			t.Errorf("policy revision after the first apply = %d, want 1", prev)
		}
		created := func(p store.Policy, at time.Time, rev int64) store.Policy {
			p.CreatedAt, p.UpdatedAt, p.Generation, p.Revision = at, at, 1, rev
			return p
		}
		want := []store.AppliedPolicy{
			{created(strict, t0, 1), store.PolicyCreated},
			{created(authz, t0, 1), store.PolicyCreated},
			{created(root, t0, 1), store.PolicyCreated},
		}
		if !reflect.DeepEqual(applied, want) {
			t.Errorf("ApplyPolicies:\n got %+v\nwant %+v", applied, want)
		}

		// A minute later: one changed, one the same.
		d.clock.Advance(time.Minute)
		permissive := peerAuth("default", "default", "PERMISSIVE")
		applied, rev, err := d.s.ApplyPolicies(ctx, []store.Policy{permissive, authz})
		if err != nil {
			t.Fatal(err)
		}
		configured := permissive
		configured.CreatedAt, configured.UpdatedAt, configured.Generation, configured.Revision = t0, t0.Add(time.Minute), 2, 2
		want = []store.AppliedPolicy{{configured, store.PolicyConfigured}, {created(authz, t0, 1), store.PolicyUnchanged}}
		if !reflect.DeepEqual(applied, want) || rev != 2 {
			t.Errorf("ApplyPolicies again:\n got %+v, revision %d\nwant %+v, revision 2", applied, rev, want)
		}

		// Nothing new: no revision moves.
		if _, rev, err := d.s.ApplyPolicies(ctx, []store.Policy{permissive, root}); err != nil || rev != 2 {
			t.Errorf("ApplyPolicies of stored YAML: revision %d, %v; want 2", rev, err)
		}
		if r := mustRevision(t, d.s); r != 2 {
			t.Errorf("store revision after an apply that changed nothing = %d, want 2", r)
		}

		// Another server on the same database lists the same, in order.
		list, rev, err := d.open(t).ListPolicies(ctx)
		wantList := []store.Policy{created(authz, t0, 1), configured, created(root, t0, 1)}
		if err != nil || !reflect.DeepEqual(list, wantList) || rev != 2 {
			t.Errorf("ListPolicies:\n got %+v, %d, %v\nwant %+v, 2", list, rev, err, wantList)
		}

		rev, err = d.s.DeletePolicy(ctx, "PeerAuthentication", "default", "default")
		if err != nil || rev != 3 {
			t.Fatalf("DeletePolicy = %d, %v; want revision 3", rev, err)
		}
		_, err = d.s.DeletePolicy(ctx, "PeerAuthentication", "default", "default")
		checkErr(t, "DeletePolicy twice", err, "store: policy PeerAuthentication default/default: not found")
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%v is not ErrNotFound", err)
		}
		if r := mustRevision(t, d.s); r != 3 {
			t.Errorf("store revision after deleting a missing policy = %d, want 3", r)
		}
		list, rev, err = d.s.ListPolicies(ctx)
		if wantList = wantList[:1:1]; err != nil || rev != 3 || !reflect.DeepEqual(list, append(wantList, created(root, t0, 1))) {
			t.Errorf("ListPolicies after delete: %+v, %d, %v", list, rev, err)
		}

		// Deleted and applied again: a new creation time, generation 1.
		d.clock.Advance(time.Minute)
		applied, rev, err = d.s.ApplyPolicies(ctx, []store.Policy{strict})
		if err != nil || rev != 4 || !reflect.DeepEqual(applied, []store.AppliedPolicy{{created(strict, t0.Add(2*time.Minute), 4), store.PolicyCreated}}) {
			t.Errorf("ApplyPolicies after delete: %+v, %d, %v", applied, rev, err)
		}
	})
}

// TestApplyPoliciesAllOrNothing: a batch that fails in the database (it
// would store more than the bounds allow) leaves nothing of itself behind,
// not even the documents before the one that broke the bound, and moves no
// revision.
func TestApplyPoliciesAllOrNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		big := func(name string, n int) store.Policy {
			return store.Policy{Kind: "AuthorizationPolicy", Namespace: "default", Name: name, YAML: bytes.Repeat([]byte("#"), n)}
		}
		// Seven documents of the maximum size and one that fills the rest
		// exactly: the whole set is MaxPolicyTotalBytes.
		var full []store.Policy
		for i := range store.MaxPolicyTotalBytes / store.MaxPolicyBytes {
			full = append(full, big(string(rune('a'+i)), store.MaxPolicyBytes))
		}
		last := full[len(full)-1]
		full = full[:len(full)-1]
		if _, _, err := d.s.ApplyPolicies(ctx, full); err != nil {
			t.Fatal(err)
		}
		before := mustRevision(t, d.s)

		over := []store.Policy{big("new-1", 10), last, big("new-2", 1)}
		_, _, err := d.s.ApplyPolicies(ctx, over)
		checkErr(t, "a batch over the total", err, "store: applying these would store 2097163 bytes of policy, more than the 2097152 allowed; delete some first")
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%v is not ErrInvalid", err)
		}
		list, rev, err := d.s.ListPolicies(ctx)
		if err != nil || len(list) != len(full) || rev != before {
			t.Errorf("after the refused batch: %d policies, revision %d, %v; want %d, %d", len(list), rev, err, len(full), before)
		}
		for _, p := range list {
			if strings.HasPrefix(p.Name, "new-") {
				t.Errorf("%s of the refused batch was stored", p.Name)
			}
		}
		if r := mustRevision(t, d.s); r != before {
			t.Errorf("store revision after the refused batch = %d, want %d", r, before)
		}

		// Exactly the bound is accepted.
		if _, _, err := d.s.ApplyPolicies(ctx, []store.Policy{last}); err != nil {
			t.Errorf("filling the store exactly: %v", err)
		}
	})
}

// TestApplyPoliciesRefuses: what the store refuses before touching the
// database.
func TestApplyPoliciesRefuses(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ok := peerAuth("default", "default", "STRICT")
		with := func(f func(p *store.Policy)) []store.Policy {
			p := ok
			f(&p)
			return []store.Policy{p}
		}
		tooMany := make([]store.Policy, store.MaxPolicies+1)
		tests := []struct {
			name  string
			batch []store.Policy
			want  string
		}{
			{"empty batch", nil, "store: no policy documents to apply"},
			{"too many", tooMany, "store: 4097 policy documents in one batch, more than the 4096 allowed"},
			{"no kind", with(func(p *store.Policy) { p.Kind = "" }), "store: policy kind is empty"},
			{"no namespace", with(func(p *store.Policy) { p.Namespace = "" }), "store: policy namespace is empty"},
			{"no name", with(func(p *store.Policy) { p.Name = "" }), "store: policy name is empty"},
			{"long namespace", with(func(p *store.Policy) { p.Namespace = strings.Repeat("n", 64) }), "store: policy namespace is 64 bytes, more than the 63 allowed"},
			{"long name", with(func(p *store.Policy) { p.Name = strings.Repeat("n", 254) }), "store: policy name is 254 bytes, more than the 253 allowed"},
			{"empty YAML", with(func(p *store.Policy) { p.YAML = nil }), "store: policy PeerAuthentication default/default is empty"},
			{"big YAML", with(func(p *store.Policy) { p.YAML = make([]byte, store.MaxPolicyBytes+1) }), "store: policy PeerAuthentication default/default is 262145 bytes, more than the 262144 allowed"},
			{"twice", []store.Policy{ok, ok}, "store: policy PeerAuthentication default/default is twice in one batch"},
		}
		for _, tt := range tests {
			_, _, err := d.s.ApplyPolicies(context.Background(), tt.batch)
			checkErr(t, tt.name, err, tt.want)
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s: %v is not ErrInvalid", tt.name, err)
			}
		}
		_, err := d.s.DeletePolicy(context.Background(), "PeerAuthentication", "", "x")
		checkErr(t, "delete without namespace", err, "store: policy namespace is empty")
		if r := mustRevision(t, d.s); r != 0 {
			t.Errorf("revision after refused calls = %d, want 0", r)
		}
	})
}
