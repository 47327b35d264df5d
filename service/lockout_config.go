package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"time"
)

// Channel names what a login attempt verifies. Each channel has its own
// counters and policy, so guessing one-time codes never spends the password
// budget, but a lock on an account applies to every channel.
type Channel string

// The built-in channels. Any other name of 1 to 32 lowercase letters,
// digits or underscores, starting with a letter, may be configured in
// LockoutConfig.Channels.
const (
	ChannelPassword     Channel = "password"
	ChannelOneTimeCode  Channel = "one_time_code"
	ChannelRecoveryCode Channel = "recovery_code"
)

var channelPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// Tier names one of the lockout counters.
type Tier string

const (
	// TierAccountSource counts one account from one client source.
	TierAccountSource Tier = "account_source"
	// TierAccount counts one account from all sources. Its lock spares
	// sources the account logged in from recently.
	TierAccount Tier = "account"
	// TierSource counts one source against all accounts, against password
	// spraying and credential stuffing.
	TierSource Tier = "source"
	// TierHard is the hard lock after too many consecutive failures on one
	// account. Only an explicit unlock ends it.
	TierHard Tier = "hard"
	// TierInFlight is not a lock: attempts still in flight fill a counter's
	// remaining budget, and the key is decided once they settle.
	TierInFlight Tier = "in_flight"
)

// TierPolicy is the policy of one counter. A zero field takes the default of
// its channel and tier.
type TierPolicy struct {
	// MaxFailures is how many failures the counter allows before it locks.
	MaxFailures int
	// FailureWindow is how long failures are remembered: once the last
	// failure and the end of the last lock are both older than this, the
	// counter starts afresh, lock history included.
	FailureWindow time.Duration
	// LockDuration is the length of the first lock. Each consecutive lock
	// doubles it, up to MaxLockDuration.
	LockDuration time.Duration
	// MaxLockDuration caps the doubling.
	MaxLockDuration time.Duration
}

// ChannelPolicy is the lockout policy of one channel.
type ChannelPolicy struct {
	// AccountSource limits one account from one source. A success from that
	// source resets it.
	AccountSource TierPolicy
	// Account limits one account from all sources together. A success does
	// not reset it, and its lock does not apply to known sources.
	Account TierPolicy
	// Source limits one source against all accounts. A success does not
	// reset it, and its lock does not apply to a source known to the
	// account being tried.
	Source TierPolicy
	// HardLockAfter is how many consecutive failures on one account, from
	// any source, engage the hard lock. A completed login (Succeed) ends the
	// streaks of all channels; SucceedFirstFactor ends only its own
	// channel's, so knowing the password does not reset the code streak.
	HardLockAfter int
}

// DefaultPasswordPolicy returns the default policy of the password channel,
// and of channels configured without one:
//   - account and source: 5 failures, then 30 s doubling to 1 h, forgotten
//     24 h after the last failure;
//   - account: 20 failures, then 60 s doubling to 1 h, forgotten after 24 h;
//   - source: 30 failures in an hour, then 60 s doubling to 1 h;
//   - hard lock after 100 consecutive failures, the limit NIST SP 800-63B
//     (section 5.2.2) sets for consecutive failed attempts.
func DefaultPasswordPolicy() ChannelPolicy {
	return ChannelPolicy{
		AccountSource: TierPolicy{MaxFailures: 5, FailureWindow: 24 * time.Hour, LockDuration: 30 * time.Second, MaxLockDuration: time.Hour},
		Account:       TierPolicy{MaxFailures: 20, FailureWindow: 24 * time.Hour, LockDuration: time.Minute, MaxLockDuration: time.Hour},
		Source:        TierPolicy{MaxFailures: 30, FailureWindow: time.Hour, LockDuration: time.Minute, MaxLockDuration: time.Hour},
		HardLockAfter: 100,
	}
}

// DefaultCodePolicy returns the default policy of the one-time code and
// recovery code channels: 5 failures per account before a lock, and a hard
// lock after 10 consecutive failures. It is stricter than the password
// policy because a code is only requested once the password is right, and
// a short code falls to fewer guesses.
func DefaultCodePolicy() ChannelPolicy {
	policy := DefaultPasswordPolicy()
	policy.Account.MaxFailures = 5
	policy.HardLockAfter = 10
	return policy
}

