package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Issued is one row of the audit log: a certificate a server signed.
type Issued struct {
	// Serial is the certificate's serial number in hex; colons and
	// leading zeros are accepted and dropped, and it is stored lowercase
	// (the form math/big's Text(16) gives).
	Serial string
	// SPIFFEID is the SPIFFE ID of an SVID, or the DNS name of a TLS leaf.
	SPIFFEID       string
	CredentialKind string    // the credential that was verified, e.g. "join_token", "k8s_sat", "svid"
	Caller         string    // who asked: the credential's subject or the peer's SVID
	ServerID       string    // the server that signed
	IssuedAt       time.Time // defaults to the store's clock
	NotAfter       time.Time
	// RootKeyID is the hex subject key ID of the root the certificate
	// chains to ("" if unknown).
	RootKeyID string
}

// AuditFilter selects audit rows; zero fields match every row.
type AuditFilter struct {
	SPIFFEID string
	Serial   string    // in any form Issued.Serial accepts
	Since    time.Time // rows issued at or after Since
	// Limit is the number of rows returned: DefaultAuditLimit when zero, at
	// most MaxAuditLimit.
	Limit int
}

// RecordIssued appends one row to the audit log and returns once the row is
// committed. Rows that concurrent callers record while a commit is in
// flight are committed together in the next one (see groupCommit), so a
// failed commit fails every caller whose row was in it, each with an error
// naming its own serial. If ctx ends first, RecordIssued returns its error
// and the row may still be committed: a certificate that was signed but
// never handed out may be in the audit log, but never the reverse.
func (s *Store) RecordIssued(ctx context.Context, r Issued) error {
	return s.recordIssued(ctx, r, nil)
}

func (s *Store) recordIssued(ctx context.Context, r Issued, e *expectation[Issued]) error {
	serial, err := normalizeSerial("issued certificate serial", r.Serial)
	if err != nil {
		return err
	}
	if err := checkText("issued certificate SPIFFE ID or DNS name", r.SPIFFEID, MaxIDBytes, true); err != nil {
		return err
	}
	if err := checkText("issued certificate credential kind", r.CredentialKind, MaxNameBytes, true); err != nil {
		return err
	}
	if err := checkText("issued certificate caller", r.Caller, MaxCallerBytes, false); err != nil {
		return err
	}
	if err := checkText("issued certificate server ID", r.ServerID, MaxNameBytes, false); err != nil {
		return err
	}
	if err := checkText("issued certificate root key ID", r.RootKeyID, MaxNameBytes, false); err != nil {
		return err
	}
	for _, f := range []struct{ what, v string }{
		{"SPIFFE ID or DNS name", r.SPIFFEID}, {"credential kind", r.CredentialKind}, {"caller", r.Caller}, {"server ID", r.ServerID},
		{"root key ID", r.RootKeyID},
	} {
		// Postgres refuses both in text; refused at the database, the row
		// would fail every other row committed with it.
		if !utf8.ValidString(f.v) || strings.ContainsRune(f.v, 0) {
			return invalidf("issued certificate %s %q is not UTF-8 text without NUL", f.what, f.v)
		}
	}
	if r.NotAfter.IsZero() {
		return invalidf("issued certificate %s has no expiry", serial)
	}
	if r.IssuedAt.IsZero() {
		r.IssuedAt = s.now()
	}
	r.Serial = serial
	if err := s.audit.do(ctx, r, e); err != nil {
		return fmt.Errorf("store: recording issued certificate %s: %w", serial, err)
	}
	return nil
}

// ExpectIssued announces that the caller is signing a certificate it will
// record with the returned IssuedExpectation's Record. A commit of the audit
// log about to start waits for announced rows, up to
// Config.AuditCommitDelay, so that they share it. Every path that will not
// record must Withdraw (safe after Record, and twice): an announcement never
// settled costs each commit the whole delay.
func (s *Store) ExpectIssued() *IssuedExpectation {
	return &IssuedExpectation{s: s, e: s.audit.expect()}
}

// IssuedExpectation is a row of the audit log announced by ExpectIssued.
type IssuedExpectation struct {
	s *Store
	e *expectation[Issued]
}

// Record is RecordIssued, settling the announcement as the row is queued.
func (x *IssuedExpectation) Record(ctx context.Context, r Issued) error {
	err := x.s.recordIssued(ctx, r, x.e)
	x.e.withdraw() // a row refused before it was queued
	return err
}

// Withdraw takes the announcement back.
func (x *IssuedExpectation) Withdraw() { x.e.withdraw() }

// AnnouncedIssued is the number of rows announced by ExpectIssued and
// neither recorded nor withdrawn yet: zero on an idle server, whatever it
// has served (tests check that no path leaves one behind).
func (s *Store) AnnouncedIssued() int {
	s.audit.mu.Lock()
	defer s.audit.mu.Unlock()
	return s.audit.expected
}

