package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"
)

// Sentinel errors. Every error the store returns starts with "store: "; test
// for these with errors.Is.
var (
	// ErrNotFound: the entry, node or bundle asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: an equal entry or join token is already stored, or a
	// JWT key ID is already taken by another key.
	ErrAlreadyExists = errors.New("already exists")
	// ErrTokenInvalid: the join token is unknown, expired or already used.
	// The three are deliberately one error, so a caller cannot learn which.
	ErrTokenInvalid = errors.New("join token is unknown, expired or already used")
	// ErrInvalid: an argument is malformed or over its bound.
	ErrInvalid = errors.New("invalid argument")
	// ErrStale: the record changed since the revision the caller read it
	// at (UpdateEntry).
	ErrStale = errors.New("stale")
	// ErrNodeBanned: the node is banned ('meshfed node ban') and may neither
	// renew nor attest again until it is evicted.
	ErrNodeBanned = errors.New("banned")
	// ErrNodeSVIDSuperseded: the node SVID presented is neither the one its
	// record says it uses nor the one its last renewal signed: the node
	// renewed or attested again since, so that SVID is in use elsewhere or
	// left behind.
	ErrNodeSVIDSuperseded = errors.New("not the node's current SVID")
)

// invalidError is an input the store refuses before touching the database.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return "store: " + e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// Config configures Open.
type Config struct {
	// DSN selects the database:
	//   - "" is SQLite in DataDir/meshfed.db;
	//   - "sqlite:///abs/path.db" is SQLite at that absolute path;
	//   - "postgres://user:password@host:port/database?sslmode=…" (or
	//     "postgresql://…") is Postgres; the database must exist.
	DSN string
	// DataDir is the server's data directory, created 0700 if missing. It
	// is required when DSN is empty.
	DataDir string
	// Clock returns the current time; it stamps CreatedAt, AddedAt,
	// UpdatedAt and defaults IssuedAt and AttestedAt. Defaults to time.Now.
	Clock func() time.Time
	// Logger receives what Open did (the database, never its password, and
	// the migrations applied). Defaults to discarding.
	Logger *slog.Logger
	// AuditCommitDelay is how long a commit of the audit log may wait for
	// rows announced with ExpectIssued, so that they share it; 0 commits
	// at once.
	AuditCommitDelay time.Duration
	// OnAuditCommit, if set, is told of each commit of the audit log: how
	// many rows it held and how long it waited for announced ones (for
	// metrics; it must not block).
	OnAuditCommit func(rows int, waited time.Duration)
}

// DefaultSQLiteFile is the database file name inside Config.DataDir.
const DefaultSQLiteFile = "meshfed.db"

// Store is the durable state of one trust domain's servers. It is safe for
// concurrent use, and several Stores (in one or several processes) may share
// one database.
type Store struct {
	dialect dialect
	// w runs every write; r every read. For Postgres both are the same
	// pool. For SQLite they are two pools on one file: w has a single
	// connection whose transactions BEGIN IMMEDIATE (SQLite has one
	// writer, so this process's writes queue in the pool instead of
	// failing with SQLITE_BUSY; other processes' wait out busy_timeout),
	// and r has several read-only connections, which WAL lets read while
	// w writes.
	w, r     *sql.DB
	clock    func() time.Time
	log      *slog.Logger
	location string // the database, for messages: a path, or host:port/db
	audit    *groupCommit[*auditRow]

	stmtMu      sync.Mutex
	insertStmts map[int]*sql.Stmt // by rows: see insertIssuedStmt
	renewStmt   *sql.Stmt         // renewNodeSQL, once prepared
}

// Backend names the database kind: "sqlite" or "postgres".
func (s *Store) Backend() string { return string(s.dialect) }

