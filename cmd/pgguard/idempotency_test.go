package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
)

func TestIdempotencyPurgeCommand(t *testing.T) {
	db := pgtest.New(t)
	t.Setenv("DATABASE_URL", db.URL)
	// Three expired records and one that is still valid.
	_, err := db.Pool.Exec(t.Context(), `
		INSERT INTO idempotency_records (key, route, scope, request_hash, state, response_status, expires_at)
		SELECT 'key-' || i, 'POST /orders', 'org:acme', 'v2:x', 'completed', 201,
			now() + CASE WHEN i = 4 THEN interval '1 hour' ELSE interval '-1 second' END
		FROM generate_series(1, 4) AS i`)
	require.NoError(t, err)

	code, stdout, stderr := runCLI(t, "idempotency", "purge", "-batch", "2")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "deleted 3 expired idempotency records\n", stdout)

	code, stdout, stderr = runCLI(t, "idempotency", "purge")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "deleted 0 expired idempotency records\n", stdout)

	var left int
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_records`).Scan(&left))
	require.Equal(t, 1, left)
}

func TestIdempotencyCommandErrors(t *testing.T) {
	t.Setenv("DATABASE_URL", "")

	code, _, stderr := runCLI(t, "idempotency", "purge", "-batch", "0")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "-batch is 0")

	code, _, stderr = runCLI(t, "idempotency", "purge", "extra")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "takes only flags")

	code, _, stderr = runCLI(t, "idempotency")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "pgguard: idempotency needs an action")

	code, _, stderr = runCLI(t, "idempotency", "purge")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "DATABASE_URL is not set")

	code, stdout, _ := runCLI(t, "help")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "idempotency")
}
