package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/dbgen"
	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

type lockoutBundle struct {
	ctx     context.Context
	pool    *pgxpool.Pool
	queries *dbgen.Queries
	clock   *testClock
	lockout *service.Lockout
}

func setupLockout(t *testing.T, config service.LockoutConfig) *lockoutBundle {
	t.Helper()

	db := pgtest.New(t)
	clock := newTestClock()
	config.Now = clock.Now
	lockout, err := service.NewLockout(db.Pool, config)
	require.NoError(t, err)

	return &lockoutBundle{
		ctx:     t.Context(),
		pool:    db.Pool,
		queries: dbgen.New(db.Pool),
		clock:   clock,
		lockout: lockout,
	}
}

// fail runs one complete failed login and returns Fail's result.
func (b *lockoutBundle) fail(t *testing.T, email, ip string) service.FailResult {
	t.Helper()

	attempt, err := b.lockout.Begin(b.ctx, email, ip)
	require.NoError(t, err)
	result, err := attempt.Fail(b.ctx)
	require.NoError(t, err)
	return result
}

func (b *lockoutBundle) rowCount(t *testing.T) int {
	t.Helper()

	var count int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM auth_attempts").Scan(&count))
	return count
}

func requireLocked(t *testing.T, err error, wantRetryAfter time.Duration) {
	t.Helper()

	require.ErrorIs(t, err, service.ErrLocked)
	var locked *service.LockedError
	require.ErrorAs(t, err, &locked)
	require.Equal(t, wantRetryAfter, locked.RetryAfter)
}

