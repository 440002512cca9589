package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Selector is one fact a workload must show to get an entry's identity, as
// in SPIRE: Type "unix", Value "uid:1000".
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// String is the selector as written on the command line, "type:value".
func (s Selector) String() string { return s.Type + ":" + s.Value }

// ParseSelector parses "type:value" (the value may itself contain colons,
// as in "unix:uid:1000").
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	sel := Selector{Type: typ, Value: value}
	if !ok {
		return Selector{}, invalidf("selector %q is not type:value, as in unix:uid:1000", s)
	}
	if err := checkSelector(sel); err != nil {
		return Selector{}, err
	}
	return sel, nil
}

func compareSelectors(a, b Selector) int {
	return cmp.Or(strings.Compare(a.Type, b.Type), strings.Compare(a.Value, b.Value))
}

// Entry is a registration entry (SPIRE's model): a workload that runs under
// the agent ParentID and shows every one of Selectors gets SPIFFEID.
type Entry struct {
	ID            string // assigned by CreateEntry: 32 random hex characters
	ParentID      spiffeid.ID
	SPIFFEID      spiffeid.ID
	Selectors     []Selector // at least one; stored sorted by type, then value
	X509TTL       time.Duration
	DNSNames      []string               // kept in the caller's order
	FederatesWith []spiffeid.TrustDomain // stored sorted
	Admin         bool
	CreatedAt     time.Time // set by CreateEntry
	Revision      int64     // the store revision CreateEntry made; set by CreateEntry
}

// EntryFilter selects entries; a nil field matches every entry.
type EntryFilter struct {
	ParentID *spiffeid.ID
	SPIFFEID *spiffeid.ID
}

// CreateEntry validates e, normalizes it, assigns its ID, CreatedAt and
// Revision, stores it and returns it as stored. An entry with the same
// parent, SPIFFE ID and set of selectors (in any order) as a stored one is
// refused with ErrAlreadyExists.
func (s *Store) CreateEntry(ctx context.Context, e Entry) (Entry, error) {
	if e.ID != "" {
		return Entry{}, invalidf("entry ID %q given; the store assigns IDs", e.ID)
	}
	e, err := normalizeEntry(e)
	if err != nil {
		return Entry{}, err
	}
	e.ID = newEntryID()
	e.CreatedAt = s.now()
	selectors, dnsNames, federatesWith := encodeEntryLists(e)
	err = s.change(ctx, false, func(tx *sql.Tx, rev int64) (int64, error) {
		n, err := rowsAffected(tx.ExecContext(ctx,
			`INSERT INTO entries (id, parent_id, spiffe_id, selectors, x509_ttl_ms, dns_names, federates_with, admin, created_at, revision, dedup_key)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			 ON CONFLICT (dedup_key) DO NOTHING`,
			e.ID, e.ParentID.String(), e.SPIFFEID.String(), selectors, e.X509TTL.Milliseconds(),
			dnsNames, federatesWith, e.Admin, millis(e.CreatedAt), rev, entryKey(e)))
		if err == nil && n == 0 {
			err = errDuplicate
		}
		e.Revision = rev
		return n, err
	})
	if errors.Is(err, errDuplicate) {
		return Entry{}, fmt.Errorf("store: an entry for %s under %s with selectors %s: %w", e.SPIFFEID, e.ParentID, selectorList(e.Selectors), ErrAlreadyExists)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("store: creating entry: %w", err)
	}
	return e, nil
}

