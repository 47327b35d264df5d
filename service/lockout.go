package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pgguard/pgguard/dbgen"
)

// Lockout limits failed logins with three counters per channel: one account
// from one client source, one account from all sources, and one source
// against all accounts, plus a hard lock after too many consecutive
// failures on an account. Use it in three steps: [Lockout.Begin] before
// checking the credential, then exactly one of [Attempt.Succeed],
// [Attempt.Fail] or [Attempt.Cancel].
//
// Begin counts the attempt provisionally on every counter, so however many
// requests race, no more than a counter's MaxFailures reach verification.
// Unknown emails are counted and locked exactly like real ones, so nothing
// Lockout returns distinguishes them. Every decision takes the database clock.
//
// A Lockout is safe for concurrent use.
type Lockout struct {
	queries *dbgen.Queries
	config  LockoutConfig
}

// NewLockout returns a Lockout that stores its counters through db, usually
// a *pgxpool.Pool. It returns an error wrapping [ErrInvalidConfig] when a
// config field is out of range.
func NewLockout(db dbgen.DBTX, config LockoutConfig) (*Lockout, error) {
	config = config.withDefaults()
	if err := config.validate(); err != nil {
		return nil, err
	}
	return &Lockout{queries: dbgen.New(db), config: config}, nil
}

// Attempt is a login attempt admitted by [Lockout.Begin]. Settle it exactly
// once; an attempt never settled counts as a failure after AttemptTimeout.
// A settle that fails with an error matching [ErrUnavailable] may be
// retried when the database certainly did not apply it; otherwise the
// retry returns [ErrAlreadySettled].
type Attempt struct {
	lockout *Lockout
	id      int64
	channel Channel
	email   string
	source  *netip.Prefix
	settled atomic.Bool
	// unchecked marks an attempt admitted by FailOpen while the database was
	// unavailable; settling it stores nothing.
	unchecked bool
}

// Unchecked reports whether the attempt was admitted without a lockout
// check because the database was unavailable and LockoutConfig.FailOpen is
// set. Settling such an attempt stores nothing.
func (a *Attempt) Unchecked() bool { return a.unchecked }

// Email returns the normalized email the attempt is counted under.
func (a *Attempt) Email() string { return a.email }

// Channel returns the channel the attempt is counted under.
func (a *Attempt) Channel() Channel { return a.channel }

// Source returns the client network the attempt is counted under, or an
// invalid prefix when the source is unknown.
func (a *Attempt) Source() netip.Prefix { return prefixValue(a.source) }