func TestLockout(t *testing.T) {
	t.Parallel()

	t.Run("LocksAtThresholdWithoutCountingDuringLock", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for i := range 4 {
			result := b.fail(t, "alice@example.com", "203.0.113.7")
			require.Equal(t, i+1, result.Failures)
			require.False(t, result.Locked())
		}
		result := b.fail(t, "alice@example.com", "203.0.113.7")
		require.True(t, result.Locked())
		require.WithinDuration(t, b.clock.Now().Add(30*time.Second), result.LockedUntil, 0)

		_, err := b.lockout.Begin(b.ctx, "alice@example.com", "203.0.113.7")
		requireLocked(t, err, 30*time.Second)

		// Attempts during the lock are not counted and do not extend it.
		b.clock.Advance(29 * time.Second)
		_, err = b.lockout.Begin(b.ctx, "alice@example.com", "203.0.113.7")
		requireLocked(t, err, time.Second)

		status, err := b.lockout.Status(b.ctx, "alice@example.com", "203.0.113.7")
		require.NoError(t, err)
		require.Equal(t, 0, status.Failures)
		require.Equal(t, 0, status.Pending)
		require.Equal(t, 1, status.LockCount)

		b.clock.Advance(time.Second)
		attempt, err := b.lockout.Begin(b.ctx, "alice@example.com", "203.0.113.7")
		require.NoError(t, err)
		require.NoError(t, attempt.Succeed(b.ctx))
	})

	t.Run("LockDurationDoublesUpToCap", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{
			MaxFailures:     2,
			LockDuration:    10 * time.Second,
			MaxLockDuration: 35 * time.Second,
		})

		for _, want := range []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second} {
			b.fail(t, "bob@example.com", "")
			result := b.fail(t, "bob@example.com", "")
			require.WithinDuration(t, b.clock.Now().Add(want), result.LockedUntil, 0)

			b.clock.Advance(want)
		}
	})

	t.Run("ForgetsFailuresAfterWindow", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 4 {
			b.fail(t, "carol@example.com", "198.51.100.1")
		}
		b.clock.Advance(15 * time.Minute)

		result := b.fail(t, "carol@example.com", "198.51.100.1")
		require.Equal(t, 1, result.Failures)
	})

	t.Run("KeepsDoublingAcrossLocksLongerThanWindow", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{
			MaxFailures:     1,
			FailureWindow:   time.Minute,
			LockDuration:    time.Hour,
			MaxLockDuration: 4 * time.Hour,
		})

		require.True(t, b.fail(t, "dave@example.com", "").Locked())
		b.clock.Advance(time.Hour)

		// The lock ended just now, so the window counts from its end and
		// the second lock doubles.
		result := b.fail(t, "dave@example.com", "")
		require.WithinDuration(t, b.clock.Now().Add(2*time.Hour), result.LockedUntil, 0)
	})

	t.Run("SuccessRefundsAndResets", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 4 {
			b.fail(t, "erin@example.com", "192.0.2.10")
		}
		attempt, err := b.lockout.Begin(b.ctx, "erin@example.com", "192.0.2.10")
		require.NoError(t, err)
		require.NoError(t, attempt.Succeed(b.ctx))
		require.ErrorIs(t, attempt.Succeed(b.ctx), service.ErrAlreadySettled)
		_, err = attempt.Fail(b.ctx)
		require.ErrorIs(t, err, service.ErrAlreadySettled)

		status, err := b.lockout.Status(b.ctx, "erin@example.com", "192.0.2.10")
		require.NoError(t, err)
		require.Equal(t, 0, status.Failures)
		require.Equal(t, 0, status.Pending)
		require.False(t, status.Locked())
	})

	t.Run("UnsettledAttemptCountsAsFailure", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 2})

		// Two callers crash after Begin: the budget is taken while they
		// might still settle, then they count as failures and lock the key.
		for range 2 {
			_, err := b.lockout.Begin(b.ctx, "frank@example.com", "")
			require.NoError(t, err)
		}
		_, err := b.lockout.Begin(b.ctx, "frank@example.com", "")
		requireLocked(t, err, time.Minute)

		b.clock.Advance(time.Minute)
		_, err = b.lockout.Begin(b.ctx, "frank@example.com", "")
		requireLocked(t, err, 30*time.Second)

		status, err := b.lockout.Status(b.ctx, "frank@example.com", "")
		require.NoError(t, err)
		require.Equal(t, 1, status.LockCount)
		require.Equal(t, 0, status.Pending)
	})

	t.Run("NoIPIsOneBucket", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 20})

		for range 10 {
			b.fail(t, "grace@example.com", "")
		}

		require.Equal(t, 1, b.rowCount(t))
		status, err := b.lockout.Status(b.ctx, "grace@example.com", "")
		require.NoError(t, err)
		require.Equal(t, 10, status.Failures)
		require.False(t, status.Source.IsValid())
	})

	t.Run("NoIPLocksAtThreshold", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 5 {
			b.fail(t, "heidi@example.com", "")
		}
		_, err := b.lockout.Begin(b.ctx, "heidi@example.com", "")
		requireLocked(t, err, 30*time.Second)
		require.Equal(t, 1, b.rowCount(t))
	})

	t.Run("EmailSpellingsShareCounter", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 10})

		spellings := []string{
			"Alice@Ex.com",
			"alice@ex.com",
			" ALICE@EX.COM ",
			"jos\u00e9@example.com",  // é precomposed (NFC)
			"jose\u0301@example.com", // e + combining acute (NFD)
		}
		for _, email := range spellings {
			b.fail(t, email, "")
		}

		alice, err := b.lockout.Status(b.ctx, "alice@ex.com", "")
		require.NoError(t, err)
		require.Equal(t, 3, alice.Failures)
		jose, err := b.lockout.Status(b.ctx, "JOS\u00c9@example.com", "")
		require.NoError(t, err)
		require.Equal(t, 2, jose.Failures)
		require.Equal(t, 2, b.rowCount(t))
	})

	t.Run("SourcesNormalized", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 100})

		for _, ip := range []string{"1.2.3.4", "::ffff:1.2.3.4", "::ffff:102:304"} {
			b.fail(t, "ivan@example.com", ip)
		}
		for i := range 5 {
			b.fail(t, "ivan@example.com", fmt.Sprintf("2001:db8:0:0:%x::1", i+1))
		}
		b.fail(t, "ivan@example.com", "2001:db8::1")
		b.fail(t, "ivan@example.com", "2001:0db8:0:0:0:0:0:2")

		statuses, err := b.lockout.StatusByEmail(b.ctx, "ivan@example.com")
		require.NoError(t, err)
		bySource := map[netip.Prefix]int{}
		for _, status := range statuses {
			bySource[status.Source] = status.Failures
		}
		require.Equal(t, map[netip.Prefix]int{
			netip.MustParsePrefix("1.2.3.4/32"):    3,
			netip.MustParsePrefix("2001:db8::/64"): 7,
		}, bySource)
	})

	t.Run("SourcesAreSeparate", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 2})

		b.fail(t, "judy@example.com", "::ffff:1.2.3.4")
		b.fail(t, "judy@example.com", "::ffff:5.6.7.8")
		b.fail(t, "judy@example.com", "2001:db8:0:1::1")

		statuses, err := b.lockout.StatusByEmail(b.ctx, "judy@example.com")
		require.NoError(t, err)
		require.Len(t, statuses, 3)
		for _, status := range statuses {
			require.Equal(t, 1, status.Failures)
		}
	})

	t.Run("InvalidInputStoresNothing", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		cases := []struct {
			email, ip, field string
		}{
			{"", "", "email"},
			{"   ", "", "email"},
			{"nul\x00@example.com", "", "email"},
			{"bad\xff@example.com", "", "email"},
			{strings.Repeat("a", 321), "", "email"},
			{"a@example.com", "not-an-ip", "ip"},
			{"a@example.com", "1.2.3.4:80", "ip"},
		}
		for _, tc := range cases {
			_, err := b.lockout.Begin(b.ctx, tc.email, tc.ip)
			require.ErrorIs(t, err, service.ErrInvalidInput, "email %q ip %q", tc.email, tc.ip)
			var inputErr *service.InputError
			require.ErrorAs(t, err, &inputErr)
			require.Equal(t, tc.field, inputErr.Field)
		}
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("UnlockEmailClearsEverySource", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 1})

		b.fail(t, "mallory@example.com", "192.0.2.1")
		b.fail(t, "mallory@example.com", "192.0.2.2")
		b.fail(t, "other@example.com", "192.0.2.1")

		cleared, err := b.lockout.UnlockEmail(b.ctx, "Mallory@Example.com")
		require.NoError(t, err)
		require.Equal(t, int64(2), cleared)

		attempt, err := b.lockout.Begin(b.ctx, "mallory@example.com", "192.0.2.1")
		require.NoError(t, err)
		require.NoError(t, attempt.Succeed(b.ctx))
		_, err = b.lockout.Begin(b.ctx, "other@example.com", "192.0.2.1")
		require.ErrorIs(t, err, service.ErrLocked)
	})

	t.Run("ListLockedPages", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 1})

		for i := range 5 {
			b.fail(t, fmt.Sprintf("user%d@example.com", i), "")
			b.clock.Advance(time.Second)
		}

		now := b.clock.Now()
		first, err := b.queries.AuthAttemptListLocked(b.ctx, dbgen.AuthAttemptListLockedParams{Now: &now, MaxRows: 3})
		require.NoError(t, err)
		require.Len(t, first, 3)
		last := first[len(first)-1]
		second, err := b.queries.AuthAttemptListLocked(b.ctx, dbgen.AuthAttemptListLockedParams{
			Now:              &now,
			AfterLockedUntil: last.LockedUntil,
			AfterID:          &last.ID,
			MaxRows:          3,
		})
		require.NoError(t, err)
		require.Len(t, second, 2)
		require.Equal(t, "user3@example.com", second[0].Email)
	})

	t.Run("PurgeIdleInBatches", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for i := range 7 {
			b.fail(t, fmt.Sprintf("idle%d@example.com", i), "")
		}
		b.clock.Advance(2 * time.Hour)
		b.fail(t, "recent@example.com", "")

		_, err := b.lockout.PurgeIdle(b.ctx, time.Minute, 3)
		require.ErrorIs(t, err, service.ErrInvalidInput)

		deleted, err := b.lockout.PurgeIdle(b.ctx, time.Hour, 3)
		require.NoError(t, err)
		require.Equal(t, int64(7), deleted)
		require.Equal(t, 1, b.rowCount(t))
	})
}

