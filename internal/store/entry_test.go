package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/store"
)

// TestEntryCRUD: an entry comes back as stored, normalized, with its ID,
// creation time and revision; deleting it makes it not found.
func TestEntryCRUD(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		in := store.Entry{
			ParentID:      node1,
			SPIFFEID:      web,
			Selectors:     []store.Selector{uid1000, k8sNSdef, gid50},
			X509TTL:       90 * time.Minute,
			DNSNames:      []string{"web.east.example", "api.east.example"},
			FederatesWith: []spiffeid.TrustDomain{west, north},
			Admin:         true,
		}
		created, err := d.s.CreateEntry(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if len(created.ID) != 32 || strings.Trim(created.ID, "0123456789abcdef") != "" {
			t.Errorf("ID = %q, want 32 hex characters", created.ID)
		}
		want := store.Entry{
			ID:            created.ID,
			ParentID:      node1,
			SPIFFEID:      web,
			Selectors:     []store.Selector{k8sNSdef, gid50, uid1000}, // sorted by type, then value
			X509TTL:       90 * time.Minute,
			DNSNames:      []string{"web.east.example", "api.east.example"}, // caller's order
			FederatesWith: []spiffeid.TrustDomain{north, west},              // sorted
			Admin:         true,
			CreatedAt:     t0,
			Revision:      1,
		}
		if !reflect.DeepEqual(created, want) {
			t.Errorf("CreateEntry:\n got %+v\nwant %+v", created, want)
		}
		if in.Selectors[0] != uid1000 {
			t.Error("CreateEntry reordered the caller's slice")
		}
		got, err := d.s.GetEntry(ctx, created.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetEntry:\n got %+v, %v\nwant %+v", got, err, want)
		}

		if err := d.s.DeleteEntry(ctx, created.ID); err != nil {
			t.Fatal(err)
		}
		_, err = d.s.GetEntry(ctx, created.ID)
		checkErr(t, "GetEntry after delete", err, fmt.Sprintf("store: entry %q: not found", created.ID))
		err = d.s.DeleteEntry(ctx, created.ID)
		checkErr(t, "DeleteEntry twice", err, fmt.Sprintf("store: entry %q: not found", created.ID))
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%v is not ErrNotFound", err)
		}
		for _, id := range []string{"", strings.Repeat("a", 65)} {
			_, err := d.s.GetEntry(ctx, id)
			checkErr(t, "GetEntry("+id+")", err, fmt.Sprintf("store: entry %q: not found", id))
		}
	})
}