// Begin admits an attempt to verify a credential of channel for email from
// the client address ip, counting it provisionally. An empty ip is the one
// bucket of unknown sources; [SourceResolver] derives ip from a request.
// Call Begin before verifying the credential.
//
// When the database is unavailable, Begin returns an error matching
// [ErrUnavailable] (fail closed), or, with LockoutConfig.FailOpen, an
// unchecked Attempt.
//
// While any lock applies to the account or the source, Begin returns a
// *LockedError (matching [ErrLocked]) and counts nothing. Do not verify the
// credential then, and send the same response as for a wrong one. While
// attempts in flight fill a counter's remaining budget, Begin first waits
// up to InFlightWait for them to settle. Invalid input returns an
// *InputError and stores nothing.
func (l *Lockout) Begin(ctx context.Context, channel Channel, email, ip string) (*Attempt, error) {
	policy, ok := l.config.Channels[channel]
	if !ok {
		return nil, invalidInput("channel", fmt.Sprintf("%q is not configured; use a built-in channel or add it to LockoutConfig.Channels", channel))
	}
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return nil, err
	}
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil {
		return nil, err
	}

	params := dbgen.AuthLoginBeginParams{
		Email:            normalized,
		Ip:               source,
		Channel:          string(channel),
		Now:              l.now(),
		AttemptTimeoutMs: l.config.AttemptTimeout.Milliseconds(),
		KnownSourceMs:    l.config.KnownSourceWindow.Milliseconds(),
		HardLockAfter:    int32(policy.HardLockAfter),
		PairMax:          int32(policy.AccountSource.MaxFailures),
		PairWindowMs:     policy.AccountSource.FailureWindow.Milliseconds(),
		PairLockMs:       policy.AccountSource.LockDuration.Milliseconds(),
		PairLockMaxMs:    policy.AccountSource.MaxLockDuration.Milliseconds(),
		AccountMax:       int32(policy.Account.MaxFailures),
		AccountWindowMs:  policy.Account.FailureWindow.Milliseconds(),
		AccountLockMs:    policy.Account.LockDuration.Milliseconds(),
		AccountLockMaxMs: policy.Account.MaxLockDuration.Milliseconds(),
		SourceMax:        int32(policy.Source.MaxFailures),
		SourceWindowMs:   policy.Source.FailureWindow.Milliseconds(),
		SourceLockMs:     policy.Source.LockDuration.Milliseconds(),
		SourceLockMaxMs:  policy.Source.MaxLockDuration.Milliseconds(),
	}
	row, err := l.beginWaiting(ctx, params)
	if err != nil {
		if l.config.FailOpen && errors.Is(err, ErrUnavailable) && ctx.Err() == nil {
			l.config.Logger.LogAttrs(ctx, slog.LevelError, "pgguard: lockout unavailable, admitting login unchecked",
				slog.String("channel", string(channel)),
				slog.String("error", err.Error()),
			)
			return &Attempt{lockout: l, channel: channel, email: normalized, source: source, unchecked: true}, nil
		}
		return nil, err
	}

	switch row.Decision {
	case "reserved":
		return &Attempt{lockout: l, id: row.AttemptID, channel: channel, email: normalized, source: source}, nil

	case "locked":
		tier := Tier(row.Tier)
		if row.Engaged {
			l.emitEngaged(ctx, tier, channel, normalized, prefixValue(source), row.LockedUntil)
		}
		if tier == TierHard {
			// A hard lock has no end; suggest the longest lock of the
			// account tier as the wait.
			return nil, &LockedError{Tier: tier, RetryAfter: retryAfter(policy.Account.MaxLockDuration)}
		}
		return nil, &LockedError{Tier: tier, RetryAfter: retryAfter(row.LockedUntil.Sub(row.DbNow)), Until: row.LockedUntil}

	case "saturated":
		// Attempts in flight still fill a budget after InFlightWait: they
		// may have crashed, and count as failures after AttemptTimeout.
		return nil, &LockedError{Tier: TierInFlight, RetryAfter: time.Second, Until: row.DbNow.Add(time.Second)}

	default:
		return nil, fmt.Errorf("pgguard: unexpected lockout decision %q from the database; check that the migrations are current", row.Decision)
	}
}

