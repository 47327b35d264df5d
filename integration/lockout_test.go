package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

type lockoutBundle struct {
	ctx     context.Context
	pool    *pgxpool.Pool
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

	return &lockoutBundle{ctx: t.Context(), pool: db.Pool, clock: clock, lockout: lockout}
}

// passwordConfig sets the account-and-source policy of password logins and
// leaves everything else at its default.
func passwordConfig(pair service.TierPolicy) service.LockoutConfig {
	return service.LockoutConfig{Channels: map[service.Channel]service.ChannelPolicy{
		service.ChannelPassword: {AccountSource: pair},
	}}
}

// failOn runs one complete failed login and returns Fail's result.
func (b *lockoutBundle) failOn(t *testing.T, channel service.Channel, email, ip string) service.FailResult {
	t.Helper()

	attempt, err := b.lockout.Begin(b.ctx, channel, email, ip)
	require.NoError(t, err)
	result, err := attempt.Fail(b.ctx)
	require.NoError(t, err)
	return result
}

func (b *lockoutBundle) fail(t *testing.T, email, ip string) service.FailResult {
	t.Helper()
	return b.failOn(t, service.ChannelPassword, email, ip)
}

func (b *lockoutBundle) succeed(t *testing.T, email, ip string) {
	t.Helper()

	attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, email, ip)
	require.NoError(t, err)
	require.NoError(t, attempt.Succeed(b.ctx))
}

// counter returns the counter of tier for email (account tiers) or ip
// (source tiers) on channel, or a zero status when it does not exist.
func (b *lockoutBundle) counter(t *testing.T, tier service.Tier, channel service.Channel, email, ip string) service.CounterStatus {
	t.Helper()

	var statuses []service.CounterStatus
	var err error
	if tier == service.TierSource {
		statuses, err = b.lockout.SourceStatus(b.ctx, ip)
	} else {
		statuses, err = b.lockout.AccountStatus(b.ctx, email)
	}
	require.NoError(t, err)

	var source netip.Prefix
	if tier != service.TierAccount && ip != "" {
		prefix, err := service.NormalizeSource(ip, 64)
		require.NoError(t, err)
		source = *prefix
	}
	for _, status := range statuses {
		if status.Tier == tier && status.Channel == channel && status.Source == source {
			return status
		}
	}
	return service.CounterStatus{}
}

func (b *lockoutBundle) pair(t *testing.T, email, ip string) service.CounterStatus {
	t.Helper()
	return b.counter(t, service.TierAccountSource, service.ChannelPassword, email, ip)
}

func (b *lockoutBundle) rowCount(t *testing.T, table string) int {
	t.Helper()

	var count int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM "+table).Scan(&count))
	return count
}

