package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshfed/meshfed/internal/store"
	"github.com/meshfed/meshfed/internal/testpg"
)

// schemaVersion is the newest migration; bump it with each new one.
const schemaVersion = 4

// TestOpenRefusesBadConfig pins the errors for datastores that cannot work,
// and that none of them shows a password.
func TestOpenRefusesBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  store.Config
		want string
	}{
		{
			name: "nothing",
			cfg:  store.Config{},
			want: "store: no datastore: set a data directory or a --datastore DSN",
		},
		{
			name: "relative sqlite path",
			cfg:  store.Config{DSN: "sqlite://meshfed.db"},
			want: `store: datastore "sqlite://meshfed.db": an SQLite path must be absolute, as in sqlite:///var/lib/meshfed/meshfed.db; check --datastore`,
		},
		{
			name: "unknown scheme",
			cfg:  store.Config{DSN: "mysql://admin:hunter2@db.example:3306/meshfed"},
			want: `store: datastore "mysql://admin:xxxxx@db.example:3306/meshfed" is not supported: use sqlite:///path/to/meshfed.db or postgres://user:password@host:port/database; check --datastore`,
		},
		{
			name: "unparsable postgres URL",
			cfg:  store.Config{DSN: "postgres://admin:hunter2@db.example:notaport/meshfed"},
			want: "store: datastore (unparsable, not shown) is not a valid Postgres URL (expected postgres://user:password@host:port/database); check --datastore",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.Open(context.Background(), tt.cfg)
			if err == nil {
				s.Close()
			}
			checkErr(t, "Open", err, tt.want)
		})
	}
}

// TestOpenPostgresErrors: a server that is down, a wrong password and a
// missing database each get an error naming the address and what to check,
// without the password.
func TestOpenPostgresErrors(t *testing.T) {
	t.Parallel()
	dsn := testpg.Start(t)
	good, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	wrongPassword := *good
	wrongPassword.User = url.UserPassword("postgres", "hunter2")
	noDB := *good
	noDB.Path = "/nope"

	tests := []struct {
		name       string
		dsn        string
		wantPrefix string
		wantSuffix string
	}{
		{
			name:       "server down",
			dsn:        "postgres://meshfed:hunter2@127.0.0.1:1/meshfed?sslmode=disable&connect_timeout=5",
			wantPrefix: "store: cannot reach postgres at 127.0.0.1:1: ",
			wantSuffix: "; check --datastore and that the server is up",
		},
		{
			name:       "wrong password",
			dsn:        wrongPassword.String(),
			wantPrefix: `store: postgres at ` + good.Host + ` refused user "postgres": password authentication failed for user "postgres"; check the user and password in --datastore`,
		},
		{
			name:       "no such database",
			dsn:        noDB.String(),
			wantPrefix: `store: postgres at ` + good.Host + ` has no database "nope"; create it (CREATE DATABASE "nope") or fix --datastore`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.Open(context.Background(), store.Config{DSN: tt.dsn})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.wantPrefix) || !strings.HasSuffix(msg, tt.wantSuffix) {
				t.Errorf("error\n got: %q\nwant: %q … %q", msg, tt.wantPrefix, tt.wantSuffix)
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error shows the password: %q", msg)
			}
		})
	}
}

