package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
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

// newMigrationSet returns a migration set that no other test process uses,
// so that its template and ready clones belong to this test alone, and
// drops them when the test ends.
func newMigrationSet(t *testing.T) (migrationSet, *pgfind.Server) {
	t.Helper()
	srv, err := findServer()
	if err != nil {
		t.Fatal(err)
	}
	table := "marker_" + strings.ToLower(rand.Text()[:12])
	set := migrationSet{
		fsys: fstest.MapFS{"m/001_marker.sql": {Data: []byte("-- migrate:up\nCREATE TABLE " + table + " (id int);\n\n-- migrate:down\n")}},
		dir:  "m",
	}
	sum, err := templateHash(set.fsys, set.dir)
	if err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(sum[:8])

	t.Cleanup(func() {
		ctx := context.Background()
		for _, name := range databasesWithPrefix(t, srv, readyClonePrefix+id+"_") {
			if err := srv.DropDatabase(ctx, name); err != nil {
				t.Errorf("dropping ready clone %s: %v", name, err)
			}
		}
		if err := srv.DropDatabase(ctx, "pgguard_tpl_"+id); err != nil {
			t.Errorf("dropping the template: %v", err)
		}
	})
	return set, srv
}

func databasesWithPrefix(t *testing.T, srv *pgfind.Server, prefix string) []string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// waitFor polls condition until it holds, and fails the test after a minute.
func waitFor(t *testing.T, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHarnessClaimsCloneLeftByEarlierHarness(t *testing.T) {
	set, srv := newMigrationSet(t)
	ctx := context.Background()

	first, err := newHarness(ctx, srv, set, 1)
	if err != nil {
		t.Fatal(err)
	}
	readyPrefix := readyClonePrefix + first.tpl.id + "_"
	waitFor(t, "the first harness has a ready clone", func() bool {
		first.clones.mu.Lock()
		defer first.clones.mu.Unlock()
		return len(first.clones.ready) == 1
	})
	first.Close()
	leftovers := databasesWithPrefix(t, srv, readyPrefix)
	if len(leftovers) != 1 {
		t.Fatalf("ready clones after Close = %q, want one", leftovers)
	}

	// With no clones to keep ready, the second harness creates none, so a
	// ready database can only be the one left by the first.
	second, err := newHarness(ctx, srv, set, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	db, err := second.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := second.Drop(ctx, db); err != nil {
			t.Errorf("dropping the database: %v", err)
		}
	}()

	if !db.Timing.Ready {
		t.Error("Timing.Ready is false, want true for a claimed leftover clone")
	}
	if left := databasesWithPrefix(t, srv, readyPrefix); len(left) != 0 {
		t.Errorf("ready clones after the claim = %q, want none", left)
	}
	if got := currentDatabase(t, db.Pool); got != db.Name {
		t.Errorf("Pool is connected to %q, want %q", got, db.Name)
	}
	var applied int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&applied); err != nil {
		t.Fatalf("reading schema_migrations: %v", err)
	}
	if applied != 1 {
		t.Errorf("schema_migrations has %d rows, want 1", applied)
	}
}

func TestHarnessWithoutReadyClonesCreatesOne(t *testing.T) {
	set, srv := newMigrationSet(t)
	ctx := context.Background()

	harness, err := newHarness(ctx, srv, set, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer harness.Close()
	db, err := harness.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if db.Timing.Ready {
		t.Error("Timing.Ready is true, want false when no clone is kept ready")
	}
	if err := harness.Drop(ctx, db); err != nil {
		t.Fatal(err)
	}

	admin := New(t)
	if databaseExists(t, admin.Pool, db.Name) {
		t.Errorf("database %q still exists after Drop", db.Name)
	}
	if created := harness.CreateTimes(); len(created) != 1 {
		t.Errorf("CreateTimes has %d entries, want 1", len(created))
	}
}

func TestHarnessDropsStaleClonesOfOtherTemplates(t *testing.T) {
	set, srv := newMigrationSet(t)
	ctx := context.Background()

	otherID := strings.ToLower(rand.Text()[:16])
	cloneName := func(created time.Time) string {
		return readyClonePrefix + otherID + "_" + strconv.FormatInt(created.Unix(), 36) + "_" + strings.ToLower(rand.Text()[:8])
	}
	stale := cloneName(time.Now().Add(-staleCloneAge - time.Minute))
	recent := cloneName(time.Now())
	for _, name := range []string{stale, recent} {
		if err := srv.CreateDatabase(ctx, name, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := srv.DropDatabase(context.Background(), name); err != nil {
				t.Errorf("dropping %s: %v", name, err)
			}
		})
	}

	harness, err := newHarness(ctx, srv, set, 0)
	if err != nil {
		t.Fatal(err)
	}
	<-harness.clones.done
	harness.Close()

	left := databasesWithPrefix(t, srv, readyClonePrefix+otherID+"_")
	if slices.Contains(left, stale) {
		t.Errorf("stale clone %s of another template still exists", stale)
	}
	if !slices.Contains(left, recent) {
		t.Errorf("recent clone %s of another template was dropped, want it kept for its process", recent)
	}
}

func TestRenameOfClaimedCloneReturnsFalse(t *testing.T) {
	set, srv := newMigrationSet(t)
	ctx := context.Background()

	harness, err := newHarness(ctx, srv, set, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer harness.Close()

	candidate := readyClonePrefix + harness.tpl.id + "_" + strconv.FormatInt(time.Now().Unix(), 36) + "_" + strings.ToLower(rand.Text()[:8])
	if err := srv.CreateDatabase(ctx, candidate, harness.Template()); err != nil {
		t.Fatal(err)
	}
	first, second := newDatabaseName(), newDatabaseName()
	t.Cleanup(func() {
		for _, name := range []string{candidate, first, second} {
			if err := srv.DropDatabase(context.Background(), name); err != nil {
				t.Errorf("dropping %s: %v", name, err)
			}
		}
	})

	claimed, err := harness.clones.rename(ctx, candidate, first)
	if err != nil {
		t.Fatal(err)
	}
	if !claimed {
		t.Fatal("first rename returned false, want true")
	}
	claimed, err = harness.clones.rename(ctx, candidate, second)
	if err != nil {
		t.Fatalf("second rename: %v, want no error", err)
	}
	if claimed {
		t.Error("second rename of the same clone returned true, want false")
	}
}

func TestCloneAge(t *testing.T) {
	created := time.Now().Add(-time.Hour)
	name := readyClonePrefix + "0123456789abcdef_" + strconv.FormatInt(created.Unix(), 36) + "_abcdefgh"
	if age := cloneAge(name); age < time.Hour || age > 2*time.Hour {
		t.Errorf("cloneAge(%q) = %s, want about 1h", name, age)
	}
	for _, name := range []string{
		readyClonePrefix + "0123456789abcdef",
		readyClonePrefix + "0123456789abcdef_!!_abcdefgh",
		"pgguard_test_abc",
	} {
		if age := cloneAge(name); age != 0 {
			t.Errorf("cloneAge(%q) = %s, want 0 for a name without a creation time", name, age)
		}
	}
}
