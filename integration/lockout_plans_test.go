package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

// lockoutTables are the tables a login reads and writes.
var lockoutTables = []string{"auth_attempts", "auth_account_counters", "auth_source_counters", "auth_known_sources"}

// TestLockoutPlansOutliveEmptyTables checks that a connection that planned
// the lockout statements while the tables were empty, as on a new
// deployment, still looks keys up through their indexes once the tables
// have grown. Postgres keeps those plans for the life of the connection.
func TestLockoutPlansOutliveEmptyTables(t *testing.T) {
	t.Parallel()
	b := setupFaults(t, func(config *pgxpool.Config) { config.MaxConns = 1 })
	lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
	require.NoError(t, err)
	_, err = b.admin.Exec(b.ctx, `ANALYZE auth_attempts, auth_account_counters, auth_source_counters, auth_known_sources`)
	require.NoError(t, err)

	login := func(email string, succeed bool) {
		t.Helper()
		attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, email, "192.0.2.7")
		require.NoError(t, err)
		if succeed {
			require.NoError(t, attempt.Succeed(b.ctx))
			return
		}
		_, err = attempt.Fail(b.ctx)
		require.NoError(t, err)
	}
	// Plan every statement of a login on the pool's one connection.
	// Postgres plans a cached statement anew for its first five runs and
	// may then keep one generic plan for the life of the connection.
	for range 8 {
		login("planned@example.com", true)
		login("planned@example.com", false)
	}

	_, err = b.admin.Exec(b.ctx, `
		INSERT INTO auth_known_sources (email, ip, last_success_at)
		SELECT 'grown-' || n || '@example.com', '198.51.100.1', now() FROM generate_series(1, 5000) n;
		INSERT INTO auth_account_counters (email, channel)
		SELECT 'grown-' || n || '@example.com', 'password' FROM generate_series(1, 5000) n;
		INSERT INTO auth_attempts (email, ip, channel)
		SELECT 'grown-' || n || '@example.com', '198.51.100.1', 'password' FROM generate_series(1, 5000) n;
		INSERT INTO auth_source_counters (ip, channel)
		SELECT '198.51.100.0'::inet + n, 'password' FROM generate_series(2, 5001) n;
		CREATE TABLE plan_marker (n integer);`)
	require.NoError(t, err)
	before := b.seqScansAfterFlush(t, 1)

	login("grown-7@example.com", true)
	login("grown-8@example.com", false)
	login("planned@example.com", false)

	after := b.seqScansAfterFlush(t, 2)
	for _, table := range lockoutTables {
		require.Equal(t, before[table], after[table], "sequential scans of %s", table)
	}
}

// seqScansAfterFlush returns the sequential scans of every lockout table,
// counting those of the pool under test up to now. It makes the pool's
// connection scan plan_marker, the marker-th time, and flush its
// statistics, then waits until the marker's scan is visible, which shows
// that everything the connection did before it is counted too.
func (b *faultBundle) seqScansAfterFlush(t *testing.T, marker int64) map[string]int64 {
	t.Helper()

	_, err := b.pool.Exec(b.ctx, `SELECT count(*) FROM plan_marker`)
	require.NoError(t, err)
	_, err = b.pool.Exec(b.ctx, `SELECT pg_stat_force_next_flush()`)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	for {
		var scans int64
		err := b.admin.QueryRow(ctx, `SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'plan_marker'`).Scan(&scans)
		require.NoError(t, err, "the marker's scan did not show in pg_stat_user_tables")
		if scans >= marker {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	counts := make(map[string]int64, len(lockoutTables))
	for _, table := range lockoutTables {
		var scans int64
		err := b.admin.QueryRow(b.ctx, `SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&scans)
		require.NoError(t, err)
		counts[table] = scans
	}
	return counts
}
