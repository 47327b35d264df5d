package integration

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

// unreachablePool returns a pool whose server does not exist: nothing
// listens on port 1 of the loopback address, so connecting fails at once.
func unreachablePool(t *testing.T) *pgxpool.Pool {
	t.Helper()

	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/pgguard?connect_timeout=2&sslmode=disable")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func TestLockoutUnavailable(t *testing.T) {
	t.Parallel()

	t.Run("FailsClosedByDefault", func(t *testing.T) {
		t.Parallel()
		lockout, err := service.NewLockout(unreachablePool(t), service.LockoutConfig{})
		require.NoError(t, err)

		attempt, err := lockout.Begin(t.Context(), service.ChannelPassword, "alice@example.com", "192.0.2.1")
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.NotErrorIs(t, err, service.ErrLocked)
		require.Nil(t, attempt)
	})

	t.Run("FailsOpenWhenConfigured", func(t *testing.T) {
		t.Parallel()
		lockout, err := service.NewLockout(unreachablePool(t), service.LockoutConfig{FailOpen: true})
		require.NoError(t, err)

		attempt, err := lockout.Begin(t.Context(), service.ChannelPassword, "alice@example.com", "192.0.2.1")
		require.NoError(t, err)
		require.True(t, attempt.Unchecked())
		_, err = attempt.Fail(t.Context())
		require.NoError(t, err)
	})

	t.Run("InvalidInputStillRejectedWhenOpen", func(t *testing.T) {
		t.Parallel()
		lockout, err := service.NewLockout(unreachablePool(t), service.LockoutConfig{FailOpen: true})
		require.NoError(t, err)

		_, err = lockout.Begin(t.Context(), service.ChannelPassword, "", "192.0.2.1")
		require.ErrorIs(t, err, service.ErrInvalidInput)
	})

	t.Run("CheckedAttemptsReportChecked", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{FailOpen: true})

		attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "alice@example.com", "192.0.2.1")
		require.NoError(t, err)
		require.False(t, attempt.Unchecked())
		require.NoError(t, attempt.Succeed(b.ctx))
	})
}