func requireLocked(t *testing.T, err error, tier service.Tier, wantRetryAfter time.Duration) {
	t.Helper()

	require.ErrorIs(t, err, service.ErrLocked)
	var locked *service.LockedError
	require.ErrorAs(t, err, &locked)
	require.Equal(t, tier, locked.Tier)
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

		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "alice@example.com", "203.0.113.7")
		requireLocked(t, err, service.TierAccountSource, 30*time.Second)

		// Attempts during the lock are not counted and do not extend it.
		b.clock.Advance(29 * time.Second)
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "alice@example.com", "203.0.113.7")
		requireLocked(t, err, service.TierAccountSource, time.Second)

		pair := b.pair(t, "alice@example.com", "203.0.113.7")
		require.Equal(t, 0, pair.Failures)
		require.Equal(t, 0, pair.Pending)
		require.Equal(t, 1, pair.LockCount)
		account := b.counter(t, service.TierAccount, service.ChannelPassword, "alice@example.com", "")
		require.Equal(t, 5, account.Failures)

		b.clock.Advance(time.Second)
		b.succeed(t, "alice@example.com", "203.0.113.7")
	})

	t.Run("LockDurationDoublesUpToCap", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{
			MaxFailures:     2,
			LockDuration:    10 * time.Second,
			MaxLockDuration: 35 * time.Second,
		}))

		for _, want := range []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second} {
			b.fail(t, "bob@example.com", "")
			result := b.fail(t, "bob@example.com", "")
			require.WithinDuration(t, b.clock.Now().Add(want), result.LockedUntil, 0)

			b.clock.Advance(want)
		}
	})

	t.Run("ForgetsFailuresAfterDay", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 4 {
			b.fail(t, "carol@example.com", "198.51.100.1")
		}
		b.clock.Advance(24*time.Hour - time.Second)
		require.True(t, b.fail(t, "carol@example.com", "198.51.100.1").Locked())

		b.clock.Advance(30*time.Second + 24*time.Hour)
		require.Equal(t, 1, b.fail(t, "carol@example.com", "198.51.100.1").Failures)
	})

	t.Run("ForgetsFailuresAfterConfiguredWindow", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{FailureWindow: 15 * time.Minute}))

		for range 4 {
			b.fail(t, "carol@example.com", "198.51.100.1")
		}
		b.clock.Advance(15 * time.Minute)

		require.Equal(t, 1, b.fail(t, "carol@example.com", "198.51.100.1").Failures)
	})

	t.Run("KeepsDoublingAcrossLocksLongerThanWindow", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{
			MaxFailures:     1,
			FailureWindow:   time.Minute,
			LockDuration:    time.Hour,
			MaxLockDuration: 4 * time.Hour,
		}))

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
		attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "erin@example.com", "192.0.2.10")
		require.NoError(t, err)
		require.NoError(t, attempt.Succeed(b.ctx))
		require.ErrorIs(t, attempt.Succeed(b.ctx), service.ErrAlreadySettled)
		_, err = attempt.Fail(b.ctx)
		require.ErrorIs(t, err, service.ErrAlreadySettled)

		pair := b.pair(t, "erin@example.com", "192.0.2.10")
		require.Equal(t, 0, pair.Failures)
		require.Equal(t, 0, pair.Pending)
		require.False(t, pair.Locked())

		// The account-wide counter is not reset by a success.
		account := b.counter(t, service.TierAccount, service.ChannelPassword, "erin@example.com", "")
		require.Equal(t, 4, account.Failures)
		require.Equal(t, 0, account.ConsecutiveFailures)
	})

	t.Run("UnsettledAttemptCountsAsFailure", func(t *testing.T) {
		t.Parallel()
		var events []service.LockoutEvent
		config := passwordConfig(service.TierPolicy{MaxFailures: 2})
		config.InFlightWait = -1
		config.OnEvent = func(_ context.Context, event service.LockoutEvent) { events = append(events, event) }
		b := setupLockout(t, config)

		// Two callers crash after Begin: the budget is taken while they
		// might still settle, then they count as failures and lock the key.
		for range 2 {
			_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "frank@example.com", "")
			require.NoError(t, err)
		}
		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "frank@example.com", "")
		requireLocked(t, err, service.TierInFlight, time.Second)

		b.clock.Advance(time.Minute)
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "frank@example.com", "")
		requireLocked(t, err, service.TierAccountSource, 30*time.Second)

		pair := b.pair(t, "frank@example.com", "")
		require.Equal(t, 1, pair.LockCount)
		require.Equal(t, 0, pair.Pending)
		account := b.counter(t, service.TierAccount, service.ChannelPassword, "frank@example.com", "")
		require.Equal(t, 2, account.Failures)
		require.Equal(t, 2, account.ConsecutiveFailures)
		require.Len(t, events, 1)
		require.Equal(t, service.EventLocked, events[0].Kind)
		require.Equal(t, service.TierAccountSource, events[0].Tier)
	})

	t.Run("AbandonedAttemptCountedDespiteTraffic", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		// One caller crashes after Begin; others keep logging in from the
		// same source every 20 seconds.
		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "gina@example.com", "192.0.2.20")
		require.NoError(t, err)
		for range 3 {
			b.clock.Advance(20 * time.Second)
			b.succeed(t, "gina@example.com", "192.0.2.20")
		}

		account := b.counter(t, service.TierAccount, service.ChannelPassword, "gina@example.com", "")
		require.Equal(t, 1, account.Failures)
		require.Equal(t, 0, account.Pending)
	})

	t.Run("UnlockDuringAttemptCountsNothingLater", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		first, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "ivy@example.com", "192.0.2.22")
		require.NoError(t, err)
		_, err = b.lockout.UnlockAccount(b.ctx, "ivy@example.com")
		require.NoError(t, err)
		_, err = first.Fail(b.ctx)
		require.NoError(t, err)

		// Two live attempts a while later must not be taken for abandoned.
		b.clock.Advance(2 * time.Minute)
		for range 2 {
			attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "ivy@example.com", "192.0.2.22")
			require.NoError(t, err)
			defer func() { require.NoError(t, attempt.Cancel(b.ctx)) }()
		}
		pair := b.pair(t, "ivy@example.com", "192.0.2.22")
		require.Equal(t, 0, pair.Failures)
		require.Equal(t, 2, pair.Pending)
	})

	t.Run("SuccessesDoNotKeepFailuresAlive", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		b.succeed(t, "hank@example.com", "192.0.2.21")
		for i := range 4 {
			b.fail(t, "hank@example.com", fmt.Sprintf("198.51.100.%d", i))
		}
		for range 24 {
			b.clock.Advance(time.Hour)
			b.succeed(t, "hank@example.com", "192.0.2.21")
		}

		b.fail(t, "hank@example.com", "198.51.100.99")
		require.Equal(t, 1, b.counter(t, service.TierAccount, service.ChannelPassword, "hank@example.com", "").Failures)
	})

	t.Run("NoIPIsOneBucket", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 10}))

		for range 9 {
			b.fail(t, "grace@example.com", "")
		}
		require.Equal(t, 9, b.pair(t, "grace@example.com", "").Failures)

		require.True(t, b.fail(t, "grace@example.com", "").Locked())
		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "grace@example.com", "")
		requireLocked(t, err, service.TierAccountSource, 30*time.Second)
		require.Equal(t, 1, b.rowCount(t, "auth_attempts"))
		require.Equal(t, 1, b.rowCount(t, "auth_source_counters"))
	})

	t.Run("EmailSpellingsShareCounter", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 10}))

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

		require.Equal(t, 3, b.pair(t, "alice@ex.com", "").Failures)
		require.Equal(t, 2, b.pair(t, "JOS\u00c9@example.com", "").Failures)
		require.Equal(t, 2, b.rowCount(t, "auth_attempts"))
	})

	t.Run("SourcesNormalized", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 100}))

		for _, ip := range []string{"1.2.3.4", "::ffff:1.2.3.4", "::ffff:102:304"} {
			b.fail(t, "ivan@example.com", ip)
		}
		for i := range 5 {
			b.fail(t, "ivan@example.com", fmt.Sprintf("2001:db8:0:0:%x::1", i+1))
		}
		b.fail(t, "ivan@example.com", "2001:db8::1")
		b.fail(t, "ivan@example.com", "2001:0db8:0:0:0:0:0:1")

		statuses, err := b.lockout.AccountStatus(b.ctx, "ivan@example.com")
		require.NoError(t, err)
		bySource := map[netip.Prefix]int{}
		for _, status := range statuses {
			if status.Tier == service.TierAccountSource {
				bySource[status.Source] = status.Failures
			}
		}
		require.Equal(t, map[netip.Prefix]int{
			netip.MustParsePrefix("1.2.3.4/32"):    3,
			netip.MustParsePrefix("2001:db8::/64"): 7,
		}, bySource)
	})

	t.Run("SourcesAreSeparate", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 2}))

		b.fail(t, "judy@example.com", "::ffff:1.2.3.4")
		b.fail(t, "judy@example.com", "::ffff:5.6.7.8")
		b.fail(t, "judy@example.com", "2001:db8:0:1::1")

		for _, ip := range []string{"1.2.3.4", "5.6.7.8", "2001:db8:0:1::"} {
			require.Equal(t, 1, b.pair(t, "judy@example.com", ip).Failures, ip)
		}
	})

	t.Run("InvalidInputStoresNothing", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		cases := []struct {
			channel          service.Channel
			email, ip, field string
		}{
			{service.ChannelPassword, "", "", "email"},
			{service.ChannelPassword, "   ", "", "email"},
			{service.ChannelPassword, "nul\x00@example.com", "", "email"},
			{service.ChannelPassword, "bad\xff@example.com", "", "email"},
			{service.ChannelPassword, strings.Repeat("a", 321), "", "email"},
			{service.ChannelPassword, strings.Repeat("a", 10<<20), "", "email"},
			{service.ChannelPassword, "a@example.com", "not-an-ip", "ip"},
			{service.ChannelPassword, "a@example.com", "1.2.3.4:80", "ip"},
			{"sms", "a@example.com", "", "channel"},
		}
		for _, tc := range cases {
			_, err := b.lockout.Begin(b.ctx, tc.channel, tc.email, tc.ip)
			require.ErrorIs(t, err, service.ErrInvalidInput, "channel %q ip %q", tc.channel, tc.ip)
			var inputErr *service.InputError
			require.ErrorAs(t, err, &inputErr)
			require.Equal(t, tc.field, inputErr.Field)
		}
		for _, table := range []string{"auth_attempts", "auth_account_counters", "auth_source_counters"} {
			require.Equal(t, 0, b.rowCount(t, table), table)
		}
	})

	t.Run("UnlockAccountClearsEverySource", func(t *testing.T) {
		t.Parallel()
		var events []service.LockoutEvent
		config := passwordConfig(service.TierPolicy{MaxFailures: 1})
		config.OnEvent = func(_ context.Context, event service.LockoutEvent) { events = append(events, event) }
		b := setupLockout(t, config)

		b.fail(t, "mallory@example.com", "192.0.2.1")
		b.fail(t, "mallory@example.com", "192.0.2.2")
		b.fail(t, "other@example.com", "192.0.2.1")
		require.Len(t, events, 3)
		require.Equal(t, service.EventLocked, events[0].Kind)
		require.Equal(t, service.TierAccountSource, events[0].Tier)
		require.Equal(t, "mallory@example.com", events[0].Email)

		cleared, err := b.lockout.UnlockAccount(b.ctx, "Mallory@Example.com")
		require.NoError(t, err)
		require.Equal(t, int64(3), cleared) // one account-wide and two source counters
		require.Equal(t, service.EventUnlocked, events[3].Kind)

		b.succeed(t, "mallory@example.com", "192.0.2.1")
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "other@example.com", "192.0.2.1")
		require.ErrorIs(t, err, service.ErrLocked)
	})

	t.Run("ListLocksPages", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 1}))

		for i := range 5 {
			b.fail(t, fmt.Sprintf("user%d@example.com", i), "")
		}

		first, err := b.lockout.ListLocks(b.ctx, "", 3)
		require.NoError(t, err)
		require.Len(t, first.Locks, 3)
		require.NotEmpty(t, first.Next)
		second, err := b.lockout.ListLocks(b.ctx, first.Next, 3)
		require.NoError(t, err)
		require.Len(t, second.Locks, 2)
		require.Empty(t, second.Next)
		require.Equal(t, "user3@example.com", second.Locks[0].Email)
		require.Equal(t, service.TierAccountSource, second.Locks[0].Tier)

		_, err = b.lockout.ListLocks(b.ctx, "garbage", 3)
		require.ErrorIs(t, err, service.ErrInvalidInput)
	})

	t.Run("PurgeIdleInBatches", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for i := range 7 {
			b.fail(t, fmt.Sprintf("idle%d@example.com", i), fmt.Sprintf("192.0.2.%d", i))
		}
		b.succeed(t, "idle0@example.com", "192.0.2.0")
		b.clock.Advance(48 * time.Hour)
		b.fail(t, "recent@example.com", "")

		_, err := b.lockout.PurgeIdle(b.ctx, time.Hour, 3)
		require.ErrorIs(t, err, service.ErrInvalidInput)

		deleted, err := b.lockout.PurgeIdle(b.ctx, 24*time.Hour, 3)
		require.NoError(t, err)
		// Seven account-and-source and seven source counters, and the one
		// account-wide counter whose streak a success ended. The other six
		// account-wide counters keep their streak toward the hard lock.
		require.Equal(t, int64(15), deleted)
		require.Equal(t, 1, b.rowCount(t, "auth_attempts"))
		require.Equal(t, 7, b.rowCount(t, "auth_account_counters"))
		require.Equal(t, 1, b.rowCount(t, "auth_known_sources"))

		// After StreakRetention the streaks go too, and so does the known
		// source after KnownSourceWindow; both default to 90 days.
		b.clock.Advance(90 * 24 * time.Hour)
		deleted, err = b.lockout.PurgeIdle(b.ctx, 24*time.Hour, 3)
		require.NoError(t, err)
		// Six streaks, the recent key's two other counters and the known
		// source. The recent key's streak is exactly 90 days old and stays.
		require.Equal(t, int64(9), deleted)
		require.Equal(t, 1, b.rowCount(t, "auth_account_counters"))
		require.Equal(t, 0, b.rowCount(t, "auth_known_sources"))
	})
}