// LockoutConfig is the policy of a [Lockout]. A zero field takes its
// default.
type LockoutConfig struct {
	// Channels sets the policy per channel. The built-in channels are always
	// present: a listed one replaces its default field by field (zero fields
	// keep the default), and a new channel starts from DefaultPasswordPolicy.
	// Defaults to DefaultPasswordPolicy for ChannelPassword and
	// DefaultCodePolicy for ChannelOneTimeCode and ChannelRecoveryCode.
	Channels map[Channel]ChannelPolicy

	// KnownSourceWindow is how long after a successful login a source stays
	// known to the account, which exempts it, for that account, from the
	// account-wide and source-wide locks. The hard lock applies to known
	// sources too, because an attacker sharing the owner's address counts
	// as known. Defaults to 90 days.
	KnownSourceWindow time.Duration

	// AttemptTimeout is how long an attempt may stay unsettled. Once the
	// oldest unsettled attempt of a counter is this old, Begin counts the
	// counter's unsettled attempts as failures, because their callers
	// crashed or lost their connection between Begin and settling. Defaults
	// to 1 minute.
	AttemptTimeout time.Duration

	// StreakRetention is how long PurgeIdle keeps an account's unfinished
	// streak toward the hard lock after its last failure. Until then a
	// streak is never forgotten; purging it afterwards keeps the table from
	// growing with every address a credential-stuffing list tried, at the
	// cost of an attacker who waits that long starting afresh. Defaults to
	// 90 days.
	StreakRetention time.Duration

	// InFlightWait is how long Begin waits while attempts still in flight
	// fill a counter's budget, asking the database again every few
	// milliseconds, before it gives up with a LockedError of TierInFlight.
	// Waiting lets concurrent correct logins through without letting more
	// than MaxFailures guesses reach verification. Defaults to 3 seconds.
	// A negative value disables waiting.
	InFlightWait time.Duration

	// IPv6PrefixLen is the prefix length IPv6 clients are counted by.
	// Defaults to 64. Must be between 1 and 128.
	IPv6PrefixLen int

	// FailOpen admits logins without a lockout check while the database is
	// unavailable: Begin then returns an Attempt whose Unchecked method
	// reports true and logs the error. By default (false) Begin fails
	// closed with an error matching ErrUnavailable, and the login should
	// be refused with 503. Failing open keeps users logging in during an
	// outage at the price of unlimited guesses for its length.
	FailOpen bool

	// Now, when set, supplies the time of every decision instead of the
	// database clock. Tests use it to move time without sleeping; leave it
	// nil in production so every instance decides by one clock.
	Now func() time.Time

	// Logger receives lock events and errors. Defaults to discarding them.
	Logger *slog.Logger

	// OnEvent, when set, is called after a lock, a hard lock, a source
	// throttle or an unlock is stored, on the goroutine of the call that
	// caused it, so it should return quickly.
	OnEvent func(ctx context.Context, event LockoutEvent)
}