// insertIssued writes audit rows, already checked, in one statement: all
// of them or none.
func (s *Store) insertIssued(ctx context.Context, rows []Issued) error {
	stmt, err := s.insertIssuedStmt(ctx, len(rows))
	if err != nil {
		return err
	}
	args := make([]any, 0, 8*len(rows))
	for _, r := range rows {
		args = append(args, r.Serial, r.SPIFFEID, r.CredentialKind, r.Caller, r.ServerID, millis(r.IssuedAt), millis(r.NotAfter), r.RootKeyID)
	}
	if _, err := stmt.ExecContext(ctx, args...); err != nil {
		if len(rows) > 1 {
			return fmt.Errorf("committing it with %d other audit rows: %w", len(rows)-1, err)
		}
		return err
	}
	return nil
}

// insertIssuedStmt returns the INSERT of n audit rows, prepared once per n
// (at most maxAuditBatch statements) on the writer pool: parsing and
// planning it cost SQLite about as much as inserting a row.
func (s *Store) insertIssuedStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if st, ok := s.insertStmts[n]; ok {
		return st, nil
	}
	var q strings.Builder
	q.WriteString(`INSERT INTO issued (serial, spiffe_id, credential_kind, caller, server_id, issued_at, not_after, root_key_id) VALUES `)
	for i := range n {
		if i > 0 {
			q.WriteString(", ")
		}
		a := 8 * i
		fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d)", a+1, a+2, a+3, a+4, a+5, a+6, a+7, a+8)
	}
	st, err := s.w.PrepareContext(ctx, q.String())
	if err != nil {
		return nil, err
	}
	if s.insertStmts == nil {
		s.insertStmts = make(map[int]*sql.Stmt)
	}
	s.insertStmts[n] = st
	return st, nil
}

// ListIssued returns the audit rows f selects, newest first (by IssuedAt,
// then by the order they were recorded).
func (s *Store) ListIssued(ctx context.Context, f AuditFilter) ([]Issued, error) {
	limit := f.Limit
	switch {
	case limit == 0:
		limit = DefaultAuditLimit
	case limit < 0 || limit > MaxAuditLimit:
		return nil, invalidf("audit limit %d is outside 1..%d", f.Limit, MaxAuditLimit)
	}
	var (
		where []string
		args  []any
	)
	add := func(cond string, arg any) {
		args = append(args, arg)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.SPIFFEID != "" {
		add("spiffe_id = $%d", f.SPIFFEID)
	}
	if f.Serial != "" {
		serial, err := normalizeSerial("audit filter serial", f.Serial)
		if err != nil {
			return nil, err
		}
		add("serial = $%d", serial)
	}
	if !f.Since.IsZero() {
		add("issued_at >= $%d", millis(f.Since))
	}
	q := `SELECT serial, spiffe_id, credential_kind, caller, server_id, issued_at, not_after, root_key_id FROM issued`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	q += fmt.Sprintf(` ORDER BY issued_at DESC, id DESC LIMIT $%d`, len(args))
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: reading the audit log: %w", err)
	}
	defer rows.Close()
	var out []Issued
	for rows.Next() {
		var (
			r                  Issued
			issuedAt, notAfter int64
		)
		if err := rows.Scan(&r.Serial, &r.SPIFFEID, &r.CredentialKind, &r.Caller, &r.ServerID, &issuedAt, &notAfter, &r.RootKeyID); err != nil {
			return nil, fmt.Errorf("store: reading the audit log: %w", err)
		}
		r.IssuedAt, r.NotAfter = fromMillis(issuedAt), fromMillis(notAfter)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: reading the audit log: %w", err)
	}
	return out, nil
}

// normalizeSerial returns a hex serial number lowercase, without colons and
// leading zeros, or an error if it is not hex or too long.
func normalizeSerial(what, s string) (string, error) {
	if len(s) > 3*MaxSerialHex {
		return "", invalidf("%s is %d bytes, more than a serial number can be", what, len(s))
	}
	h := strings.TrimLeft(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0")
	if h == "" && strings.Contains(s, "0") {
		h = "0"
	}
	if h == "" {
		return "", invalidf("%s is empty", what)
	}
	if len(h) > MaxSerialHex {
		return "", invalidf("%s has %d hex digits, more than the %d of a 20-octet serial number", what, len(h), MaxSerialHex)
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", invalidf("%s %q is not hexadecimal", what, s)
		}
	}
	return h, nil
}

// LiveIssuedByRoot counts the certificates recorded in the audit log that
// are unexpired at now, per RootKeyID: who still depends on which root.
func (s *Store) LiveIssuedByRoot(ctx context.Context, now time.Time) (map[string]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT root_key_id, COUNT(*) FROM issued WHERE not_after > $1 GROUP BY root_key_id`, millis(now))
	if err != nil {
		return nil, fmt.Errorf("store: counting live certificates: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var (
			id string
			n  int64
		)
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("store: counting live certificates: %w", err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: counting live certificates: %w", err)
	}
	return out, nil
}
