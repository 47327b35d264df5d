package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

// TestWaitingBeginSeesOtherChannelLock engages a lock on the password
// channel while a Begin on the one-time-code channel of the same account
// waits for its row lock. A lock on any channel applies to all, so the
// waiting Begin must be rejected when it gets the row.
func TestWaitingBeginSeesOtherChannelLock(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		policy service.ChannelPolicy
		// sources are the addresses of the wrong passwords. The waiting
		// Begin comes from the first.
		sources []string
		tier    service.Tier
	}{
		{"AccountSourceLock", service.ChannelPolicy{}, []string{"192.0.2.44", "192.0.2.44", "192.0.2.44", "192.0.2.44", "192.0.2.44"}, service.TierAccountSource},
		{"HardLock", service.ChannelPolicy{HardLockAfter: 3}, []string{"192.0.2.45", "198.51.100.1", "198.51.100.2"}, service.TierHard},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setupFaults(t, nil)
			lockout, err := service.NewLockout(b.pool, service.LockoutConfig{Channels: map[service.Channel]service.ChannelPolicy{
				service.ChannelPassword: c.policy,
			}})
			require.NoError(t, err)
			email, source := "waiting@example.com", c.sources[0]

			// Create the one-time-code rows, so the next Begin waits for a
			// row lock instead of inserting.
			attempt, err := lockout.Begin(b.ctx, service.ChannelOneTimeCode, email, source)
			require.NoError(t, err)
			require.NoError(t, attempt.Cancel(b.ctx))
			release := b.holdLock(t, `SELECT 1 FROM auth_account_counters WHERE email = $1 AND channel = 'one_time_code' FOR UPDATE`, email)
			waited := make(chan error, 1)
			go func() {
				_, err := lockout.Begin(b.ctx, service.ChannelOneTimeCode, email, source)
				waited <- err
			}()
			b.waitForBlockedBackend(t)

			for _, failing := range c.sources {
				attempt, err := lockout.Begin(b.ctx, service.ChannelPassword, email, failing)
				require.NoError(t, err)
				_, err = attempt.Fail(b.ctx)
				require.NoError(t, err)
			}
			release()

			err = <-waited
			var locked *service.LockedError
			require.ErrorAs(t, err, &locked)
			require.Equal(t, c.tier, locked.Tier)
		})
	}
}

// TestPurgeIdleSparseIDs purges a table whose ids are far apart, as after
// years of counters created and purged: the purge's work follows the rows
// stored, not the highest id ever handed out.
func TestPurgeIdleSparseIDs(t *testing.T) {
	t.Parallel()
	b := setupLockout(t, service.LockoutConfig{})
	now := b.clock.Now()
	_, err := b.pool.Exec(b.ctx, `
		INSERT INTO auth_source_counters (id, ip, channel, last_attempt_at)
		OVERRIDING SYSTEM VALUE
		VALUES (1, '198.51.100.1', 'password', $1::timestamptz - interval '40 days'),
			(2000000, '198.51.100.2', 'password', $1::timestamptz),
			(9223372036854775000, '198.51.100.3', 'password', $1::timestamptz - interval '40 days')`, now)
	require.NoError(t, err)

	// Walking the ids in ranges of one would take about 10^19 statements.
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	deleted, err := b.lockout.PurgeIdle(ctx, 30*24*time.Hour, 1)
	require.NoError(t, err)
	require.Equal(t, int64(2), deleted)

	var left []int64
	rows, err := b.pool.Query(b.ctx, `SELECT id FROM auth_source_counters ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		left = append(left, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{2000000}, left)
}

// TestUnlockAccountDuringLogins unlocks an account over and over while its
// owner completes logins on two channels. A completed login locks the
// account's rows of every channel, so both must lock them in the same
// order, because a deadlock would abort one of the calls.
func TestUnlockAccountDuringLogins(t *testing.T) {
	t.Parallel()
	b := setupFaults(t, func(config *pgxpool.Config) { config.MaxConns = 6 })
	lockout, err := service.NewLockout(b.pool, service.LockoutConfig{})
	require.NoError(t, err)
	const email, rounds = "busy@example.com", 150

	// Create the account's rows on both channels.
	for _, channel := range []service.Channel{service.ChannelPassword, service.ChannelOneTimeCode} {
		attempt, err := lockout.Begin(b.ctx, channel, email, "192.0.2.60")
		require.NoError(t, err)
		require.NoError(t, attempt.Succeed(b.ctx))
	}

	errs := make(chan error, 3*rounds)
	var wg sync.WaitGroup
	for _, channel := range []service.Channel{service.ChannelPassword, service.ChannelOneTimeCode} {
		wg.Go(func() {
			for range rounds {
				attempt, err := lockout.Begin(b.ctx, channel, email, "192.0.2.60")
				if err == nil {
					err = attempt.Succeed(b.ctx)
				}
				if err != nil {
					errs <- fmt.Errorf("login on %s: %w", channel, err)
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			if _, err := lockout.UnlockAccount(b.ctx, email); err != nil {
				errs <- fmt.Errorf("unlock: %w", err)
			}
		}
	})
	wg.Wait()
	close(errs)

	var failures []string
	for err := range errs {
		failures = append(failures, err.Error())
	}
	require.Empty(t, failures)
}