// TestUpdateEntry: an update replaces every field but the ID and the
// creation time, moves the revision, and is refused when the entry changed
// since the revision given, when it is gone, and when it would duplicate
// another entry; a refused update changes nothing.
func TestUpdateEntry(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		first, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}})
		if err != nil {
			t.Fatal(err)
		}
		other, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: db, Selectors: []store.Selector{gid50}})
		if err != nil {
			t.Fatal(err)
		}
		d.clock.Advance(time.Minute)
		in := store.Entry{ID: first.ID, ParentID: node2, SPIFFEID: web, Selectors: []store.Selector{uid1000, k8sNSdef},
			X509TTL: time.Hour, DNSNames: []string{"web.east.example"}, FederatesWith: []spiffeid.TrustDomain{west}}
		got, err := d.s.UpdateEntry(ctx, in, first.Revision)
		want := store.Entry{ID: first.ID, ParentID: node2, SPIFFEID: web, Selectors: []store.Selector{k8sNSdef, uid1000},
			X509TTL: time.Hour, DNSNames: []string{"web.east.example"}, FederatesWith: []spiffeid.TrustDomain{west},
			CreatedAt: t0, Revision: 3}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("UpdateEntry:\n got %+v, %v\nwant %+v", got, err, want)
		}
		if stored, err := d.s.GetEntry(ctx, first.ID); err != nil || !reflect.DeepEqual(stored, want) {
			t.Errorf("GetEntry after the update:\n got %+v, %v\nwant %+v", stored, err, want)
		}
		if rev := mustRevision(t, d.s); rev != 3 {
			t.Errorf("revision %d after the update, want 3", rev)
		}

		// A second writer that read the entry before the update.
		_, err = d.s.UpdateEntry(ctx, store.Entry{ID: first.ID, ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}}, first.Revision)
		checkErr(t, "UpdateEntry(stale)", err, fmt.Sprintf("store: entry %q is at revision 3, not the 1 it was read at; read it again: stale", first.ID))
		if !errors.Is(err, store.ErrStale) {
			t.Errorf("%v is not ErrStale", err)
		}
		// Made the same as the other entry.
		_, err = d.s.UpdateEntry(ctx, store.Entry{ID: first.ID, ParentID: node1, SPIFFEID: db, Selectors: []store.Selector{gid50}}, 0)
		checkErr(t, "UpdateEntry(duplicate)", err, "store: an entry for spiffe://east.example/ns/default/sa/db under "+node1.String()+" with selectors unix:gid:50: already exists")
		_, err = d.s.UpdateEntry(ctx, store.Entry{ID: "0123", ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}}, 0)
		checkErr(t, "UpdateEntry(unknown)", err, `store: entry "0123": not found`)
		_, err = d.s.UpdateEntry(ctx, store.Entry{ID: first.ID, ParentID: node1, SPIFFEID: web}, 0)
		checkErr(t, "UpdateEntry(no selectors)", err, "store: entry has no selectors; an entry needs at least one, as in unix:uid:1000")
		if stored, err := d.s.GetEntry(ctx, first.ID); err != nil || !reflect.DeepEqual(stored, want) {
			t.Errorf("a refused update changed the entry:\n got %+v, %v\nwant %+v", stored, err, want)
		}
		if stored, err := d.s.GetEntry(ctx, other.ID); err != nil || stored.Revision != 2 {
			t.Errorf("the other entry: %+v, %v", stored, err)
		}
		if rev := mustRevision(t, d.s); rev != 3 {
			t.Errorf("refused updates moved the revision to %d", rev)
		}
		// Revision 0 replaces whatever is stored.
		if got, err := d.s.UpdateEntry(ctx, store.Entry{ID: first.ID, ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}}, 0); err != nil || got.Revision != 4 {
			t.Errorf("UpdateEntry(revision 0): %+v, %v", got, err)
		}
	})
}

// TestEntryMinimal: an entry with only the required fields stores empty
// lists as nil and a zero TTL (the server's default).
func TestEntryMinimal(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		e, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}, DNSNames: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.s.GetEntry(ctx, e.ID)
		want := store.Entry{ID: e.ID, ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}, CreatedAt: t0, Revision: 1}
		if err != nil || !reflect.DeepEqual(got, want) || !reflect.DeepEqual(e, want) {
			t.Errorf("got %+v (created %+v), %v\nwant %+v", got, e, err, want)
		}
	})
}

// TestEntryDuplicate: the same parent, SPIFFE ID and selector set (in any
// order) is refused; changing any of the three makes a new entry.
func TestEntryDuplicate(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		base := store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000, gid50}}
		if _, err := d.s.CreateEntry(ctx, base); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			e    store.Entry
			want string
		}{
			{"same", base, "store: an entry for spiffe://east.example/ns/default/sa/web under spiffe://east.example/spire/agent/join_token/node1 with selectors unix:gid:50,unix:uid:1000: already exists"},
			{"selectors reordered, other fields differ", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{gid50, uid1000}, X509TTL: time.Hour, Admin: true},
				"store: an entry for spiffe://east.example/ns/default/sa/web under spiffe://east.example/spire/agent/join_token/node1 with selectors unix:gid:50,unix:uid:1000: already exists"},
			{"other parent", store.Entry{ParentID: node2, SPIFFEID: web, Selectors: []store.Selector{uid1000, gid50}}, ""},
			{"other SPIFFE ID", store.Entry{ParentID: node1, SPIFFEID: db, Selectors: []store.Selector{uid1000, gid50}}, ""},
			{"subset of selectors", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}}, ""},
			// Without length prefixes "unix"+"uid:1000" and "unixu"+"id:1000" would collide.
			{"selector split elsewhere", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Type: "unixu", Value: "id:1000"}, gid50}}, ""},
		}
		for _, tt := range tests {
			_, err := d.s.CreateEntry(ctx, tt.e)
			checkErr(t, tt.name, err, tt.want)
			if tt.want != "" && !errors.Is(err, store.ErrAlreadyExists) {
				t.Errorf("%s: %v is not ErrAlreadyExists", tt.name, err)
			}
		}
		all, err := d.s.ListEntries(ctx, store.EntryFilter{})
		if err != nil || len(all) != 5 {
			t.Errorf("ListEntries: %d entries, %v; want 5", len(all), err)
		}
		// A refused duplicate bumps nothing.
		if rev := mustRevision(t, d.s); rev != 5 {
			t.Errorf("Revision = %d, want 5", rev)
		}
	})
}