// Close closes the database. The Store must not be used afterwards.
func (s *Store) Close() error {
	s.stmtMu.Lock()
	for _, st := range s.insertStmts {
		_ = st.Close()
	}
	s.insertStmts = nil
	if s.renewStmt != nil {
		_ = s.renewStmt.Close()
	}
	s.stmtMu.Unlock()
	err := s.w.Close()
	if s.r != s.w {
		err = errors.Join(err, s.r.Close())
	}
	if err != nil {
		return fmt.Errorf("store: closing %s: %w", s.location, err)
	}
	return nil
}

// SnapshotTo writes a consistent copy of an SQLite database to path, a new
// file (mode 0600), while the store is in use: SQLite's VACUUM INTO, which
// reads one snapshot and does not hold up writers. A Postgres database is
// backed up with its own tools (pg_dump), so that is an error.
func (s *Store) SnapshotTo(ctx context.Context, path string) error {
	if s.dialect != sqlite {
		return fmt.Errorf("store: %s is a Postgres database: back it up with pg_dump", s.location)
	}
	if _, err := os.Lstat(path); err == nil {
		return invalidf("%s already exists; a snapshot is written to a new file", path)
	}
	// The readers are query_only, which refuses VACUUM; this connection
	// is one of its own, for this snapshot only.
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: s.location}).EscapedPath()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return fmt.Errorf("store: snapshot of %s: %w", s.location, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO $1`, path); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("store: snapshot of %s into %s: %w", s.location, path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("store: snapshot: %w", err)
	}
	return nil
}

// Ping checks that the database answers, for a readiness probe.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("store: %s does not answer: %w", s.location, err)
	}
	return nil
}

// Revision is a counter that increases on every change to registration
// entries, this trust domain's authorities, federated bundles or policies,
// and on a node's eviction or ban, in the same transaction as the change. Polling it is one primary-key read, so servers
// sharing a database can each watch it and push changes to their agents.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.r.QueryRowContext(ctx, `SELECT revision FROM state WHERE id = 1`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("store: reading revision: %w", err)
	}
	return rev, nil
}

// now is the store's clock, in the precision the store keeps.
func (s *Store) now() time.Time { return fromMillis(s.clock().UnixMilli()) }

// millis converts a time to what the database stores: UTC Unix milliseconds.
func millis(t time.Time) int64 { return t.UnixMilli() }

// fromMillis converts a stored time back.
func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// writeTx runs fn in a write transaction and commits it if fn returns nil.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// readTx runs fn in a read-only transaction that sees one snapshot.
func (s *Store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.dialect == postgres {
		// Read committed takes a snapshot per statement; a multi-statement
		// read needs one for the whole transaction.
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.r.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// errNoChange rolls back a change transaction that changed nothing.
var errNoChange = errors.New("no change")

// change runs fn in a write transaction that begins by bumping the revision
// (and, with sequence, the bundle sequence too) and hands fn the new
// revision. Taking the single state row first gives every such transaction
// the same lock order, state and then the rows it touches, so concurrent
// changes from several servers queue on Postgres instead of deadlocking (a
// delete waiting for the state row while an insert of the same unique key
// waits for the delete). fn returns how many rows it changed; with none, the
// transaction rolls back and the counters stay as they were.
func (s *Store) change(ctx context.Context, sequence bool, fn func(tx *sql.Tx, rev int64) (int64, error)) error {
	bump := `UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision`
	if sequence {
		bump = `UPDATE state SET revision = revision + 1, bundle_sequence = bundle_sequence + 1 WHERE id = 1 RETURNING revision`
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var rev int64
		if err := tx.QueryRowContext(ctx, bump).Scan(&rev); err != nil {
			return err
		}
		n, err := fn(tx, rev)
		if err == nil && n == 0 {
			err = errNoChange
		}
		return err
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return err
}

// rowsAffected is res.RowsAffected, for fn of change.
func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// checkText refuses an empty (when required) or oversized string field.
func checkText(what, v string, max int, required bool) error {
	if required && v == "" {
		return invalidf("%s is empty", what)
	}
	if len(v) > max {
		return invalidf("%s is %d bytes, more than the %d allowed", what, len(v), max)
	}
	return nil
}
