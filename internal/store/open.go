package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

type dialect string

const (
	sqlite   dialect = "sqlite"
	postgres dialect = "postgres"
)

// migrations holds the schema, one goose directory per dialect. The two
// directories describe the same tables and must gain their migrations in step.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrations embed.FS

// Pool sizes and timeouts.
const (
	// sqliteBusyTimeout is how long an SQLite statement waits for another
	// process's write lock before failing with SQLITE_BUSY.
	sqliteBusyTimeout = 10 * time.Second
	// postgresMaxConns bounds one server's connections to Postgres, so that
	// several servers fit in a default max_connections of 100.
	postgresMaxConns = 16
	// postgresConnectTimeout applies when the DSN sets no connect_timeout.
	postgresConnectTimeout = 10 * time.Second
	// migrationLockID is the Postgres advisory lock held while migrating, so
	// that servers starting together migrate one after the other.
	migrationLockID int64 = 0x6d657368666564 // "meshfed"
)

// Open opens (creating if needed) the database cfg names, applies every
// pending migration, and returns the Store. It refuses a database whose schema
// is newer than this binary knows.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var (
		s   *Store
		err error
	)
	switch {
	case cfg.DSN == "":
		if cfg.DataDir == "" {
			return nil, errors.New("store: no datastore: set a data directory or a --datastore DSN")
		}
		s, err = openSQLite(ctx, filepath.Join(cfg.DataDir, DefaultSQLiteFile), cfg.DataDir)
	case strings.HasPrefix(cfg.DSN, "sqlite://"):
		path := strings.TrimPrefix(cfg.DSN, "sqlite://")
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("store: datastore %q: an SQLite path must be absolute, as in sqlite:///var/lib/meshfed/meshfed.db; check --datastore", cfg.DSN)
		}
		s, err = openSQLite(ctx, filepath.Clean(path), filepath.Dir(path))
	case strings.HasPrefix(cfg.DSN, "postgres://"), strings.HasPrefix(cfg.DSN, "postgresql://"):
		s, err = openPostgres(ctx, cfg.DSN)
	default:
		return nil, fmt.Errorf("store: datastore %q is not supported: use sqlite:///path/to/meshfed.db or postgres://user:password@host:port/database; check --datastore", redactDSN(cfg.DSN))
	}
	if err != nil {
		return nil, err
	}
	s.clock, s.log = cfg.Clock, cfg.Logger
	s.audit = newGroupCommit(maxAuditBatch, s.writeAudit)
	s.audit.delay = max(cfg.AuditCommitDelay, 0)
	s.audit.observe = cfg.OnAuditCommit
	if err := s.migrate(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// openSQLite opens path with two pools: one writer connection and a few
// read-only ones. The file is created 0600 before SQLite opens it; SQLite gives
// its -wal and -shm files the same mode.
func openSQLite(ctx context.Context, path, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: creating data directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: opening SQLite database: %w", err)
	}
	fi, err := f.Stat()
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("store: opening SQLite database: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// Created by someone else, or an older tool; the database holds
		// join-token hashes and the audit log, so tighten it.
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("store: SQLite database %s is mode %04o and cannot be made 0600: %w", path, fi.Mode().Perm(), err)
		}
	}

	// The path is URI-escaped, so names with '?', '#' or '%' stay names.
	uri := "file:" + (&url.URL{Path: path}).EscapedPath()
	params := url.Values{}
	params.Add("_pragma", "busy_timeout("+strconv.FormatInt(sqliteBusyTimeout.Milliseconds(), 10)+")")
	params.Add("_pragma", "foreign_keys(1)")
	// FULL: a commit survives power loss. A consumed join token must stay
	// consumed and an issued certificate must stay in the audit log.
	params.Add("_pragma", "synchronous(FULL)")
	rparams := cloneValues(params)
	params.Add("_pragma", "journal_mode(WAL)")
	params.Set("_txlock", "immediate")
	rparams.Add("_pragma", "query_only(1)")

	w, err := sql.Open("sqlite", uri+"?"+params.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: opening SQLite database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// The first connection switches the file to WAL, which the readers
	// need; do it before any reader connects.
	if err := w.PingContext(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("store: opening SQLite database %s: %w; check that it is an SQLite file and the directory is writable", path, err)
	}
	r, err := sql.Open("sqlite", uri+"?"+rparams.Encode())
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("store: opening SQLite database %s: %w", path, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	return &Store{dialect: sqlite, w: w, r: r, location: path}, nil
}

func cloneValues(v url.Values) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

// openPostgres connects to the database dsn names. Its errors name the host
// and say what to check, and never contain the password.
func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx redacts the password from its message on a best-effort basis
		// only, and url.Parse errors quote the whole URL: say nothing of
		// the DSN but where it is wrong.
		return nil, fmt.Errorf("store: datastore %s is not a valid Postgres URL (expected postgres://user:password@host:port/database); check --datastore", redactDSN(dsn))
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = postgresConnectTimeout
	}
	where := pgAddr(cfg.Host, cfg.Port)
	location := where + "/" + cfg.Database
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(postgresMaxConns)
	db.SetMaxIdleConns(postgresMaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, postgresOpenError(where, cfg, err)
	}
	return &Store{dialect: postgres, w: db, r: db, location: location}, nil
}

