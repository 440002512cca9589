package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	// RenewsNode is set when the certificate is a node's own SVID renewed
	// with the SVID of this serial (hex), SPIFFEID being the node's: the
	// row is then committed together with the node's record naming the
	// certificate as its new SVID (see Node), and only if the record admits
	// the SVID presented; otherwise nothing is written and RecordIssued
	// returns why (ErrNotFound, ErrNodeBanned or ErrNodeSVIDSuperseded).
	// Not kept in the row.
	RenewsNode string
}

// auditRow is a row queued for the group commit.
type auditRow struct {
	Issued
	node spiffeid.ID // when RenewsNode is set
	// refused is set by the commit when the node's record did not admit
	// RenewsNode: the row was not written.
	refused bool
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

func (s *Store) recordIssued(ctx context.Context, r Issued, e *expectation[*auditRow]) error {
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
	row := &auditRow{Issued: r}
	if r.RenewsNode != "" {
		if row.RenewsNode, err = normalizeSerial("renewed node's serial number", r.RenewsNode); err != nil {
			return err
		}
		if row.node, err = spiffeid.FromString(r.SPIFFEID); err != nil {
			return invalidf("renewed node %q is not a SPIFFE ID: %v", r.SPIFFEID, err)
		}
	}
	if err := s.audit.do(ctx, row, e); err != nil {
		return fmt.Errorf("store: recording issued certificate %s: %w", serial, err)
	}
	if row.refused {
		if _, err := s.whyNotNode(ctx, row.node, row.RenewsNode); err != nil {
			return err
		}
		// Admitted since: another server recorded the switch meanwhile.
		return fmt.Errorf("store: node %s: SVID %s: %w", row.node, row.RenewsNode, ErrNodeSVIDSuperseded)
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
	e *expectation[*auditRow]
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

// writeAudit commits a batch of audit rows, already checked: all of them or
// none. A batch with node renewals is one transaction: each renewal first
// updates its node's record if the record admits the SVID presented
// (renewNodeSQL), a row whose update matched nothing is marked refused and
// left out, then the other rows are inserted.
func (s *Store) writeAudit(ctx context.Context, rows []*auditRow) error {
	// Prepared before the transaction takes the writer pool's connection.
	stmt, err := s.insertIssuedStmt(ctx, len(rows))
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(rows, func(r *auditRow) bool { return r.RenewsNode != "" }) {
		return insertIssued(ctx, stmt.ExecContext, rows)
	}
	renew, err := s.renewNodeStmt(ctx)
	if err != nil {
		return err
	}
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		keep := make([]*auditRow, 0, len(rows))
		txRenew := tx.StmtContext(ctx, renew)
		defer txRenew.Close()
		for _, r := range rows {
			r.refused = false
			if r.RenewsNode != "" {
				res, err := txRenew.ExecContext(ctx, r.node.String(), r.RenewsNode, r.Serial, millis(r.NotAfter))
				if err != nil {
					return fmt.Errorf("renewing node %s: %w", r.node, err)
				}
				if n, err := res.RowsAffected(); err != nil {
					return err
				} else if n == 0 {
					r.refused = true
					continue
				}
			}
			keep = append(keep, r)
		}
		switch len(keep) {
		case 0:
			return nil
		case len(rows):
			txStmt := tx.StmtContext(ctx, stmt)
			defer txStmt.Close()
			return insertIssued(ctx, txStmt.ExecContext, keep)
		}
		// A refused renewal, which is rare: a statement for the rest.
		q := insertIssuedSQL(len(keep))
		return insertIssued(ctx, func(ctx context.Context, args ...any) (sql.Result, error) {
			return tx.ExecContext(ctx, q, args...)
		}, keep)
	})
}

// insertIssued writes audit rows with exec, the INSERT of len(rows) rows
// (insertIssuedSQL): all of them or none.
func insertIssued(ctx context.Context, exec func(context.Context, ...any) (sql.Result, error), rows []*auditRow) error {
	args := make([]any, 0, 8*len(rows))
	for _, r := range rows {
		args = append(args, r.Serial, r.SPIFFEID, r.CredentialKind, r.Caller, r.ServerID, millis(r.IssuedAt), millis(r.NotAfter), r.RootKeyID)
	}
	if _, err := exec(ctx, args...); err != nil {
		if len(rows) > 1 {
			return fmt.Errorf("committing it with %d other audit rows: %w", len(rows)-1, err)
		}
		return err
	}
	return nil
}

// renewNodeStmt returns renewNodeSQL prepared on the writer pool.
func (s *Store) renewNodeStmt(ctx context.Context) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if s.renewStmt == nil {
		st, err := s.w.PrepareContext(ctx, renewNodeSQL)
		if err != nil {
			return nil, err
		}
		s.renewStmt = st
	}
	return s.renewStmt, nil
}

// insertIssuedSQL is the INSERT of n audit rows.
func insertIssuedSQL(n int) string {
	var q strings.Builder
	q.WriteString(`INSERT INTO issued (serial, spiffe_id, credential_kind, caller, server_id, issued_at, not_after, root_key_id) VALUES `)
	for i := range n {
		if i > 0 {
			q.WriteString(", ")
		}
		a := 8 * i
		fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d)", a+1, a+2, a+3, a+4, a+5, a+6, a+7, a+8)
	}
	return q.String()
}

// insertIssuedStmt returns insertIssuedSQL(n), prepared once per n (at most
// maxAuditBatch statements) on the writer pool: parsing and planning it cost
// SQLite about as much as inserting a row.
func (s *Store) insertIssuedStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if st, ok := s.insertStmts[n]; ok {
		return st, nil
	}
	st, err := s.w.PrepareContext(ctx, insertIssuedSQL(n))
	if err != nil {
		return nil, err
	}
	if s.insertStmts == nil {
		s.insertStmts = make(map[int]*sql.Stmt)
	}
	s.insertStmts[n] = st
	return st, nil
}

// PruneIssued deletes at most limit audit rows of certificates that expired
// before before, oldest expiry first, and returns how many it deleted (fewer
// than limit: none is left). A row of a certificate still valid is never
// deleted, so root rotation's count of live certificates is not touched.
func (s *Store) PruneIssued(ctx context.Context, before time.Time, limit int) (int64, error) {
	if limit <= 0 {
		return 0, invalidf("audit prune limit %d: give at least 1", limit)
	}
	n, err := rowsAffected(s.w.ExecContext(ctx,
		`DELETE FROM issued WHERE id IN (SELECT id FROM issued WHERE not_after < $1 ORDER BY not_after LIMIT $2)`,
		millis(before), limit))
	if err != nil {
		return 0, fmt.Errorf("store: pruning the audit log: %w", err)
	}
	return n, nil
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