// beginWaiting calls AuthLoginBegin, and while attempts in flight fill a
// budget, calls it again with a growing pause until they settle or
// InFlightWait passes. So correct logins that race each other all get
// through, one batch after another, while a burst of wrong ones still
// reaches verification at most MaxFailures times: their failures engage a
// lock that the waiting attempts then see.
func (l *Lockout) beginWaiting(ctx context.Context, params dbgen.AuthLoginBeginParams) (dbgen.AuthLoginBeginRow, error) {
	budget := time.NewTimer(l.config.InFlightWait)
	defer budget.Stop()
	pause := 5 * time.Millisecond

	for {
		row, err := l.queries.AuthLoginBegin(ctx, params)
		if err != nil {
			return row, unavailable("begin login attempt", err)
		}
		if row.Decision != "saturated" {
			return row, nil
		}

		wait := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			wait.Stop()
			return row, fmt.Errorf("pgguard: gave up waiting for login attempts in flight: %w", ctx.Err())
		case <-budget.C:
			wait.Stop()
			return row, nil
		case <-wait.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// FailResult describes the account-and-source counter after [Attempt.Fail].
type FailResult struct {
	// Failures is the number of failures of this account from this source
	// since the last reset or lock. It is 0 when this failure engaged a lock.
	Failures int
	// LockedUntil is when the account-and-source lock ends, or the zero
	// time when that counter is not locked.
	LockedUntil time.Time
	// HardLocked reports that this failure engaged the hard lock.
	HardLocked bool
}

// Locked reports whether the account is locked for this source.
func (r FailResult) Locked() bool { return r.HardLocked || !r.LockedUntil.IsZero() }

// Fail settles the attempt as a wrong credential. The provisional count
// becomes a failure on every counter, and each counter that reaches its
// MaxFailures locks for its LockDuration, doubled for each consecutive lock
// and capped at MaxLockDuration. An active lock is never extended. Call it
// only for a wrong credential; use Cancel for a request refused for
// another reason.
func (a *Attempt) Fail(ctx context.Context) (FailResult, error) {
	if !a.settled.CompareAndSwap(false, true) {
		return FailResult{}, ErrAlreadySettled
	}
	if a.unchecked {
		return FailResult{}, nil
	}
	l := a.lockout
	policy := l.config.Channels[a.channel]

	row, err := l.queries.AuthLoginFail(ctx, dbgen.AuthLoginFailParams{
		AttemptID:        a.id,
		Now:              l.now(),
		HardLockAfter:    int32(policy.HardLockAfter),
		PairMax:          int32(policy.AccountSource.MaxFailures),
		PairLockMs:       policy.AccountSource.LockDuration.Milliseconds(),
		PairLockMaxMs:    policy.AccountSource.MaxLockDuration.Milliseconds(),
		AccountMax:       int32(policy.Account.MaxFailures),
		AccountLockMs:    policy.Account.LockDuration.Milliseconds(),
		AccountLockMaxMs: policy.Account.MaxLockDuration.Milliseconds(),
		SourceMax:        int32(policy.Source.MaxFailures),
		SourceLockMs:     policy.Source.LockDuration.Milliseconds(),
		SourceLockMaxMs:  policy.Source.MaxLockDuration.Milliseconds(),
	})
	if err != nil {
		a.allowRetry(err)
		return FailResult{}, unavailable("record login failure", err)
	}
	if row.AttemptID == 0 {
		// An operator unlocked or purged the counters meanwhile.
		return FailResult{}, nil
	}

	result := FailResult{Failures: int(row.FailuresCount), HardLocked: row.HardLockEngaged}
	if row.PairLockedUntil.After(row.DbNow) {
		result.LockedUntil = row.PairLockedUntil
	}

	if row.PairLockEngaged {
		l.emit(ctx, LockoutEvent{Kind: EventLocked, Tier: TierAccountSource, Channel: a.channel, Email: a.email, Source: a.Source(), Until: row.PairLockedUntil})
	}
	if row.AccountLockEngaged {
		l.emit(ctx, LockoutEvent{Kind: EventLocked, Tier: TierAccount, Channel: a.channel, Email: a.email, Until: row.AccountLockedUntil})
	}
	if row.SourceLockEngaged {
		l.emit(ctx, LockoutEvent{Kind: EventSourceThrottled, Tier: TierSource, Channel: a.channel, Source: a.Source(), Until: row.SourceLockedUntil})
	}
	if row.HardLockEngaged {
		l.emit(ctx, LockoutEvent{Kind: EventHardLocked, Tier: TierHard, Channel: a.channel, Email: a.email})
	}
	return result, nil
}

// Succeed settles the attempt as a correct credential that completes the
// login. The provisional count is given back everywhere, and the counter of
// this account from this source is reset, its lock included. The account's
// streaks toward the hard lock end on every channel, and the source becomes
// known to the account for KnownSourceWindow. The account-wide and source-wide counters
// are not reset, so a success cannot clear failures other sources caused
// or failures this source caused against other accounts.
//
// When a second factor must follow, use SucceedFirstFactor instead, so the
// source becomes known only once the whole login succeeded.
func (a *Attempt) Succeed(ctx context.Context) error {
	return a.settle(ctx, true, true)
}

// SucceedFirstFactor settles the attempt as a correct credential that
// does not complete the login yet: like Succeed, but it ends only this
// channel's streak and does not remember the source. Succeed on the last
// factor's attempt does both.
func (a *Attempt) SucceedFirstFactor(ctx context.Context) error {
	return a.settle(ctx, true, false)
}

// Cancel settles the attempt without counting it either way: the
// provisional count is given back and nothing is reset. Use it when a
// request is refused for a reason other than a wrong credential, such as a
// disabled account, or when verification could not run.
func (a *Attempt) Cancel(ctx context.Context) error {
	return a.settle(ctx, false, false)
}

func (a *Attempt) settle(ctx context.Context, success, rememberSource bool) error {
	if !a.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	if a.unchecked {
		return nil
	}
	l := a.lockout

	_, err := l.queries.AuthLoginSettle(ctx, dbgen.AuthLoginSettleParams{
		AttemptID:      a.id,
		Now:            l.now(),
		Success:        success,
		RememberSource: rememberSource,
	})
	if err != nil {
		a.allowRetry(err)
		return unavailable("settle login attempt", err)
	}
	return nil
}

// allowRetry lets the caller settle again after err when the database
// certainly did not apply the settle: nothing was sent, or the server
// reported an error, which rolled the statement back. After a connection
// lost mid-call the outcome is unknown, so a retry could count twice. The
// attempt then stays settled, and if the settle was lost it counts as a
// failure after AttemptTimeout.
func (a *Attempt) allowRetry(err error) {
	if settleNotApplied(err) {
		a.settled.Store(false)
	}
}

// emitEngaged reports a lock that Begin engaged because unsettled attempts
// turned into failures.
func (l *Lockout) emitEngaged(ctx context.Context, tier Tier, channel Channel, email string, source netip.Prefix, until time.Time) {
	event := LockoutEvent{Kind: EventLocked, Tier: tier, Channel: channel, Email: email, Source: source, Until: until}
	switch tier {
	case TierAccount:
		event.Source = netip.Prefix{}
	case TierSource:
		event.Kind = EventSourceThrottled
		event.Email = ""
	case TierHard:
		event.Kind = EventHardLocked
		event.Source = netip.Prefix{}
		event.Until = time.Time{}
	}
	l.emit(ctx, event)
}

func (l *Lockout) emit(ctx context.Context, event LockoutEvent) {
	l.config.Logger.LogAttrs(ctx, slog.LevelInfo, "pgguard: lockout "+string(event.Kind),
		slog.String("tier", string(event.Tier)),
		slog.String("channel", string(event.Channel)),
		slog.String("source", prefixString(event.Source)),
		slog.Time("until", event.Until),
	)
	if l.config.OnEvent != nil {
		l.config.OnEvent(ctx, event)
	}
}

func (l *Lockout) now() *time.Time {
	if l.config.Now == nil {
		return nil
	}
	t := l.config.Now()
	return &t
}

// dbNow returns the time decisions use: Config.Now when set, else the
// database clock.
func (l *Lockout) dbNow(ctx context.Context) (time.Time, error) {
	if l.config.Now != nil {
		return l.config.Now(), nil
	}
	now, err := l.queries.DatabaseNow(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("pgguard: failed to read the database clock: %w", err)
	}
	return now, nil
}

func prefixValue(prefix *netip.Prefix) netip.Prefix {
	if prefix == nil {
		return netip.Prefix{}
	}
	return *prefix
}

func prefixString(prefix netip.Prefix) string {
	if !prefix.IsValid() {
		return "unknown"
	}
	return prefix.String()
}