// TestListEntries: filters by parent and SPIFFE ID, alone and together, in
// a fixed order (byte order of SPIFFE ID, then parent, then ID) on both back
// ends.
func TestListEntries(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		// Upper case sorts before lower case in byte order, after it in
		// most locales: the order must not depend on the database's.
		upper := spiffeid.RequireFromString("spiffe://east.example/ns/default/sa/Web")
		create := func(parent, id spiffeid.ID) store.Entry {
			t.Helper()
			e, err := d.s.CreateEntry(ctx, store.Entry{ParentID: parent, SPIFFEID: id, Selectors: []store.Selector{uid1000}})
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
		webOn2 := create(node2, web)
		dbOn1 := create(node1, db)
		webOn1 := create(node1, web)
		upperOn1 := create(node1, upper)

		p := func(id spiffeid.ID) *spiffeid.ID { return &id }
		tests := []struct {
			name   string
			filter store.EntryFilter
			want   []store.Entry
		}{
			{"all", store.EntryFilter{}, []store.Entry{upperOn1, dbOn1, webOn1, webOn2}},
			{"parent", store.EntryFilter{ParentID: p(node1)}, []store.Entry{upperOn1, dbOn1, webOn1}},
			{"SPIFFE ID", store.EntryFilter{SPIFFEID: p(web)}, []store.Entry{webOn1, webOn2}},
			{"both", store.EntryFilter{ParentID: p(node2), SPIFFEID: p(web)}, []store.Entry{webOn2}},
			{"none match", store.EntryFilter{ParentID: p(node2), SPIFFEID: p(db)}, nil},
		}
		for _, tt := range tests {
			got, err := d.s.ListEntries(ctx, tt.filter)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s:\n got %v, %v\nwant %v", tt.name, ids(got), err, ids(tt.want))
			}
		}
	})
}

func ids(entries []store.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.SPIFFEID.Path()+"@"+e.ParentID.Path())
	}
	return out
}

