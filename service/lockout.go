package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/dbgen"
)

// LockoutConfig is the policy of a [Lockout]. A zero field takes its
// default.
type LockoutConfig struct {
	// MaxFailures is how many failures a key (email and source) may have
	// before it is locked. Defaults to 5.
	MaxFailures int

	// FailureWindow is how long failures are remembered: once the last
	// failure and the end of the last lock are both older than this, the
	// key starts afresh, lock history included. Defaults to 15 minutes.
	FailureWindow time.Duration

	// LockDuration is the length of the first lock. Each consecutive lock
	// doubles it, up to MaxLockDuration. Defaults to 30 seconds.
	LockDuration time.Duration

	// MaxLockDuration caps the doubling. Defaults to 1 hour.
	MaxLockDuration time.Duration

	// AttemptTimeout is how long an attempt may stay unsettled. Begin counts
	// an older unsettled attempt as a failure, because its caller crashed or
	// lost its connection between Begin and settling. Defaults to 1 minute.
	AttemptTimeout time.Duration

	// IPv6PrefixLen is the prefix length IPv6 clients are counted by.
	// Defaults to 64. Must be between 1 and 128.
	IPv6PrefixLen int

	// Now, when set, supplies the time of every decision instead of the
	// database clock. Tests use it to move time without sleeping; leave it
	// nil in production so every instance decides by one clock.
	Now func() time.Time

	// Logger receives lock events and errors. Defaults to discarding them.
	Logger *slog.Logger
}

func (c LockoutConfig) withDefaults() LockoutConfig {
	if c.MaxFailures == 0 {
		c.MaxFailures = 5
	}
	if c.FailureWindow == 0 {
		c.FailureWindow = 15 * time.Minute
	}
	if c.LockDuration == 0 {
		c.LockDuration = 30 * time.Second
	}
	if c.MaxLockDuration == 0 {
		c.MaxLockDuration = time.Hour
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = time.Minute
	}
	if c.IPv6PrefixLen == 0 {
		c.IPv6PrefixLen = 64
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c LockoutConfig) validate() error {
	switch {
	case c.MaxFailures < 1 || c.MaxFailures > 1_000_000:
		return invalidConfig("MaxFailures", "is %d; use a value from 1 to 1000000", c.MaxFailures)
	case c.FailureWindow < time.Millisecond:
		return invalidConfig("FailureWindow", "is %s; use a positive duration of at least 1ms", c.FailureWindow)
	case c.LockDuration < time.Millisecond:
		return invalidConfig("LockDuration", "is %s; use a positive duration of at least 1ms", c.LockDuration)
	case c.MaxLockDuration < c.LockDuration:
		return invalidConfig("MaxLockDuration", "is %s, shorter than LockDuration %s", c.MaxLockDuration, c.LockDuration)
	case c.AttemptTimeout < time.Millisecond:
		return invalidConfig("AttemptTimeout", "is %s; use a positive duration of at least 1ms", c.AttemptTimeout)
	case c.IPv6PrefixLen < 1 || c.IPv6PrefixLen > 128:
		return invalidConfig("IPv6PrefixLen", "is %d; use a value from 1 to 128", c.IPv6PrefixLen)
	}
	return nil
}

// Lockout limits failed logins per normalized email and client source. Use
// it in three steps: [Lockout.Begin] before checking the password, then
// exactly one of [Attempt.Succeed] or [Attempt.Fail]. Begin counts the
// attempt provisionally, so however many requests race, at most MaxFailures
// of them reach password verification.
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
// once with Succeed or Fail; an attempt never settled counts as a failure
// after AttemptTimeout.
type Attempt struct {
	lockout *Lockout
	id      int64
	email   string
	source  *netip.Prefix
	settled atomic.Bool
}

// Email returns the normalized email the attempt is counted under.
func (a *Attempt) Email() string { return a.email }

// Source returns the client network the attempt is counted under, or an
// invalid prefix when the source is unknown.
func (a *Attempt) Source() netip.Prefix {
	if a.source == nil {
		return netip.Prefix{}
	}
	return *a.source
}

// Begin admits a login attempt for email from the client address ip (an
// empty ip is the one bucket of unknown sources), counting it
// provisionally. Call it before verifying the password.
//
// While the key is locked, or while attempts already in flight fill the
// remaining failure budget, Begin returns a *LockedError (matching
// [ErrLocked]) and counts nothing; the password must not be checked then.
// Invalid input returns an *InputError and stores nothing.
func (l *Lockout) Begin(ctx context.Context, email, ip string) (*Attempt, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return nil, err
	}
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil {
		return nil, err
	}

	row, err := l.queries.AuthAttemptBegin(ctx, dbgen.AuthAttemptBeginParams{
		Now:              l.now(),
		Email:            normalized,
		Ip:               source,
		MaxFailures:      int32(l.config.MaxFailures),
		FailureWindowMs:  l.config.FailureWindow.Milliseconds(),
		AttemptTimeoutMs: l.config.AttemptTimeout.Milliseconds(),
		LockBaseMs:       l.config.LockDuration.Milliseconds(),
		LockMaxMs:        l.config.MaxLockDuration.Milliseconds(),
	})
	if err != nil {
		return nil, fmt.Errorf("pgguard: failed to begin login attempt: %w", err)
	}

	switch row.LastDecision {
	case "reserved":
		return &Attempt{lockout: l, id: row.ID, email: normalized, source: source}, nil

	case "locked":
		until := *row.LockedUntil
		return nil, &LockedError{RetryAfter: retryAfter(until.Sub(row.DbNow)), Until: until}

	case "saturated":
		// The attempts in flight settle within AttemptTimeout of the latest
		// one, or count as failures then; either way the key is decided by
		// that time.
		until := row.LastAttemptAt.Add(l.config.AttemptTimeout)
		return nil, &LockedError{RetryAfter: retryAfter(until.Sub(row.DbNow)), Until: until}

	default:
		return nil, fmt.Errorf("pgguard: unexpected lockout decision %q from the database; check that the migrations are current", row.LastDecision)
	}
}