// UpdateEntry replaces the stored entry e.ID with e (validated and
// normalized as CreateEntry does; its creation time is kept, its revision
// moves) and returns it as stored. With ifRevision not 0, only an entry
// still at that revision is replaced, so that two read-modify-writes cannot
// lose one of them: ErrStale otherwise. ErrNotFound if there is no such
// entry; ErrAlreadyExists if another entry has the same parent, SPIFFE ID
// and selectors.
func (s *Store) UpdateEntry(ctx context.Context, e Entry, ifRevision int64) (Entry, error) {
	id := e.ID
	if id == "" || len(id) > maxEntryIDBytes {
		return Entry{}, fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	e, err := normalizeEntry(e)
	if err != nil {
		return Entry{}, err
	}
	selectors, dnsNames, federatesWith := encodeEntryLists(e)
	err = s.change(ctx, false, func(tx *sql.Tx, rev int64) (int64, error) {
		var current int64
		var created int64
		switch err := tx.QueryRowContext(ctx, `SELECT revision, created_at FROM entries WHERE id = $1`, id).Scan(&current, &created); {
		case errors.Is(err, sql.ErrNoRows):
			return 0, ErrNotFound
		case err != nil:
			return 0, err
		case ifRevision != 0 && current != ifRevision:
			return 0, fmt.Errorf("entry %q is at revision %d, not the %d it was read at; read it again: %w", id, current, ifRevision, ErrStale)
		}
		var other string
		switch err := tx.QueryRowContext(ctx, `SELECT id FROM entries WHERE dedup_key = $1 AND id <> $2`, entryKey(e), id).Scan(&other); {
		case err == nil:
			return 0, errDuplicate
		case !errors.Is(err, sql.ErrNoRows):
			return 0, err
		}
		n, err := rowsAffected(tx.ExecContext(ctx,
			`UPDATE entries SET parent_id = $2, spiffe_id = $3, selectors = $4, x509_ttl_ms = $5, dns_names = $6,
			   federates_with = $7, admin = $8, revision = $9, dedup_key = $10
			 WHERE id = $1`,
			id, e.ParentID.String(), e.SPIFFEID.String(), selectors, e.X509TTL.Milliseconds(),
			dnsNames, federatesWith, e.Admin, rev, entryKey(e)))
		e.Revision, e.CreatedAt = rev, fromMillis(created)
		return n, err
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return Entry{}, fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	case errors.Is(err, errDuplicate):
		return Entry{}, fmt.Errorf("store: an entry for %s under %s with selectors %s: %w", e.SPIFFEID, e.ParentID, selectorList(e.Selectors), ErrAlreadyExists)
	case errors.Is(err, ErrStale):
		return Entry{}, fmt.Errorf("store: %w", err)
	case err != nil:
		return Entry{}, fmt.Errorf("store: updating entry %q: %w", id, err)
	}
	return e, nil
}

// errDuplicate makes a write transaction roll back on a duplicate.
var errDuplicate = errors.New("duplicate")

// GetEntry returns the entry with this ID, or ErrNotFound.
func (s *Store) GetEntry(ctx context.Context, id string) (Entry, error) {
	if id == "" || len(id) > maxEntryIDBytes {
		return Entry{}, fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	e, err := scanEntry(s.r.QueryRowContext(ctx, `SELECT `+entryColumns+` FROM entries WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("store: reading entry %q: %w", id, err)
	}
	return e, nil
}

// ListEntries returns the entries f selects, ordered by SPIFFE ID, then
// parent ID, then ID.
func (s *Store) ListEntries(ctx context.Context, f EntryFilter) ([]Entry, error) {
	var (
		where []string
		args  []any
	)
	if f.ParentID != nil {
		args = append(args, f.ParentID.String())
		where = append(where, fmt.Sprintf("parent_id = $%d", len(args)))
	}
	if f.SPIFFEID != nil {
		args = append(args, f.SPIFFEID.String())
		where = append(where, fmt.Sprintf("spiffe_id = $%d", len(args)))
	}
	q := `SELECT ` + entryColumns + ` FROM entries`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY spiffe_id, parent_id, id`
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: listing entries: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("store: listing entries: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: listing entries: %w", err)
	}
	return out, nil
}

// DeleteEntry deletes the entry with this ID, or returns ErrNotFound.
func (s *Store) DeleteEntry(ctx context.Context, id string) error {
	if id == "" || len(id) > maxEntryIDBytes {
		return fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	err := s.change(ctx, false, func(tx *sql.Tx, _ int64) (int64, error) {
		n, err := rowsAffected(tx.ExecContext(ctx, `DELETE FROM entries WHERE id = $1`, id))
		if err == nil && n == 0 {
			err = ErrNotFound
		}
		return n, err
	})
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: deleting entry %q: %w", id, err)
	}
	return nil
}

const entryColumns = `id, parent_id, spiffe_id, selectors, x509_ttl_ms, dns_names, federates_with, admin, created_at, revision`

type scanner interface{ Scan(dest ...any) error }

func scanEntry(row scanner) (Entry, error) {
	var (
		e                                  Entry
		parent, sid                        string
		selectors, dnsNames, federatesWith string
		ttl, createdAt                     int64
	)
	if err := row.Scan(&e.ID, &parent, &sid, &selectors, &ttl, &dnsNames, &federatesWith, &e.Admin, &createdAt, &e.Revision); err != nil {
		return Entry{}, err
	}
	var err error
	what := "entry " + e.ID
	if e.ParentID, err = parseStoredID(what, parent); err != nil {
		return Entry{}, err
	}
	if e.SPIFFEID, err = parseStoredID(what, sid); err != nil {
		return Entry{}, err
	}
	var tds []string
	if err := errors.Join(
		json.Unmarshal([]byte(selectors), &e.Selectors),
		json.Unmarshal([]byte(dnsNames), &e.DNSNames),
		json.Unmarshal([]byte(federatesWith), &tds),
	); err != nil {
		return Entry{}, fmt.Errorf("%s: stored lists are corrupt: %w", what, err)
	}
	for _, name := range tds {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return Entry{}, fmt.Errorf("%s: stored trust domain %q is corrupt: %w", what, name, err)
		}
		e.FederatesWith = append(e.FederatesWith, td)
	}
	if len(e.DNSNames) == 0 {
		e.DNSNames = nil
	}
	e.X509TTL = time.Duration(ttl) * time.Millisecond
	e.CreatedAt = fromMillis(createdAt)
	return e, nil
}

// normalizeEntry checks e against the bounds and returns it with its lists
// copied and sorted (selectors, trust domains) so that equal entries are
// stored, compared and listed alike.
func normalizeEntry(e Entry) (Entry, error) {
	if err := checkID("entry parent ID", e.ParentID); err != nil {
		return Entry{}, err
	}
	if err := checkID("entry SPIFFE ID", e.SPIFFEID); err != nil {
		return Entry{}, err
	}
	switch n := len(e.Selectors); {
	case n == 0:
		return Entry{}, invalidf("entry has no selectors; an entry needs at least one, as in unix:uid:1000")
	case n > MaxSelectors:
		return Entry{}, invalidf("entry has %d selectors, more than the %d allowed", n, MaxSelectors)
	}
	if len(e.DNSNames) > MaxDNSNames {
		return Entry{}, invalidf("entry has %d DNS names, more than the %d allowed", len(e.DNSNames), MaxDNSNames)
	}
	if len(e.FederatesWith) > MaxFederatesWith {
		return Entry{}, invalidf("entry federates with %d trust domains, more than the %d allowed", len(e.FederatesWith), MaxFederatesWith)
	}
	if e.X509TTL < 0 {
		return Entry{}, invalidf("entry X.509 TTL %s is negative", e.X509TTL)
	}

	e.Selectors = slices.Clone(e.Selectors)
	for _, sel := range e.Selectors {
		if err := checkSelector(sel); err != nil {
			return Entry{}, err
		}
	}
	slices.SortFunc(e.Selectors, compareSelectors)
	for i := 1; i < len(e.Selectors); i++ {
		if e.Selectors[i] == e.Selectors[i-1] {
			return Entry{}, invalidf("entry has selector %s twice", e.Selectors[i])
		}
	}

	e.DNSNames = slices.Clone(e.DNSNames)
	seen := make(map[string]bool, len(e.DNSNames))
	for _, name := range e.DNSNames {
		if err := checkText("entry DNS name", name, MaxDNSNameBytes, true); err != nil {
			return Entry{}, err
		}
		if seen[name] {
			return Entry{}, invalidf("entry has DNS name %q twice", name)
		}
		seen[name] = true
	}

	e.FederatesWith = slices.Clone(e.FederatesWith)
	slices.SortFunc(e.FederatesWith, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	for i, td := range e.FederatesWith {
		if td.IsZero() {
			return Entry{}, invalidf("entry federates with an empty trust domain")
		}
		if i > 0 && td == e.FederatesWith[i-1] {
			return Entry{}, invalidf("entry federates with %s twice", td.Name())
		}
	}
	e.X509TTL = e.X509TTL.Truncate(time.Millisecond)
	if len(e.DNSNames) == 0 {
		e.DNSNames = nil
	}
	if len(e.FederatesWith) == 0 {
		e.FederatesWith = nil
	}
	return e, nil
}

func checkSelector(sel Selector) error {
	if err := checkText("selector type", sel.Type, MaxSelectorTypeBytes, true); err != nil {
		return err
	}
	if strings.Contains(sel.Type, ":") {
		return invalidf("selector type %q contains ':'", sel.Type)
	}
	return checkText("selector value of type "+sel.Type, sel.Value, MaxSelectorValueBytes, true)
}

// encodeEntryLists returns the JSON columns of a normalized entry.
func encodeEntryLists(e Entry) (selectors, dnsNames, federatesWith string) {
	tds := make([]string, len(e.FederatesWith))
	for i, td := range e.FederatesWith {
		tds[i] = td.Name()
	}
	dns := e.DNSNames
	if dns == nil {
		dns = []string{}
	}
	return mustJSON(e.Selectors), mustJSON(dns), mustJSON(tds)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("store: encoding " + fmt.Sprintf("%T", v) + ": " + err.Error()) // strings and slices of strings always encode
	}
	return string(b)
}

// entryKey identifies an entry for duplicate detection: SHA-256 over the
// length-prefixed parent, SPIFFE ID and sorted selectors, so that no two
// different triples encode alike.
func entryKey(e Entry) []byte {
	h := sha256.New()
	put := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	put(e.ParentID.String())
	put(e.SPIFFEID.String())
	for _, sel := range e.Selectors {
		put(sel.Type)
		put(sel.Value)
	}
	return h.Sum(nil)
}

func newEntryID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

func selectorList(sels []Selector) string {
	s := make([]string, len(sels))
	for i, sel := range sels {
		s[i] = sel.String()
	}
	return strings.Join(s, ",")
}