func TestLockoutConfigValidation(t *testing.T) {
	t.Parallel()

	cases := map[string]service.LockoutConfig{
		"Channels[password].AccountSource.MaxFailures":     passwordConfig(service.TierPolicy{MaxFailures: -1}),
		"Channels[password].AccountSource.FailureWindow":   passwordConfig(service.TierPolicy{FailureWindow: -time.Second}),
		"Channels[password].AccountSource.LockDuration":    passwordConfig(service.TierPolicy{LockDuration: -time.Second}),
		"Channels[password].AccountSource.MaxLockDuration": passwordConfig(service.TierPolicy{LockDuration: time.Hour, MaxLockDuration: time.Minute}),
		"Channels[password].HardLockAfter": {Channels: map[service.Channel]service.ChannelPolicy{
			service.ChannelPassword: {HardLockAfter: -5},
		}},
		"Channels":          {Channels: map[service.Channel]service.ChannelPolicy{"SMS code": {}}},
		"AttemptTimeout":    {AttemptTimeout: -time.Second},
		"KnownSourceWindow": {KnownSourceWindow: -time.Second},
		"IPv6PrefixLen":     {IPv6PrefixLen: 129},
	}
	for field, config := range cases {
		_, err := service.NewLockout(nil, config)
		require.ErrorIs(t, err, service.ErrInvalidConfig, field)
		require.ErrorContains(t, err, field)
	}
}
