// Package pgtest gives each test its own PostgreSQL database.
//
// The first call in a test process finds a server with [pgfind.Find] and
// environment variable TEST_DATABASE_URL, then builds a template database
// containing pgguard's migrations. [New] gives each test a clone of that
// template, which costs one CREATE DATABASE instead of a migration run. A
// test's database is dropped when the test passes and kept, with its URL
// logged, when the test fails.
//
// CREATE DATABASE takes tens of milliseconds on a quiet machine and several
// times that on a loaded one, so a [Harness] keeps [ReadyClones] clones
// ready, created in the background under names that start with
// pgguard_ready_. A test claims one by renaming it, which leaves it only
// the connection to wait for. Ready clones left when the test process exits
// are claimed by the next process of the same migrations. Ready clones of
// other migrations are dropped by the next process once they are older
// than 10 minutes.
//
// The template is named pgguard_tpl_<hash>, where the hash covers the names
// and contents of the migration files. Test processes that run at the same
// time (go test runs packages in parallel) build it under a PostgreSQL
// advisory lock, so one process builds it and the others reuse it. When the
// migrations change, the next run builds a new template.
//
// NOTE: templates of older migrations stay on the server. Drop them by hand
// when they pile up: they match pgguard_tpl_% and carry the template flag,
// so clear it first (ALTER DATABASE ... WITH IS_TEMPLATE false). The ready
// clones of the migrations tested last also stay, about ReadyClones for
// each test process that ran last, until dropped by hand.
//
// A container that pgfind starts is not stopped by this package. The
// testcontainers reaper (Ryuk) removes it after the test process exits,
// unless TESTCONTAINERS_RYUK_DISABLED is set.
//
// Package pgguard's own tests must be in package pgguard_test to use this
// package, because pgtest imports pgguard.
package pgtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
)

// EnvVar names the environment variable that may hold the URL of the test
// server. See [pgfind.Find] for the other ways a server is found.
const EnvVar = "TEST_DATABASE_URL"

// Timeouts for the work done outside a test's own code. findTimeout leaves
// room for pulling a container image.
const (
	findTimeout     = 5 * time.Minute
	templateTimeout = 2 * time.Minute
	cloneTimeout    = time.Minute
	dropTimeout     = time.Minute
)

// DB is a database that belongs to one test.
type DB struct {
	// Pool is connected to the database and closed when the test ends.
	Pool *pgxpool.Pool
	// URL is the postgres:// URL of the database. It may contain a password.
	URL string
	// Name is the database name.
	Name string
	// Timing splits the time that opening the database took.
	Timing OpenTiming
}

// OpenTiming is the time that a test waited for its database, in two parts.
type OpenTiming struct {
	// Clone is the time to claim a ready clone, including any wait for one,
	// or to create a clone when none was ready or being created.
	Clone time.Duration
	// Connect is the time to open the pool and ping the database.
	Connect time.Duration
	// Ready reports whether a ready clone was there when the test asked,
	// so that the test did not wait for a CREATE DATABASE.
	Ready bool
}

var (
	serverOnce sync.Once
	server     *pgfind.Server
	serverErr  error

	harnessOnce sync.Once
	harness     *Harness
	harnessErr  error
)

// findServer finds the server once per test process.
func findServer() (*pgfind.Server, error) {
	serverOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
		defer cancel()
		server, serverErr = pgfind.Find(ctx, EnvVar)
	})
	return server, serverErr
}

// New returns a database with pgguard's migrations applied, cloned from the
// template. It calls t.Fatal when no server is found or the clone fails.
func New(t testing.TB) *DB {
	t.Helper()
	srv := mustFindServer(t)

	harnessOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), templateTimeout)
		defer cancel()
		harness, harnessErr = NewHarness(ctx, srv, ReadyClones)
	})
	if harnessErr != nil {
		t.Fatalf("pgtest: %v", harnessErr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cloneTimeout)
	defer cancel()
	db, err := harness.Open(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { removeDatabase(t, srv, db) })
	return db
}

// NewEmpty returns a new database without pgguard's migrations, copied from
// the server's default template (template1), for tests of the migrations
// themselves.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	srv := mustFindServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), cloneTimeout)
	defer cancel()

	db := &DB{Name: newDatabaseName()}
	db.URL = srv.DatabaseURL(db.Name)
	if err := srv.CreateDatabase(ctx, db.Name, ""); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { removeDatabase(t, srv, db) })

	pool, err := connect(ctx, db)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	db.Pool = pool
	return db
}

func mustFindServer(t testing.TB) *pgfind.Server {
	t.Helper()
	srv, err := findServer()
	if err != nil {
		t.Fatalf("pgtest: no database server for tests: %v", err)
	}
	return srv
}

// connect opens a pool to db and pings it.
func connect(ctx context.Context, db *DB) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, db.URL)
	if err != nil {
		return nil, fmt.Errorf("failed to configure a pool for database %s: %w", db.Name, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("failed to connect to database %s: %w", db.Name, err)
	}
	return pool, nil
}

// removeDatabase closes the pool, then drops the database if the test passed
// or logs where to find it if the test failed.
func removeDatabase(t testing.TB, srv *pgfind.Server, db *DB) {
	if db.Pool != nil {
		db.Pool.Close()
	}
	if t.Failed() {
		t.Logf("pgtest: kept database %s of the failed test: %s", db.Name, pgfind.RedactURL(db.URL))
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
	defer cancel()
	if err := srv.DropDatabase(ctx, db.Name); err != nil {
		t.Errorf("pgtest: %v", err)
	}
}

// newDatabaseName returns a random name, so that parallel tests and test
// processes never collide.
func newDatabaseName() string {
	return "pgguard_test_" + strings.ToLower(rand.Text()[:16])
}

// RowCounts returns the number of rows of every table in the public schema
// except schema_migrations, by table name, so a test can check that a
// rejected request stored nothing anywhere. It calls t.Fatal when the
// query fails.
func (db *DB) RowCounts(t testing.TB) map[string]int64 {
	t.Helper()

	// query_to_xml runs one count per table inside a single static query.
	rows, err := db.Pool.Query(context.Background(), `
		SELECT
			table_name,
			(xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I', table_name), false, true, '')))[1]::text::bigint
		FROM information_schema.tables
		WHERE table_schema = 'public'
			AND table_type = 'BASE TABLE'
			AND table_name NOT LIKE '%schema_migrations'`)
	if err != nil {
		t.Fatalf("pgtest: failed to count the rows of database %s: %v", db.Name, err)
	}
	counts := map[string]int64{}
	for rows.Next() {
		var table string
		var count int64
		if err := rows.Scan(&table, &count); err != nil {
			t.Fatalf("pgtest: failed to read a row count of database %s: %v", db.Name, err)
		}
		counts[table] = count
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("pgtest: failed to count the rows of database %s: %v", db.Name, err)
	}
	return counts
}
