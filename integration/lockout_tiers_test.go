package integration

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

// loginResult is what one simulated login did.
type loginResult struct {
	verified bool
	err      error
}

// login runs Begin, verifies with check (counting the call) and settles the
// attempt as a real login handler would.
func (b *lockoutBundle) login(channel service.Channel, email, ip string, verifications *atomic.Int64, correct bool) loginResult {
	attempt, err := b.lockout.Begin(b.ctx, channel, email, ip)
	if errors.Is(err, service.ErrLocked) {
		return loginResult{}
	}
	if err != nil {
		return loginResult{err: err}
	}

	verifications.Add(1)
	if correct {
		return loginResult{verified: true, err: attempt.Succeed(b.ctx)}
	}
	_, err = attempt.Fail(b.ctx)
	return loginResult{err: err}
}

// loginConcurrently runs n logins at once and returns their results for the
// test goroutine to check.
func (b *lockoutBundle) loginConcurrently(n int, email string, ip func(i int) string, verifications *atomic.Int64, correct bool) []loginResult {
	results := make([]loginResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i] = b.login(service.ChannelPassword, email, ip(i), verifications, correct)
		})
	}
	wg.Wait()
	return results
}

func sameIP(ip string) func(int) string { return func(int) string { return ip } }

// highLimits raises every limit of the password channel so only the counting
// is observed.
func highLimits() service.LockoutConfig {
	high := service.TierPolicy{MaxFailures: 10_000}
	return service.LockoutConfig{Channels: map[service.Channel]service.ChannelPolicy{
		service.ChannelPassword: {AccountSource: high, Account: high, Source: high, HardLockAfter: 10_000},
	}}
}

func TestLockoutConcurrency(t *testing.T) {
	t.Parallel()

	t.Run("BurstOfGuessesVerifiedAtMostThreshold", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, passwordConfig(service.TierPolicy{MaxFailures: 3}))

		var verifications atomic.Int64
		for _, result := range b.loginConcurrently(50, "target@example.com", sameIP("203.0.113.9"), &verifications, false) {
			require.NoError(t, result.err)
		}

		require.LessOrEqual(t, verifications.Load(), int64(3))
		pair := b.pair(t, "target@example.com", "203.0.113.9")
		require.True(t, pair.Locked())
		require.Equal(t, 0, pair.Pending)
		account := b.counter(t, service.TierAccount, service.ChannelPassword, "target@example.com", "")
		require.Equal(t, int(verifications.Load()), account.Failures)

		// After the lock, concurrent correct logins all succeed, even more of
		// them than the threshold, and none is counted as a failure.
		b.clock.Advance(30 * time.Second)
		var correct atomic.Int64
		for _, result := range b.loginConcurrently(5, "target@example.com", sameIP("203.0.113.9"), &correct, true) {
			require.NoError(t, result.err)
			require.True(t, result.verified)
		}
		require.Equal(t, int64(5), correct.Load())
		pair = b.pair(t, "target@example.com", "203.0.113.9")
		require.Equal(t, 0, pair.Failures)
		require.Equal(t, 0, pair.Pending)
		account = b.counter(t, service.TierAccount, service.ChannelPassword, "target@example.com", "")
		require.Equal(t, int(verifications.Load()), account.Failures)
	})

	t.Run("ConcurrentFailuresCountExactly", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, highLimits())

		var verifications atomic.Int64
		b.login(service.ChannelPassword, "counted@example.com", "", &verifications, false)
		for _, result := range b.loginConcurrently(100, "counted@example.com", sameIP(""), &verifications, false) {
			require.NoError(t, result.err)
		}

		require.Equal(t, int64(101), verifications.Load())
		for _, tier := range []service.Tier{service.TierAccountSource, service.TierAccount, service.TierSource} {
			counter := b.counter(t, tier, service.ChannelPassword, "counted@example.com", "")
			require.Equal(t, 101, counter.Failures, tier)
			require.Equal(t, 0, counter.Pending, tier)
		}
	})

	t.Run("ManyAddressesInOnePrefixAreOneSource", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		var verifications atomic.Int64
		for i := range 20 {
			result := b.login(service.ChannelPassword, "victim@example.com", fmt.Sprintf("2001:db8:1:2::%x", i+1), &verifications, false)
			require.NoError(t, result.err)
		}

		require.Equal(t, int64(5), verifications.Load())
		require.True(t, b.pair(t, "victim@example.com", "2001:db8:1:2::").Locked())
		require.Equal(t, 1, b.rowCount(t, "auth_attempts"))
	})
}

