package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"
)

func TestNewIsMigrated(t *testing.T) {
	db := New(t)
	ctx := context.Background()

	var table *string
	if err := db.Pool.QueryRow(ctx, "SELECT to_regclass('auth_attempts')::text").Scan(&table); err != nil {
		t.Fatal(err)
	}
	if table == nil {
		t.Error("table auth_attempts does not exist in a new database")
	}

	var applied int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&applied); err != nil {
		t.Fatalf("reading schema_migrations: %v", err)
	}
	if applied == 0 {
		t.Error("schema_migrations is empty, want the applied migrations")
	}

	if got := currentDatabase(t, db.Pool); got != db.Name {
		t.Errorf("Pool is connected to %q, want %q", got, db.Name)
	}
}

func TestNewGivesEachTestItsOwnDatabase(t *testing.T) {
	var names []string
	for i := range 2 {
		t.Run(fmt.Sprintf("test%d", i), func(t *testing.T) {
			db := New(t)
			names = append(names, db.Name)
			// A row written here must not appear in the other test's database.
			_, err := db.Pool.Exec(context.Background(), "CREATE TABLE marker (test int)")
			if err != nil {
				t.Fatalf("creating table marker in the database of test %d: %v", i, err)
			}
		})
	}
	if len(names) != 2 {
		t.Fatalf("got %d database names, want 2", len(names))
	}
	if names[0] == names[1] {
		t.Errorf("both tests got database %q", names[0])
	}

	// The subtests passed, so their databases must be gone.
	admin := New(t)
	for _, name := range names {
		if databaseExists(t, admin.Pool, name) {
			t.Errorf("database %q of a passed test still exists", name)
		}
	}
}

func TestNewEmptyHasNoTables(t *testing.T) {
	db := NewEmpty(t)

	var tables []string
	rows, err := db.Pool.Query(context.Background(),
		"SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var table string
		if err := rows.Scan(&table); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, table)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(tables) != 0 {
		t.Errorf("NewEmpty database has tables %v, want none", tables)
	}
	if got := currentDatabase(t, db.Pool); got != db.Name {
		t.Errorf("Pool is connected to %q, want %q", got, db.Name)
	}
}

// failedTB is a testing.TB whose test has failed. It runs its cleanups only
// when runCleanups is called.
type failedTB struct {
	testing.TB
	cleanups []func()
	logs     []string
}

func (f *failedTB) Failed() bool           { return true }
func (f *failedTB) Cleanup(cleanup func()) { f.cleanups = append(f.cleanups, cleanup) }
func (f *failedTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *failedTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestFailedTestKeepsDatabase(t *testing.T) {
	failed := &failedTB{TB: t}
	kept := New(failed)
	failed.runCleanups()

	admin := New(t)
	if !databaseExists(t, admin.Pool, kept.Name) {
		t.Fatalf("database %q of a failed test was dropped, want it kept", kept.Name)
	}
	srv, err := findServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.DropDatabase(context.Background(), kept.Name); err != nil {
			t.Errorf("dropping the kept database: %v", err)
		}
	})

	if len(failed.logs) != 1 || !strings.Contains(failed.logs[0], kept.Name) {
		t.Errorf("logs = %q, want one line naming database %q", failed.logs, kept.Name)
	}
	if err := kept.Pool.Ping(context.Background()); err == nil {
		t.Error("Pool of the failed test still accepts queries, want it closed")
	}
}

func TestTemplateHash(t *testing.T) {
	base := fstest.MapFS{
		"m/001_a.sql": {Data: []byte("CREATE TABLE a ();")},
		"m/002_b.sql": {Data: []byte("CREATE TABLE b ();")},
	}
	changedContent := fstest.MapFS{
		"m/001_a.sql": {Data: []byte("CREATE TABLE a (id int);")},
		"m/002_b.sql": {Data: []byte("CREATE TABLE b ();")},
	}
	renamed := fstest.MapFS{
		"m/001_a.sql": {Data: []byte("CREATE TABLE a ();")},
		"m/003_b.sql": {Data: []byte("CREATE TABLE b ();")},
	}

	hashOf := func(fsys fstest.MapFS) []byte {
		t.Helper()
		sum, err := templateHash(fsys, "m")
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	first := hashOf(base)
	if !bytes.Equal(first, hashOf(base)) {
		t.Error("hash differs between two runs over the same files")
	}
	if bytes.Equal(first, hashOf(changedContent)) {
		t.Error("hash ignores a changed file content")
	}
	if bytes.Equal(first, hashOf(renamed)) {
		t.Error("hash ignores a renamed file")
	}
}

func currentDatabase(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var name string
	if err := pool.QueryRow(context.Background(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

func databaseExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var exists bool
	err := pool.QueryRow(context.Background(),
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	return exists
}