func (c LockoutConfig) withDefaults() LockoutConfig {
	defaults := map[Channel]ChannelPolicy{
		ChannelPassword:     DefaultPasswordPolicy(),
		ChannelOneTimeCode:  DefaultCodePolicy(),
		ChannelRecoveryCode: DefaultCodePolicy(),
	}
	channels := maps.Clone(defaults)
	for channel, policy := range c.Channels {
		base, ok := defaults[channel]
		if !ok {
			base = DefaultPasswordPolicy()
		}
		channels[channel] = policy.withDefaults(base)
	}
	c.Channels = channels

	if c.KnownSourceWindow == 0 {
		c.KnownSourceWindow = 90 * 24 * time.Hour
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = time.Minute
	}
	if c.StreakRetention == 0 {
		c.StreakRetention = 90 * 24 * time.Hour
	}
	if c.InFlightWait == 0 {
		c.InFlightWait = 3 * time.Second
	}
	if c.IPv6PrefixLen == 0 {
		c.IPv6PrefixLen = 64
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (p ChannelPolicy) withDefaults(base ChannelPolicy) ChannelPolicy {
	p.AccountSource = p.AccountSource.withDefaults(base.AccountSource)
	p.Account = p.Account.withDefaults(base.Account)
	p.Source = p.Source.withDefaults(base.Source)
	if p.HardLockAfter == 0 {
		p.HardLockAfter = base.HardLockAfter
	}
	return p
}

func (p TierPolicy) withDefaults(base TierPolicy) TierPolicy {
	if p.MaxFailures == 0 {
		p.MaxFailures = base.MaxFailures
	}
	if p.FailureWindow == 0 {
		p.FailureWindow = base.FailureWindow
	}
	if p.LockDuration == 0 {
		p.LockDuration = base.LockDuration
	}
	if p.MaxLockDuration == 0 {
		p.MaxLockDuration = max(base.MaxLockDuration, p.LockDuration)
	}
	return p
}

func (c LockoutConfig) validate() error {
	for _, channel := range slices.Sorted(maps.Keys(c.Channels)) {
		if !channelPattern.MatchString(string(channel)) {
			return invalidConfig("Channels", "contains %q; a channel name is 1 to 32 lowercase letters, digits or underscores starting with a letter", channel)
		}
		if err := c.Channels[channel].validate(fmt.Sprintf("Channels[%s]", channel)); err != nil {
			return err
		}
	}

	switch {
	case c.KnownSourceWindow < 0 || c.KnownSourceWindow > maxPolicyDuration:
		return invalidConfig("KnownSourceWindow", "is %s; use a positive duration up to 10 years", c.KnownSourceWindow)
	case c.StreakRetention < 0 || c.StreakRetention > maxPolicyDuration:
		return invalidConfig("StreakRetention", "is %s; use a positive duration up to 10 years", c.StreakRetention)
	case c.AttemptTimeout < time.Millisecond || c.AttemptTimeout > maxPolicyDuration:
		return invalidConfig("AttemptTimeout", "is %s; use a duration from 1ms to 10 years", c.AttemptTimeout)
	case c.IPv6PrefixLen < 1 || c.IPv6PrefixLen > 128:
		return invalidConfig("IPv6PrefixLen", "is %d; use a value from 1 to 128", c.IPv6PrefixLen)
	}
	return nil
}

func (p ChannelPolicy) validate(name string) error {
	tiers := []struct {
		field  string
		policy TierPolicy
	}{
		{"AccountSource", p.AccountSource},
		{"Account", p.Account},
		{"Source", p.Source},
	}
	for _, tier := range tiers {
		if err := tier.policy.validate(name + "." + tier.field); err != nil {
			return err
		}
	}
	if p.HardLockAfter < 1 || p.HardLockAfter > 1_000_000 {
		return invalidConfig(name+".HardLockAfter", "is %d; use a value from 1 to 1000000", p.HardLockAfter)
	}
	return nil
}

// maxPolicyDuration bounds every duration of a policy, far above any
// sensible value, so that adding one to a timestamp cannot overflow.
const maxPolicyDuration = 10 * 365 * 24 * time.Hour

func (p TierPolicy) validate(name string) error {
	switch {
	case p.MaxFailures < 1 || p.MaxFailures > 1_000_000:
		return invalidConfig(name+".MaxFailures", "is %d; use a value from 1 to 1000000", p.MaxFailures)
	case p.FailureWindow < time.Millisecond || p.FailureWindow > maxPolicyDuration:
		return invalidConfig(name+".FailureWindow", "is %s; use a duration from 1ms to 10 years", p.FailureWindow)
	case p.LockDuration < time.Millisecond || p.LockDuration > maxPolicyDuration:
		return invalidConfig(name+".LockDuration", "is %s; use a duration from 1ms to 10 years", p.LockDuration)
	case p.MaxLockDuration < p.LockDuration || p.MaxLockDuration > maxPolicyDuration:
		return invalidConfig(name+".MaxLockDuration", "is %s; use a duration from LockDuration %s to 10 years", p.MaxLockDuration, p.LockDuration)
	}
	return nil
}
