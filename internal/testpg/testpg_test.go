package testpg_test

import (
	"context"
	"database/sql"
	"net/url"
	"strings"
	"testing"

	"github.com/meshfed/meshfed/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Run(m) }

// TestStart proves Start hands out distinct, empty, usable databases on a
// Postgres of at least version 15, over TCP with a password.
func TestStart(t *testing.T) {
	ctx := context.Background()
	seen := map[string]bool{}
	for range 2 {
		dsn := testpg.Start(t)
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if seen[u.Path] {
			t.Fatalf("database %s handed out twice", u.Path)
		}
		seen[u.Path] = true
		if !strings.HasPrefix(u.Path, "/test_") {
			t.Errorf("database path %q, want /test_…", u.Path)
		}
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var version int
		if err := db.QueryRowContext(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
			t.Fatal(err)
		}
		if version < 150000 {
			t.Errorf("server_version_num = %d, want at least 150000 (Postgres 15)", version)
		}
		var tables int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'`).Scan(&tables); err != nil {
			t.Fatal(err)
		}
		if tables != 0 {
			t.Errorf("new database has %d tables, want 0", tables)
		}
		if _, err := db.ExecContext(ctx, `CREATE TABLE t (x int)`); err != nil {
			t.Fatal(err)
		}
	}
}