func pgAddr(host string, port uint16) string {
	if strings.HasPrefix(host, "/") {
		return host // a unix socket directory
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// postgresOpenError says why the first connection failed and what to do.
func postgresOpenError(where string, cfg *pgx.ConnConfig, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Errorf("store: postgres at %s refused user %q: %s; check the user and password in --datastore", where, cfg.User, pgErr.Message)
		case "3D000": // invalid_catalog_name
			return fmt.Errorf("store: postgres at %s has no database %q; create it (CREATE DATABASE %s) or fix --datastore", where, cfg.Database, pgx.Identifier{cfg.Database}.Sanitize())
		}
		return fmt.Errorf("store: postgres at %s refused the connection: %s (SQLSTATE %s); check --datastore", where, pgErr.Message, pgErr.Code)
	}
	return fmt.Errorf("store: cannot reach postgres at %s: %w; check --datastore and that the server is up", where, err)
}

// redactDSN returns dsn with any password (in the user info or a password
// query parameter) replaced, for messages and logs.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return "(unparsable, not shown)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// migrate applies the pending migrations. On Postgres it holds an advisory
// lock meanwhile, so that servers starting together on a new database do not
// race to create the same tables.
func (s *Store) migrate(ctx context.Context) (err error) {
	if s.dialect == postgres {
		unlock, err := s.lockMigrations(ctx)
		if err != nil {
			return err
		}
		defer unlock()
	}
	gd, dir := goose.DialectSQLite3, "migrations/sqlite"
	if s.dialect == postgres {
		gd, dir = goose.DialectPostgres, "migrations/postgres"
	}
	fsys, err := fs.Sub(migrations, dir)
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	p, err := goose.NewProvider(gd, s.w, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	current, target, err := p.GetVersions(ctx)
	if err != nil {
		return fmt.Errorf("store: reading the schema version of %s: %w", s.location, err)
	}
	if current > target {
		return fmt.Errorf("store: the schema of %s is version %d, newer than this meshfed knows (%d); upgrade meshfed", s.location, current, target)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("store: migrating %s from schema version %d to %d: %w", s.location, current, target, err)
	}
	for _, r := range results {
		s.log.InfoContext(ctx, "store: applied migration", "version", r.Source.Version, "file", filepath.Base(r.Source.Path), "duration", r.Duration)
	}
	s.log.InfoContext(ctx, "store: opened", "backend", s.dialect, "database", s.location, "schema_version", target)
	return nil
}

// lockMigrations takes the migration advisory lock on a connection of its
// own and returns the function that releases it.
func (s *Store) lockMigrations(ctx context.Context) (func(), error) {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLockID); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("store: waiting for the migration lock on %s: %w", s.location, err)
	}
	return func() {
		_, err := conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLockID)
		if err != nil {
			// The lock belongs to the session: never give the connection
			// back to the pool holding it.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}, nil
}

// SchemaVersion is the schema version of the database (the highest goose
// migration applied).
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("store: reading schema version: %w", err)
	}
	return v, nil
}