func TestLockoutTiers(t *testing.T) {
	t.Parallel()

	t.Run("SuccessElsewhereLeavesVictimAlone", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 3 {
			b.fail(t, "victim@example.com", "198.51.100.66")
		}
		b.succeed(t, "attacker@example.com", "198.51.100.66")

		require.Equal(t, 3, b.pair(t, "victim@example.com", "198.51.100.66").Failures)
		require.Equal(t, 3, b.counter(t, service.TierAccount, service.ChannelPassword, "victim@example.com", "").Failures)
		require.Equal(t, 3, b.counter(t, service.TierSource, service.ChannelPassword, "", "198.51.100.66").Failures)
	})

	t.Run("SourceWideLimitStopsSpraying", func(t *testing.T) {
		t.Parallel()
		var events []service.LockoutEvent
		config := service.LockoutConfig{OnEvent: func(_ context.Context, event service.LockoutEvent) { events = append(events, event) }}
		b := setupLockout(t, config)

		for i := range 30 {
			b.fail(t, fmt.Sprintf("user%d@example.com", i), "203.0.113.50")
		}

		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "fresh@example.com", "203.0.113.50")
		requireLocked(t, err, service.TierSource, time.Minute)
		require.Equal(t, service.EventSourceThrottled, events[len(events)-1].Kind)
		require.Equal(t, netip.MustParsePrefix("203.0.113.50/32"), events[len(events)-1].Source)

		cleared, err := b.lockout.UnlockSource(b.ctx, "203.0.113.50")
		require.NoError(t, err)
		require.Equal(t, int64(1), cleared)
		b.succeed(t, "fresh@example.com", "203.0.113.50")
	})

	t.Run("SourceLockSparesKnownSource", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		b.succeed(t, "owner@example.com", "203.0.113.60")
		for i := range 30 {
			b.fail(t, fmt.Sprintf("user%d@example.com", i), "203.0.113.60")
		}

		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "stranger@example.com", "203.0.113.60")
		requireLocked(t, err, service.TierSource, time.Minute)
		b.succeed(t, "owner@example.com", "203.0.113.60")
	})

	t.Run("AccountLockSparesKnownSourceAndNeverExtends", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		b.succeed(t, "owner@example.com", "192.0.2.200")
		for i := range 20 {
			b.fail(t, "owner@example.com", fmt.Sprintf("198.51.100.%d", i))
		}
		account := b.counter(t, service.TierAccount, service.ChannelPassword, "owner@example.com", "")
		require.True(t, account.Locked())
		lockedUntil := account.LockedUntil

		// An attacker tries once every (lock duration - 1 s) from ever new
		// addresses: each try while the lock lasts is rejected, and the lock
		// ends when it was set to, never later.
		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "owner@example.com", "203.0.113.1")
		require.ErrorIs(t, err, service.ErrLocked)
		b.clock.Advance(59 * time.Second)
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "owner@example.com", "203.0.113.2")
		require.ErrorIs(t, err, service.ErrLocked)
		account = b.counter(t, service.TierAccount, service.ChannelPassword, "owner@example.com", "")
		require.Equal(t, lockedUntil, account.LockedUntil)
		require.Equal(t, 0, account.Failures)
		require.Equal(t, 1, account.LockCount)

		// While the account-wide counter is locked, the owner's usual device
		// still logs in.
		known, err := b.lockout.IsKnownSource(b.ctx, "owner@example.com", "192.0.2.200")
		require.NoError(t, err)
		require.True(t, known)
		b.succeed(t, "owner@example.com", "192.0.2.200")

		b.clock.Advance(time.Second)
		require.False(t, b.counter(t, service.TierAccount, service.ChannelPassword, "owner@example.com", "").Locked())
	})

	t.Run("KnownSourceLogsInDuringAccountLock", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		b.succeed(t, "owner@example.com", "192.0.2.200")
		for i := range 20 {
			b.fail(t, "owner@example.com", fmt.Sprintf("198.51.100.%d", i))
		}

		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "owner@example.com", "203.0.113.1")
		requireLocked(t, err, service.TierAccount, time.Minute)
		b.succeed(t, "owner@example.com", "192.0.2.200")

		// The success does not reset the account-wide counter.
		require.True(t, b.counter(t, service.TierAccount, service.ChannelPassword, "owner@example.com", "").Locked())
	})

	t.Run("UnknownEmailCountedLikeRealOne", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		// The lockout never learns whether an account exists: a real and an
		// unknown email go through the same calls and end in the same state.
		var errs [2]error
		for i, email := range []string{"real@example.com", "nobody@example.com"} {
			for range 5 {
				b.fail(t, email, "192.0.2.7")
			}
			_, errs[i] = b.lockout.Begin(b.ctx, service.ChannelPassword, email, "192.0.2.7")
		}
		require.Equal(t, errs[0], errs[1])

		real := b.pair(t, "real@example.com", "192.0.2.7")
		unknown := b.pair(t, "nobody@example.com", "192.0.2.7")
		real.Email, unknown.Email = "", ""
		real.LastAttemptAt, unknown.LastAttemptAt = time.Time{}, time.Time{}
		require.Equal(t, real, unknown)
	})

	t.Run("CorrectPasswordDuringLockNotVerified", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 5 {
			b.fail(t, "alice@example.com", "192.0.2.8")
		}
		before := b.counter(t, service.TierAccount, service.ChannelPassword, "alice@example.com", "")

		var verifications atomic.Int64
		result := b.login(service.ChannelPassword, "alice@example.com", "192.0.2.8", &verifications, true)
		require.NoError(t, result.err)
		require.False(t, result.verified)
		require.Equal(t, int64(0), verifications.Load())
		require.Equal(t, before, b.counter(t, service.TierAccount, service.ChannelPassword, "alice@example.com", ""))
	})

	t.Run("PasswordLockAppliesToCodes", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 5 {
			b.fail(t, "bob@example.com", "192.0.2.9")
		}
		for _, channel := range []service.Channel{service.ChannelOneTimeCode, service.ChannelRecoveryCode} {
			_, err := b.lockout.Begin(b.ctx, channel, "bob@example.com", "192.0.2.9")
			requireLocked(t, err, service.TierAccountSource, 30*time.Second)
		}
	})

	t.Run("WrongCodesSpareThePasswordBudget", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "carol@example.com", "192.0.2.10")
		require.NoError(t, err)
		require.NoError(t, attempt.SucceedFirstFactor(b.ctx))

		var verifications atomic.Int64
		for range 10 {
			result := b.login(service.ChannelOneTimeCode, "carol@example.com", "192.0.2.10", &verifications, false)
			require.NoError(t, result.err)
		}

		require.Equal(t, int64(5), verifications.Load())
		require.Equal(t, 0, b.pair(t, "carol@example.com", "192.0.2.10").Failures)
		require.Equal(t, 0, b.counter(t, service.TierAccount, service.ChannelPassword, "carol@example.com", "").Failures)
		require.Equal(t, 5, b.counter(t, service.TierAccount, service.ChannelOneTimeCode, "carol@example.com", "").ConsecutiveFailures)

		// The first factor alone does not make the source known.
		known, err := b.lockout.IsKnownSource(b.ctx, "carol@example.com", "192.0.2.10")
		require.NoError(t, err)
		require.False(t, known)

		// A completed login ends the streaks of every channel.
		b.clock.Advance(time.Hour)
		b.succeed(t, "carol@example.com", "192.0.2.10")
		require.Equal(t, 0, b.counter(t, service.TierAccount, service.ChannelOneTimeCode, "carol@example.com", "").ConsecutiveFailures)
	})

	t.Run("CancelledAttemptNotCounted", func(t *testing.T) {
		t.Parallel()
		b := setupLockout(t, service.LockoutConfig{})

		for range 2 {
			b.fail(t, "disabled@example.com", "192.0.2.11")
		}
		for range 10 {
			attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "disabled@example.com", "192.0.2.11")
			require.NoError(t, err)
			require.NoError(t, attempt.Cancel(b.ctx))
		}

		pair := b.pair(t, "disabled@example.com", "192.0.2.11")
		require.Equal(t, 2, pair.Failures)
		require.Equal(t, 0, pair.Pending)
		require.Equal(t, 2, b.counter(t, service.TierAccount, service.ChannelPassword, "disabled@example.com", "").ConsecutiveFailures)
	})

	t.Run("HardLockOutlivesEveryDuration", func(t *testing.T) {
		t.Parallel()
		var events []service.LockoutEvent
		config := service.LockoutConfig{OnEvent: func(_ context.Context, event service.LockoutEvent) { events = append(events, event) }}
		b := setupLockout(t, config)
		b.succeed(t, "target@example.com", "192.0.2.250")

		// 100 consecutive failures from rotating addresses, waiting out
		// every lock on the way.
		failures := 0
		for i := 0; failures < 100; i++ {
			attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "target@example.com", fmt.Sprintf("10.%d.%d.1", i/250, i%250))
			if errors.Is(err, service.ErrLocked) {
				b.clock.Advance(time.Hour)
				continue
			}
			require.NoError(t, err)
			result, err := attempt.Fail(b.ctx)
			require.NoError(t, err)
			failures++
			require.Equal(t, failures == 100, result.HardLocked, "failure %d", failures)
		}
		require.Equal(t, service.EventHardLocked, events[len(events)-1].Kind)

		b.clock.Advance(30 * 24 * time.Hour)
		_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, "target@example.com", "203.0.113.77")
		requireLocked(t, err, service.TierHard, time.Hour)
		_, err = b.lockout.PurgeIdle(b.ctx, 24*time.Hour, 100)
		require.NoError(t, err)
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "target@example.com", "203.0.113.77")
		requireLocked(t, err, service.TierHard, time.Hour)

		// The hard lock applies to the owner's known device too, because an
		// attacker sharing that address would count as known.
		_, err = b.lockout.Begin(b.ctx, service.ChannelPassword, "target@example.com", "192.0.2.250")
		requireLocked(t, err, service.TierHard, time.Hour)

		_, err = b.lockout.UnlockAccount(b.ctx, "target@example.com")
		require.NoError(t, err)
		b.succeed(t, "target@example.com", "203.0.113.77")
	})
}