func TestLockoutConcurrency(t *testing.T) {
	t.Parallel()

	t.Run("BurstPassesAtMostThreshold", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 5})

		var verified atomic.Int64
		errs := make(chan error, 200)
		var wg sync.WaitGroup
		for range 200 {
			wg.Go(func() {
				attempt, err := b.lockout.Begin(b.ctx, "target@example.com", "203.0.113.9")
				if errors.Is(err, service.ErrLocked) {
					errs <- nil
					return
				}
				if err != nil {
					errs <- err
					return
				}
				verified.Add(1)
				_, err = attempt.Fail(b.ctx)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		require.Equal(t, int64(5), verified.Load())
		status, err := b.lockout.Status(b.ctx, "target@example.com", "203.0.113.9")
		require.NoError(t, err)
		require.True(t, status.Locked())
		require.Equal(t, 1, status.LockCount)
		require.Equal(t, 0, status.Pending)
	})

	t.Run("ConcurrentFailuresCountExactly", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{MaxFailures: 1000})

		errs := make(chan error, 200)
		var wg sync.WaitGroup
		for range 200 {
			wg.Go(func() {
				attempt, err := b.lockout.Begin(b.ctx, "counted@example.com", "")
				if err != nil {
					errs <- err
					return
				}
				_, err = attempt.Fail(b.ctx)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		status, err := b.lockout.Status(b.ctx, "counted@example.com", "")
		require.NoError(t, err)
		require.Equal(t, 200, status.Failures)
		require.Equal(t, 0, status.Pending)
	})
}

func TestLockoutConfigValidation(t *testing.T) {
	t.Parallel()

	cases := map[string]service.LockoutConfig{
		"MaxFailures":     {MaxFailures: -1},
		"FailureWindow":   {FailureWindow: -time.Second},
		"LockDuration":    {LockDuration: -time.Second},
		"MaxLockDuration": {LockDuration: time.Hour, MaxLockDuration: time.Minute},
		"AttemptTimeout":  {AttemptTimeout: -time.Second},
		"IPv6PrefixLen":   {IPv6PrefixLen: 129},
	}
	for field, config := range cases {
		_, err := service.NewLockout(nil, config)
		require.ErrorIs(t, err, service.ErrInvalidConfig, field)
		require.ErrorContains(t, err, field)
	}
}
