package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/dbgen"
)

// KeyStatus is the stored state of one lockout key (email and source).
type KeyStatus struct {
	// Email is the normalized email.
	Email string
	// Source is the client network, or an invalid prefix for the bucket of
	// unknown sources.
	Source netip.Prefix
	// Failures counts settled failures since the last reset or lock.
	Failures int
	// Pending counts attempts that passed Begin and are not settled yet.
	Pending int
	// LockCount counts consecutive locks; the next lasts LockDuration
	// doubled this many times, capped.
	LockCount int
	// LockedUntil is when the current lock ends, or the zero time when the
	// key is not locked now.
	LockedUntil time.Time
	// LastAttemptAt is the time of the last counted attempt.
	LastAttemptAt time.Time
}

// Locked reports whether the key is locked.
func (s KeyStatus) Locked() bool { return !s.LockedUntil.IsZero() }

// Status returns the state of the key for email and ip, normalized as Begin
// normalizes them. A key that never failed has a zero KeyStatus with Email
// and Source set.
func (l *Lockout) Status(ctx context.Context, email, ip string) (KeyStatus, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return KeyStatus{}, err
	}
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil {
		return KeyStatus{}, err
	}

	row, err := l.queries.AuthAttemptGet(ctx, dbgen.AuthAttemptGetParams{Email: normalized, Ip: source})
	if errors.Is(err, pgx.ErrNoRows) {
		status := KeyStatus{Email: normalized}
		if source != nil {
			status.Source = *source
		}
		return status, nil
	}
	if err != nil {
		return KeyStatus{}, fmt.Errorf("pgguard: failed to read lockout status: %w", err)
	}
	return l.keyStatus(ctx, row)
}

// StatusByEmail returns the state of every source that attempted email.
func (l *Lockout) StatusByEmail(ctx context.Context, email string) ([]KeyStatus, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return nil, err
	}

	rows, err := l.queries.AuthAttemptListByEmail(ctx, normalized)
	if err != nil {
		return nil, fmt.Errorf("pgguard: failed to read lockout status: %w", err)
	}

	statuses := make([]KeyStatus, 0, len(rows))
	for _, row := range rows {
		status, err := l.keyStatus(ctx, row)
		if err != nil {
			return nil, err
		}
		statuses = append(statuses, status)
	}
	return statuses, nil
}

// UnlockEmail clears the failures and locks of every source for email and
// returns how many keys it cleared.
func (l *Lockout) UnlockEmail(ctx context.Context, email string) (int64, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return 0, err
	}

	cleared, err := l.queries.AuthAttemptUnlockEmail(ctx, dbgen.AuthAttemptUnlockEmailParams{Now: l.now(), Email: normalized})
	if err != nil {
		return 0, fmt.Errorf("pgguard: failed to unlock email: %w", err)
	}
	l.config.Logger.LogAttrs(ctx, slog.LevelInfo, "pgguard: email unlocked", slog.Int64("keys_cleared", cleared))
	return cleared, nil
}

// PurgeIdle deletes keys whose last attempt and last lock both ended more
// than retention ago, batchSize rows per statement so no statement holds
// many row locks, until none is left. It returns how many rows it deleted.
// A retention shorter than FailureWindow would forget failures early, so it
// is rejected.
func (l *Lockout) PurgeIdle(ctx context.Context, retention time.Duration, batchSize int) (int64, error) {
	if retention < l.config.FailureWindow {
		return 0, invalidInput("retention", fmt.Sprintf("%s is shorter than FailureWindow %s; idle keys must outlive the window", retention, l.config.FailureWindow))
	}
	if batchSize < 1 {
		return 0, invalidInput("batch size", fmt.Sprintf("%d; use a positive number of rows, for example 1000", batchSize))
	}

	now, err := l.dbNow(ctx)
	if err != nil {
		return 0, err
	}
	idleBefore := now.Add(-retention)

	var total int64
	for {
		deleted, err := l.queries.AuthAttemptDeleteIdle(ctx, dbgen.AuthAttemptDeleteIdleParams{
			IdleBefore: idleBefore,
			MaxRows:    int32(batchSize),
		})
		total += deleted
		if err != nil {
			return total, fmt.Errorf("pgguard: failed to purge idle lockout keys: %w", err)
		}
		if deleted < int64(batchSize) {
			return total, nil
		}
	}
}

func (l *Lockout) keyStatus(ctx context.Context, row dbgen.AuthAttempt) (KeyStatus, error) {
	status := KeyStatus{
		Email:         row.Email,
		Failures:      int(row.FailuresCount),
		Pending:       int(row.PendingCount),
		LockCount:     int(row.LockCount),
		LastAttemptAt: row.LastAttemptAt,
	}
	if row.Ip != nil {
		status.Source = *row.Ip
	}
	if row.LockedUntil != nil {
		now, err := l.dbNow(ctx)
		if err != nil {
			return KeyStatus{}, err
		}
		if row.LockedUntil.After(now) {
			status.LockedUntil = *row.LockedUntil
		}
	}
	return status, nil
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