// TestSQLiteFileModes: the data directory is created 0700 and the database
// and its WAL files are 0600; a database left group-readable is tightened.
func TestSQLiteFileModes(t *testing.T) {
	t.Parallel()
	d := newTestDB(t, "sqlite")
	s := d.open(t)
	// A write, so that the -wal and -shm files exist.
	if err := s.CreateJoinToken(context.Background(), store.JoinToken{Hash: tokenHash("x"), SPIFFEID: node1, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{
		d.cfg.DataDir: 0o700,
		filepath.Join(d.cfg.DataDir, "meshfed.db"):     0o600,
		filepath.Join(d.cfg.DataDir, "meshfed.db-wal"): 0o600,
		filepath.Join(d.cfg.DataDir, "meshfed.db-shm"): 0o600,
	}
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), mode)
		}
	}

	loose := filepath.Join(t.TempDir(), "loose.db")
	if err := os.WriteFile(loose, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	s2, err := store.Open(context.Background(), store.Config{DSN: "sqlite://" + loose})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if fi, err := os.Stat(loose); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("existing 0644 database: mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// TestSQLiteDSNPathIsAName: an explicit sqlite:// path with URI
// metacharacters is used as a file name, not parsed.
func TestSQLiteDSNPathIsAName(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "odd ?name#%41.db")
	s, err := store.Open(context.Background(), store.Config{DSN: "sqlite://" + path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at %q: %v", path, err)
	}
}

// TestMigrations: a fresh database gets the whole schema; reopening applies
// nothing and changes nothing.
func TestMigrations(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		if v, err := d.s.SchemaVersion(ctx); err != nil || v != schemaVersion {
			t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, schemaVersion)
		}
		if got := d.s.Backend(); got != d.backend {
			t.Errorf("Backend() = %q, want %q", got, d.backend)
		}
		if err := d.s.Ping(ctx); err != nil {
			t.Errorf("Ping: %v", err)
		}
		for range 2 {
			s := d.open(t)
			if v, err := s.SchemaVersion(ctx); err != nil || v != schemaVersion {
				t.Fatalf("after reopen: SchemaVersion = %d, %v; want %d", v, err, schemaVersion)
			}
			if rev := mustRevision(t, s); rev != 0 {
				t.Errorf("after reopen: Revision = %d, want 0", rev)
			}
		}
	})
}

// TestOpenRefusesNewerSchema: a database migrated by a newer meshfed is not
// touched by this one.
func TestOpenRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		raw := rawDB(t, d)
		if _, err := raw.Exec(`INSERT INTO goose_db_version (version_id, is_applied) VALUES (999, TRUE)`); err != nil {
			t.Fatal(err)
		}
		s, err := store.Open(context.Background(), d.cfg)
		if err == nil {
			s.Close()
			t.Fatal("Open succeeded")
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "store: the schema of ") || !strings.HasSuffix(msg, " is version 999, newer than this meshfed knows (4); upgrade meshfed") {
			t.Errorf("error = %q", msg)
		}
	})
}

// rawDB opens d's database directly, bypassing the store.
func rawDB(t *testing.T, d *testDB) *sql.DB {
	t.Helper()
	driver, dsn := "pgx", d.cfg.DSN
	if d.backend == "sqlite" {
		driver, dsn = "sqlite", filepath.Join(d.cfg.DataDir, "meshfed.db")
	}
	raw, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return raw
}