// FailResult describes the state of a key after [Attempt.Fail].
type FailResult struct {
	// Failures is the number of settled failures since the last reset or
	// lock. It is 0 when this failure engaged a lock.
	Failures int
	// LockedUntil is when the key's current lock ends, or the zero time
	// when the key is not locked.
	LockedUntil time.Time
}

// Locked reports whether the key is locked after this failure.
func (r FailResult) Locked() bool { return !r.LockedUntil.IsZero() }

// Fail settles the attempt as a wrong credential. The provisional count
// becomes a failure, and reaching MaxFailures engages a lock that lasts
// LockDuration doubled for each consecutive lock, capped at
// MaxLockDuration. Call it only for a wrong credential, not for a request
// rejected for another reason (a disabled account, say); use Succeed to
// give the attempt back in that case.
func (a *Attempt) Fail(ctx context.Context) (FailResult, error) {
	if !a.settled.CompareAndSwap(false, true) {
		return FailResult{}, ErrAlreadySettled
	}
	l := a.lockout

	row, err := l.queries.AuthAttemptFail(ctx, dbgen.AuthAttemptFailParams{
		Now:         l.now(),
		ID:          a.id,
		MaxFailures: int32(l.config.MaxFailures),
		LockBaseMs:  l.config.LockDuration.Milliseconds(),
		LockMaxMs:   l.config.MaxLockDuration.Milliseconds(),
	})
	if errors.Is(err, pgx.ErrNoRows) {
		// The row was purged or deleted by an operator: nothing to count.
		return FailResult{}, nil
	}
	if err != nil {
		return FailResult{}, fmt.Errorf("pgguard: failed to record login failure: %w", err)
	}

	result := FailResult{Failures: int(row.FailuresCount)}
	if row.LockedUntil != nil && row.LockedUntil.After(row.DbNow) {
		result.LockedUntil = *row.LockedUntil
	}
	if result.Locked() && row.FailuresCount == 0 {
		// This failure engaged the lock: a failure during an existing lock
		// leaves a count of at least one.
		l.config.Logger.LogAttrs(ctx, slog.LevelInfo, "pgguard: login key locked",
			slog.Int64("auth_attempt_id", row.ID),
			slog.Int("lock_count", int(row.LockCount)),
			slog.Time("locked_until", *row.LockedUntil),
		)
	}
	return result, nil
}

// Succeed settles the attempt as a correct credential: the provisional
// count is refunded and the key's failures, lock and lock history are
// cleared.
func (a *Attempt) Succeed(ctx context.Context) error {
	if !a.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	l := a.lockout

	if _, err := l.queries.AuthAttemptSucceed(ctx, dbgen.AuthAttemptSucceedParams{Now: l.now(), ID: a.id}); err != nil {
		return fmt.Errorf("pgguard: failed to record login success: %w", err)
	}
	return nil
}

func (l *Lockout) now() *time.Time {
	if l.config.Now == nil {
		return nil
	}
	t := l.config.Now()
	return &t
}
