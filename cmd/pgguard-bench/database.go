package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgfind"
)

// databaseURLEnvVar names the variable that selects the Postgres server, the
// same one the tests read. The server must let the user create databases.
const databaseURLEnvVar = "TEST_DATABASE_URL"

// findTimeout bounds the search for a server; pgfind may pull a container
// image, which can take minutes.
const findTimeout = 5 * time.Minute

// benchTablesSQL creates the tables of the baselines. They live in the
// scratch database next to pgguard's, so every design runs through the
// same pool against the same server.
const benchTablesSQL = `
-- The floor: one row per key, one statement per operation.
CREATE TABLE bench_floor (
    key        text PRIMARY KEY,
    hits       integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The usual lockout design: one failure counter per email and source,
-- changed in a read-modify-write transaction.
CREATE TABLE bench_usual_attempts (
    email        text NOT NULL,
    ip           inet NOT NULL,
    failures     integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, ip)
);

-- The usual design doing pgguard's logical work: its three counters, each
-- with a count of reservations in flight.
CREATE TABLE bench_usual3_accounts (
    email        text PRIMARY KEY,
    failures     integer NOT NULL DEFAULT 0,
    pending      integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_usual3_pairs (
    email        text NOT NULL,
    ip           inet NOT NULL,
    failures     integer NOT NULL DEFAULT 0,
    pending      integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, ip)
);
CREATE TABLE bench_usual3_sources (
    ip           inet PRIMARY KEY,
    failures     integer NOT NULL DEFAULT 0,
    pending      integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The usual idempotency design: a record read with SELECT ... FOR UPDATE
-- and written in the same transaction.
CREATE TABLE bench_usual_idempotency (
    scope            text NOT NULL,
    route            text NOT NULL,
    key              text NOT NULL,
    request_hash     text NOT NULL,
    state            text NOT NULL,
    response_status  integer,
    response_headers jsonb,
    response_body    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, route, key)
);
`

// scratchDatabase is a database created for one run and dropped after it.
type scratchDatabase struct {
	server *pgfind.Server
	name   string
	url    string
}

// findServer locates the Postgres server the tests use.
func findServer(ctx context.Context) (*pgfind.Server, error) {
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	return pgfind.Find(ctx, databaseURLEnvVar)
}

// createScratchDatabase creates a database with a random name prefixed by
// prefix on server, as a copy of template ("" for the server's default).
func createScratchDatabase(ctx context.Context, server *pgfind.Server, prefix, template string) (*scratchDatabase, error) {
	name := prefix + strings.ToLower(rand.Text()[:12])
	if err := server.CreateDatabase(ctx, name, template); err != nil {
		return nil, err
	}
	return &scratchDatabase{server: server, name: name, url: server.DatabaseURL(name)}, nil
}

// drop drops the database, ending its sessions. It runs during cleanup, so
// it ignores the cancellation of ctx.
func (d *scratchDatabase) drop(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return d.server.DropDatabase(ctx, d.name)
}

// prepareSchema applies pgguard's migrations, then the SQL file applyPath
// when it is not empty, then the baselines' tables.
func prepareSchema(ctx context.Context, url, applyPath string) error {
	if err := pgguard.Migrate(ctx, url, pgguard.MigrateOptions{}); err != nil {
		return fmt.Errorf("failed to migrate the scratch database: %w", err)
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("failed to connect to the scratch database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if applyPath != "" {
		script, err := os.ReadFile(applyPath)
		if err != nil {
			return fmt.Errorf("failed to read -apply file: %w", err)
		}
		if err := execScript(ctx, conn, string(script)); err != nil {
			return fmt.Errorf("failed to run -apply file %s: %w", applyPath, err)
		}
	}
	return execScript(ctx, conn, benchTablesSQL)
}

// execScript runs script, which may hold several statements, with the
// simple query protocol.
func execScript(ctx context.Context, conn *pgx.Conn, script string) error {
	_, err := conn.PgConn().Exec(ctx, script).ReadAll()
	return err
}

// openPool returns a pool of up to maxConns connections to url that counts
// round trips with roundTripTracer.
func openPool(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	config, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("failed to parse the scratch database URL: %w", err)
	}
	config.MaxConns = int32(maxConns)
	config.ConnConfig.Tracer = roundTripTracer{}

	pool, err := pgxpool.NewWithConfig(ctx, config)
	if err != nil {
		return nil, fmt.Errorf("failed to open a pool: %w", err)
	}
	if err := openAll(ctx, pool, maxConns); err != nil {
		pool.Close()
		return nil, fmt.Errorf("failed to connect to the scratch database: %w", err)
	}
	return pool, nil
}

// openAll opens n connections of pool at once, so that measured ops do not
// wait for new connections to open.
func openAll(ctx context.Context, pool *pgxpool.Pool, n int) error {
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Release()
		}
	}()
	for range n {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, conn)
	}
	return nil
}