// TestPostgresServersStartTogether: several servers opening one new Postgres
// database at once all succeed; the migration lock makes them migrate in
// turn.
func TestPostgresServersStartTogether(t *testing.T) {
	t.Parallel()
	d := newTestDB(t, "postgres")
	const servers = 4
	var (
		wg   sync.WaitGroup
		errs = make(chan error, servers)
	)
	for range servers {
		wg.Go(func() {
			s, err := store.Open(context.Background(), d.cfg)
			if err != nil {
				errs <- err
				return
			}
			errs <- s.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Open: %v", err)
		}
	}
	if v, err := d.open(t).SchemaVersion(context.Background()); err != nil || v != schemaVersion {
		t.Errorf("SchemaVersion = %d, %v; want %d", v, err, schemaVersion)
	}
}

// TestRestartLosesNothing: everything stored is there, unchanged, after the
// store is closed and opened again; a token consumed before the restart stays
// consumed and one not consumed can be consumed once after it.
func TestRestartLosesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, d *testDB) {
		ctx := context.Background()
		s := d.s
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash("used"), SPIFFEID: node1, ExpiresAt: t0.Add(time.Hour)}))
		must(s.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash("fresh"), SPIFFEID: node2, ExpiresAt: t0.Add(time.Hour)}))
		if _, err := s.ConsumeJoinToken(ctx, tokenHash("used"), t0); err != nil {
			t.Fatal(err)
		}
		entry, err := s.CreateEntry(ctx, store.Entry{ParentID: node1, SPIFFEID: web, Selectors: []store.Selector{uid1000}, X509TTL: time.Hour, DNSNames: []string{"web.east.example"}, FederatesWith: []spiffeid.TrustDomain{west}, Admin: true})
		must(err)
		must(s.UpsertNode(ctx, store.Node{SPIFFEID: node1, CredentialKind: "join_token", SerialNumber: "ab", ExpiresAt: t0.Add(time.Hour)}))
		must(s.RecordIssued(ctx, store.Issued{Serial: "01ab", SPIFFEID: web.String(), CredentialKind: "join_token", Caller: node1.String(), ServerID: "east-1", NotAfter: t0.Add(time.Hour)}))
		must(s.AddX509Authority(ctx, store.X509Authority{DER: caDER(t, "east CA", t0.Add(24*time.Hour), true), ServerID: "east-1"}))
		must(s.AddJWTAuthority(ctx, store.JWTAuthority{KeyID: "k1", PublicKeyDER: publicKeyDER(t), NotAfter: t0.Add(24 * time.Hour), ServerID: "east-1"}))
		must(s.SetFederatedBundle(ctx, west, []byte(`{"keys":[]}`)))

		type snapshot struct {
			Revision    int64
			Entries     []store.Entry
			Nodes       []store.Node
			Issued      []store.Issued
			Authorities store.Authorities
			Bundles     []store.Bundle
		}
		take := func(s *store.Store) snapshot {
			t.Helper()
			var snap snapshot
			var err error
			snap.Revision = mustRevision(t, s)
			snap.Entries, err = s.ListEntries(ctx, store.EntryFilter{})
			must(err)
			snap.Nodes, err = s.ListNodes(ctx)
			must(err)
			snap.Issued, err = s.ListIssued(ctx, store.AuditFilter{})
			must(err)
			snap.Authorities, err = s.LocalAuthorities(ctx)
			must(err)
			snap.Bundles, err = s.ListFederatedBundles(ctx)
			must(err)
			return snap
		}
		before := take(s)
		if len(before.Entries) != 1 || !reflect.DeepEqual(before.Entries[0], entry) {
			t.Fatalf("before restart: entries %+v, want [%+v]", before.Entries, entry)
		}
		must(s.Close())

		s2 := d.open(t)
		if after := take(s2); !reflect.DeepEqual(after, before) {
			t.Errorf("after restart:\n got %+v\nwant %+v", after, before)
		}
		if _, err := s2.ConsumeJoinToken(ctx, tokenHash("used"), t0); !errors.Is(err, store.ErrTokenInvalid) {
			t.Errorf("token consumed before restart: err = %v, want ErrTokenInvalid", err)
		}
		if tok, err := s2.ConsumeJoinToken(ctx, tokenHash("fresh"), t0); err != nil || tok.SPIFFEID != node2 {
			t.Errorf("fresh token after restart: %v, %v; want %s", tok.SPIFFEID, err, node2)
		}
	})
}

// TestOpenLogs: Open logs the migrations it applied and the database it
// opened, and never the password of the DSN.
func TestOpenLogs(t *testing.T) {
	t.Parallel()
	d := newTestDB(t, "postgres")
	u, err := url.Parse(d.cfg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	password, ok := u.User.Password()
	if !ok || password == "" {
		t.Fatalf("testpg DSN %s has no password", u.Redacted())
	}
	var buf bytes.Buffer
	d.cfg.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	d.open(t)
	logs := buf.String()
	for _, want := range []string{
		`msg="store: applied migration" version=1 file=00001_initial.sql`,
		`msg="store: applied migration" version=2 file=00002_issued_root.sql`,
		`msg="store: applied migration" version=3 file=00003_policies.sql`,
		`msg="store: applied migration" version=4 file=00004_node_lifecycle.sql`,
		`msg="store: opened" backend=postgres database=` + u.Host + u.Path + ` schema_version=4`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, password) {
		t.Errorf("logs contain the password:\n%s", logs)
	}
}