// TestCreateEntryRefuses: malformed and oversized entries are refused with
// ErrInvalid before anything is stored.
func TestCreateEntryRefuses(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		sel := []store.Selector{uid1000}
		many := func(n int) []store.Selector {
			s := make([]store.Selector, n)
			for i := range s {
				s[i] = store.Selector{Type: "unix", Value: fmt.Sprint("uid:", i)}
			}
			return s
		}
		names := func(n int) []string {
			s := make([]string, n)
			for i := range s {
				s[i] = fmt.Sprintf("h%d.example", i)
			}
			return s
		}
		tds := func(n int) []spiffeid.TrustDomain {
			s := make([]spiffeid.TrustDomain, n)
			for i := range s {
				s[i] = spiffeid.RequireTrustDomainFromString(fmt.Sprintf("td%d.example", i))
			}
			return s
		}
		longID := spiffeid.RequireFromString("spiffe://east.example/" + strings.Repeat("a", 2048))
		tests := []struct {
			name string
			e    store.Entry
			want string
		}{
			{"ID given", store.Entry{ID: "mine", ParentID: node1, SPIFFEID: web, Selectors: sel}, `store: entry ID "mine" given; the store assigns IDs`},
			{"no parent", store.Entry{SPIFFEID: web, Selectors: sel}, "store: entry parent ID is empty"},
			{"no SPIFFE ID", store.Entry{ParentID: node1, Selectors: sel}, "store: entry SPIFFE ID is empty"},
			{"SPIFFE ID too long", store.Entry{ParentID: node1, SPIFFEID: longID, Selectors: sel}, "store: entry SPIFFE ID is 2070 bytes, more than the 2048 allowed"},
			{"no selectors", store.Entry{ParentID: node1, SPIFFEID: web}, "store: entry has no selectors; an entry needs at least one, as in unix:uid:1000"},
			{"65 selectors", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: many(65)}, "store: entry has 65 selectors, more than the 64 allowed"},
			{"empty selector type", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Value: "uid:1"}}}, "store: selector type is empty"},
			{"colon in type", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Type: "unix:uid", Value: "1"}}}, `store: selector type "unix:uid" contains ':'`},
			{"empty selector value", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Type: "unix"}}}, "store: selector value of type unix is empty"},
			{"selector value too long", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Type: "unix", Value: strings.Repeat("x", 1025)}}}, "store: selector value of type unix is 1025 bytes, more than the 1024 allowed"},
			{"selector type too long", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{{Type: strings.Repeat("t", 65), Value: "x"}}}, "store: selector type is 65 bytes, more than the 64 allowed"},
			{"selector twice", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000, gid50, uid1000}}, "store: entry has selector unix:uid:1000 twice"},
			{"65 DNS names", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, DNSNames: names(65)}, "store: entry has 65 DNS names, more than the 64 allowed"},
			{"empty DNS name", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, DNSNames: []string{""}}, "store: entry DNS name is empty"},
			{"DNS name too long", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, DNSNames: []string{strings.Repeat("a", 254)}}, "store: entry DNS name is 254 bytes, more than the 253 allowed"},
			{"DNS name twice", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, DNSNames: []string{"a.example", "a.example"}}, `store: entry has DNS name "a.example" twice`},
			{"65 trust domains", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, FederatesWith: tds(65)}, "store: entry federates with 65 trust domains, more than the 64 allowed"},
			{"zero trust domain", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, FederatesWith: []spiffeid.TrustDomain{{}}}, "store: entry federates with an empty trust domain"},
			{"trust domain twice", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, FederatesWith: []spiffeid.TrustDomain{west, west}}, "store: entry federates with west.example twice"},
			{"negative TTL", store.Entry{ParentID: node1, SPIFFEID: web, Selectors: sel, X509TTL: -time.Second}, "store: entry X.509 TTL -1s is negative"},
		}
		for _, tt := range tests {
			_, err := d.s.CreateEntry(ctx, tt.e)
			checkErr(t, tt.name, err, tt.want)
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s: %v is not ErrInvalid", tt.name, err)
			}
		}
		// The bounds themselves are accepted.
		if _, err := d.s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: many(64), DNSNames: names(64), FederatesWith: tds(64)}); err != nil {
			t.Errorf("entry at every bound: %v", err)
		}
		if all, _ := d.s.ListEntries(ctx, store.EntryFilter{}); len(all) != 1 {
			t.Errorf("%d entries stored, want only the one at the bounds", len(all))
		}
	})
}

// TestParseSelector: "type:value", the value keeping its colons.
func TestParseSelector(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want store.Selector
		err  string
	}{
		{"unix:uid:1000", uid1000, ""},
		{"k8s:ns:default", k8sNSdef, ""},
		{"unix:path:/usr/bin/a:b", store.Selector{Type: "unix", Value: "path:/usr/bin/a:b"}, ""},
		{"unix", store.Selector{}, `store: selector "unix" is not type:value, as in unix:uid:1000`},
		{":uid:1000", store.Selector{}, "store: selector type is empty"},
		{"unix:", store.Selector{}, "store: selector value of type unix is empty"},
	}
	for _, tt := range tests {
		got, err := store.ParseSelector(tt.in)
		checkErr(t, tt.in, err, tt.err)
		if got != tt.want {
			t.Errorf("ParseSelector(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if tt.err == "" && got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
}
