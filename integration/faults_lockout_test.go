package integration

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// faultBundle is a test database with two pools: one for the code under
// test, tagged with an application_name so its backends can be found, and
// one for the test's own blocking and killing.
type faultBundle struct {
	ctx   context.Context
	db    *pgtest.DB
	pool  *pgxpool.Pool
	admin *pgxpool.Pool
}

const faultApplicationName = "pgguard-under-test"

func setupFaults(t *testing.T, configure func(*pgxpool.Config)) *faultBundle {
	t.Helper()

	db := pgtest.New(t)
	config, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	config.ConnConfig.RuntimeParams["application_name"] = faultApplicationName
	if configure != nil {
		configure(config)
	}
	pool, err := pgxpool.NewWithConfig(t.Context(), config)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	return &faultBundle{ctx: t.Context(), db: db, pool: pool, admin: db.Pool}
}

// holdLock starts a transaction on the admin pool that locks the rows
// query selects FOR UPDATE, and returns a function that ends it.
func (b *faultBundle) holdLock(t *testing.T, query string, args ...any) func() {
	t.Helper()

	tx, err := b.admin.Begin(b.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(b.ctx, query, args...)
	require.NoError(t, err)
	return func() { _ = tx.Rollback(context.WithoutCancel(b.ctx)) }
}

// waitForBlockedBackend polls until a backend of the pool under test waits
// for a lock, and returns its process id.
func (b *faultBundle) waitForBlockedBackend(t *testing.T) int32 {
	t.Helper()

	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	for {
		var pid int32
		err := b.admin.QueryRow(ctx, `
			SELECT pid FROM pg_stat_activity
			WHERE datname = current_database()
				AND application_name = $1
				AND wait_event_type = 'Lock'
			LIMIT 1`, faultApplicationName).Scan(&pid)
		if err == nil {
			return pid
		}
		require.ErrorIs(t, err, pgx.ErrNoRows)
		select {
		case <-ctx.Done():
			t.Fatal("no backend of the pool under test started waiting for a lock within 10s")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitForIdleBackends polls until no backend of the pool under test runs a
// statement. A statement whose caller gave up on a cancelled context keeps
// running on the server until it ends or notices the closed connection, so
// a test looks at the tables only after this.
func (b *faultBundle) waitForIdleBackends(t *testing.T) {
	t.Helper()

	require.Eventually(t, func() bool {
		var active int
		err := b.admin.QueryRow(b.ctx, `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 AND state = 'active'`,
			faultApplicationName).Scan(&active)
		return err == nil && active == 0
	}, 10*time.Second, 5*time.Millisecond, "a backend of the pool under test is still running a statement")
}

func (b *faultBundle) terminate(t *testing.T, pid int32) {
	t.Helper()

	var terminated bool
	require.NoError(t, b.admin.QueryRow(b.ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&terminated))
	require.True(t, terminated)
}

// counters returns failures and pending of the three password counters of
// email from ip.
func (b *faultBundle) counters(t *testing.T, email, ip string) [6]int {
	t.Helper()

	var c [6]int
	err := b.admin.QueryRow(b.ctx, `
		SELECT
			coalesce((SELECT failures_count FROM auth_attempts WHERE email = $1 AND ip = $2::inet), 0),
			coalesce((SELECT pending_count FROM auth_attempts WHERE email = $1 AND ip = $2::inet), 0),
			coalesce((SELECT failures_count FROM auth_account_counters WHERE email = $1), 0),
			coalesce((SELECT pending_count FROM auth_account_counters WHERE email = $1), 0),
			coalesce((SELECT failures_count FROM auth_source_counters WHERE ip = $2::inet), 0),
			coalesce((SELECT pending_count FROM auth_source_counters WHERE ip = $2::inet), 0)`,
		email, ip).Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5])
	require.NoError(t, err)
	return c
}

func TestLockoutFaults(t *testing.T) {
	t.Parallel()

	t.Run("BackendKilledDuringBegin", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, nil)
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
		require.NoError(t, err)

		// One failure creates the rows; then a held lock stalls the next Begin.
		attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "kill@example.com", "192.0.2.1")
		require.NoError(t, err)
		_, err = attempt.Fail(b.ctx)
		require.NoError(t, err)
		before := b.counters(t, "kill@example.com", "192.0.2.1")
		release := b.holdLock(t, "SELECT 1 FROM auth_account_counters WHERE email = 'kill@example.com' FOR UPDATE")
		defer release()

		result := make(chan error, 1)
		go func() {
			_, err := lockout.Begin(b.ctx, service.ChannelPassword, "kill@example.com", "192.0.2.1")
			result <- err
		}()
		b.terminate(t, b.waitForBlockedBackend(t))
		err = <-result
		release()

		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Equal(t, before, b.counters(t, "kill@example.com", "192.0.2.1"))

		// The pool replaces the dead connection and the next call works.
		attempt, err = lockout.Begin(b.ctx, service.ChannelPassword, "kill@example.com", "192.0.2.1")
		require.NoError(t, err)
		_, err = attempt.Fail(b.ctx)
		require.NoError(t, err)
		require.Equal(t, 2, b.counters(t, "kill@example.com", "192.0.2.1")[0])
	})

	t.Run("BackendKilledDuringFailThenRetried", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, nil)
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
		require.NoError(t, err)

		attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "settle@example.com", "192.0.2.2")
		require.NoError(t, err)
		release := b.holdLock(t, "SELECT 1 FROM auth_account_counters WHERE email = 'settle@example.com' FOR UPDATE")
		defer release()

		result := make(chan error, 1)
		go func() {
			_, err := attempt.Fail(b.ctx)
			result <- err
		}()
		b.terminate(t, b.waitForBlockedBackend(t))
		err = <-result
		release()

		// The server rolled the settle back, so the caller may retry it and
		// the failure is counted exactly once.
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Equal(t, [6]int{0, 1, 0, 1, 0, 1}, b.counters(t, "settle@example.com", "192.0.2.2"))
		_, err = attempt.Fail(b.ctx)
		require.NoError(t, err)
		require.Equal(t, [6]int{1, 0, 1, 0, 1, 0}, b.counters(t, "settle@example.com", "192.0.2.2"))
		_, err = attempt.Fail(b.ctx)
		require.ErrorIs(t, err, service.ErrAlreadySettled)
	})

	t.Run("StatementTimeout", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, func(config *pgxpool.Config) {
			config.ConnConfig.RuntimeParams["statement_timeout"] = "200"
		})
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
		require.NoError(t, err)

		attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "slow@example.com", "192.0.2.3")
		require.NoError(t, err)
		require.NoError(t, attempt.Cancel(b.ctx))
		before := b.counters(t, "slow@example.com", "192.0.2.3")
		release := b.holdLock(t, "SELECT 1 FROM auth_attempts WHERE email = 'slow@example.com' FOR UPDATE")
		defer release()

		_, err = lockout.Begin(b.ctx, service.ChannelPassword, "slow@example.com", "192.0.2.3")
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.ErrorContains(t, err, "statement timeout")
		release()
		require.Equal(t, before, b.counters(t, "slow@example.com", "192.0.2.3"))
	})

	t.Run("CancelledContext", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, nil)
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{FailOpen: true})
		require.NoError(t, err)

		attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "gone@example.com", "192.0.2.4")
		require.NoError(t, err)
		require.NoError(t, attempt.Cancel(b.ctx))
		before := b.counters(t, "gone@example.com", "192.0.2.4")
		release := b.holdLock(t, "SELECT 1 FROM auth_attempts WHERE email = 'gone@example.com' FOR UPDATE")
		defer release()

		ctx, cancel := context.WithCancel(b.ctx)
		result := make(chan error, 1)
		go func() {
			_, err := lockout.Begin(ctx, service.ChannelPassword, "gone@example.com", "192.0.2.4")
			result <- err
		}()
		b.waitForBlockedBackend(t)
		cancel()
		err = <-result
		release()

		// A cancelled caller is not failed open: it gets its context's error.
		require.ErrorIs(t, err, context.Canceled)

		// pgx returns at once and closes the connection, but the server
		// still runs the statement once the lock is free. So the attempt is
		// reserved on every counter or on none, and an attempt reserved
		// this way counts as a failure after AttemptTimeout.
		b.waitForIdleBackends(t)
		reserved := before
		reserved[1]++
		reserved[3]++
		reserved[5]++
		require.Contains(t, [][6]int{before, reserved}, b.counters(t, "gone@example.com", "192.0.2.4"))
	})

	t.Run("ExhaustedPool", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, func(config *pgxpool.Config) { config.MaxConns = 1 })
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
		require.NoError(t, err)

		conn, err := b.pool.Acquire(b.ctx)
		require.NoError(t, err)
		defer conn.Release()

		ctx, cancel := context.WithTimeout(b.ctx, 100*time.Millisecond)
		defer cancel()
		_, err = lockout.Begin(ctx, service.ChannelPassword, "busy@example.com", "192.0.2.5")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "failed to begin login attempt")
		require.Equal(t, [6]int{}, b.counters(t, "busy@example.com", "192.0.2.5"))
	})

	t.Run("RecoversAfterAllConnectionsDie", func(t *testing.T) {
		t.Parallel()
		b := setupFaults(t, nil)
		lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
		require.NoError(t, err)

		// Warm the pool, then kill every connection it holds, as a server
		// restart would.
		for range 3 {
			attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "restart@example.com", "192.0.2.6")
			require.NoError(t, err)
			require.NoError(t, attempt.Succeed(b.ctx))
		}
		_, err = b.admin.Exec(b.ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, faultApplicationName)
		require.NoError(t, err)

		var failures atomic.Int32
		succeeded := false
		for range 10 {
			attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, "restart@example.com", "192.0.2.6")
			if err != nil {
				require.True(t, errors.Is(err, service.ErrUnavailable), "unexpected error: %v", err)
				failures.Add(1)
				continue
			}
			require.NoError(t, attempt.Succeed(b.ctx))
			succeeded = true
			break
		}
		require.True(t, succeeded, "Begin never recovered after %d failures", failures.Load())
		require.Equal(t, [6]int{}, b.counters(t, "restart@example.com", "192.0.2.6"))
	})
}