func TestLockoutClockIndependence(t *testing.T) {
	t.Parallel()

	t.Run("InstancesAgree", func(t *testing.T) {
		t.Parallel()
		db := setupLockout(t, service.LockoutConfig{})
		config := passwordConfig(service.TierPolicy{MaxFailures: 3})
		first, err := service.NewLockout(db.pool, config)
		require.NoError(t, err)
		second, err := service.NewLockout(db.pool, config)
		require.NoError(t, err)

		for i := range 3 {
			instance := []*service.Lockout{first, second}[i%2]
			attempt, err := instance.Begin(db.ctx, service.ChannelPassword, "shared@example.com", "192.0.2.30")
			require.NoError(t, err)
			_, err = attempt.Fail(db.ctx)
			require.NoError(t, err)
		}

		_, errFirst := first.Begin(db.ctx, service.ChannelPassword, "shared@example.com", "192.0.2.30")
		_, errSecond := second.Begin(db.ctx, service.ChannelPassword, "shared@example.com", "192.0.2.30")
		var lockedFirst, lockedSecond *service.LockedError
		require.ErrorAs(t, errFirst, &lockedFirst)
		require.ErrorAs(t, errSecond, &lockedSecond)
		require.Equal(t, lockedFirst.Until, lockedSecond.Until)
	})

	// The lockout never reads the application clock, so instances whose
	// clocks disagree make the same decisions. Go cannot fake time.Now per
	// instance, so this test checks the source instead.
	t.Run("ServiceNeverReadsApplicationClock", func(t *testing.T) {
		t.Parallel()

		files, err := filepath.Glob("../service/lockout*.go")
		require.NoError(t, err)
		require.NotEmpty(t, files)
		fset := token.NewFileSet()
		for _, file := range files {
			if filepath.Ext(file) != ".go" || strings.HasSuffix(file, "_test.go") {
				continue
			}
			parsed, err := parser.ParseFile(fset, file, nil, 0)
			require.NoError(t, err)
			ast.Inspect(parsed, func(node ast.Node) bool {
				selector, ok := node.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				pkg, ok := selector.X.(*ast.Ident)
				if ok && pkg.Name == "time" {
					switch selector.Sel.Name {
					case "Now", "Since", "Until":
						t.Errorf("%s calls time.%s; decisions must use the database clock", fset.Position(selector.Pos()), selector.Sel.Name)
					}
				}
				return true
			})
		}
	})
}
