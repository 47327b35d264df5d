package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/dbgen"
)

// CounterStatus is the stored state of one lockout counter.
type CounterStatus struct {
	Tier    Tier
	Channel Channel
	// Email is the normalized email; empty for a source-wide counter.
	Email string
	// Source is the client network; invalid for an account-wide counter
	// and for the bucket of unknown sources.
	Source netip.Prefix
	// Failures counts settled failures since the last reset or lock.
	Failures int
	// Pending counts attempts that passed Begin and are not settled yet.
	Pending int
	// LockCount counts consecutive locks; the next lasts LockDuration
	// doubled this many times, capped.
	LockCount int
	// LockedUntil is when the current lock ends, or the zero time when the
	// counter is not locked now.
	LockedUntil time.Time
	// LastAttemptAt is the time of the last counted attempt.
	LastAttemptAt time.Time
	// ConsecutiveFailures is the streak toward the hard lock; account-wide
	// counters only.
	ConsecutiveFailures int
	// HardLocked reports a hard lock; account-wide counters only.
	HardLocked bool
}

// Locked reports whether the counter rejects attempts now.
func (s CounterStatus) Locked() bool { return s.HardLocked || !s.LockedUntil.IsZero() }

// AccountStatus returns every counter of the account email: the
// account-wide counter of each channel first, then the account-and-source
// counter of each source and channel that attempted it.
func (l *Lockout) AccountStatus(ctx context.Context, email string) ([]CounterStatus, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return nil, err
	}
	now, err := l.dbNow(ctx)
	if err != nil {
		return nil, err
	}

	accounts, err := l.queries.AuthAccountCounterListByEmail(ctx, normalized)
	if err != nil {
		return nil, fmt.Errorf("pgguard: failed to read lockout status: %w", err)
	}
	pairs, err := l.queries.AuthAttemptListByEmail(ctx, normalized)
	if err != nil {
		return nil, fmt.Errorf("pgguard: failed to read lockout status: %w", err)
	}

	statuses := make([]CounterStatus, 0, len(accounts)+len(pairs))
	for _, row := range accounts {
		statuses = append(statuses, CounterStatus{
			Tier:                TierAccount,
			Channel:             Channel(row.Channel),
			Email:               row.Email,
			Failures:            int(row.FailuresCount),
			Pending:             int(row.PendingCount),
			LockCount:           int(row.LockCount),
			LockedUntil:         activeUntil(row.LockedUntil, now),
			LastAttemptAt:       row.LastAttemptAt,
			ConsecutiveFailures: int(row.ConsecutiveFailures),
			HardLocked:          row.HardLockedAt != nil,
		})
	}
	for _, row := range pairs {
		statuses = append(statuses, CounterStatus{
			Tier:          TierAccountSource,
			Channel:       Channel(row.Channel),
			Email:         row.Email,
			Source:        prefixValue(row.Ip),
			Failures:      int(row.FailuresCount),
			Pending:       int(row.PendingCount),
			LockCount:     int(row.LockCount),
			LockedUntil:   activeUntil(row.LockedUntil, now),
			LastAttemptAt: row.LastAttemptAt,
		})
	}
	return statuses, nil
}

// SourceStatus returns the source-wide counter of each channel for the
// client address ip, normalized as Begin normalizes it; an empty ip selects
// the bucket of unknown sources.
func (l *Lockout) SourceStatus(ctx context.Context, ip string) ([]CounterStatus, error) {
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil {
		return nil, err
	}
	now, err := l.dbNow(ctx)
	if err != nil {
		return nil, err
	}

	rows, err := l.queries.AuthSourceCounterListBySource(ctx, source)
	if err != nil {
		return nil, fmt.Errorf("pgguard: failed to read lockout status: %w", err)
	}
	statuses := make([]CounterStatus, 0, len(rows))
	for _, row := range rows {
		statuses = append(statuses, CounterStatus{
			Tier:          TierSource,
			Channel:       Channel(row.Channel),
			Source:        prefixValue(row.Ip),
			Failures:      int(row.FailuresCount),
			Pending:       int(row.PendingCount),
			LockCount:     int(row.LockCount),
			LockedUntil:   activeUntil(row.LockedUntil, now),
			LastAttemptAt: row.LastAttemptAt,
		})
	}
	return statuses, nil
}

// IsKnownSource reports whether the client address ip logged into the
// account email successfully within KnownSourceWindow.
func (l *Lockout) IsKnownSource(ctx context.Context, email, ip string) (bool, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return false, err
	}
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil || source == nil {
		return false, err
	}
	now, err := l.dbNow(ctx)
	if err != nil {
		return false, err
	}

	known, err := l.queries.AuthKnownSourceGet(ctx, dbgen.AuthKnownSourceGetParams{Email: normalized, Ip: *source})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pgguard: failed to read known sources: %w", err)
	}
	return known.LastSuccessAt.After(now.Add(-l.config.KnownSourceWindow)), nil
}

// UnlockAccount clears every lockout counter of the account email on every
// channel: the account-wide counters, the hard lock and the counters of
// each source against this account. Source-wide counters stay. It returns
// how many counters it cleared.
func (l *Lockout) UnlockAccount(ctx context.Context, email string) (int64, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return 0, err
	}

	accounts, err := l.queries.AuthAccountUnlock(ctx, dbgen.AuthAccountUnlockParams{Now: l.now(), Email: normalized})
	if err != nil {
		return 0, fmt.Errorf("pgguard: failed to unlock account: %w", err)
	}
	pairs, err := l.queries.AuthAttemptUnlockEmail(ctx, dbgen.AuthAttemptUnlockEmailParams{Now: l.now(), Email: normalized})
	if err != nil {
		return accounts, fmt.Errorf("pgguard: failed to unlock account: %w", err)
	}

	if accounts+pairs > 0 {
		l.emit(ctx, LockoutEvent{Kind: EventUnlocked, Tier: TierAccount, Email: normalized})
	}
	return accounts + pairs, nil
}

// UnlockSource clears the source-wide counters of the client address ip
// on every channel and returns how many it cleared. Counters of this
// source against single accounts stay; unlock those accounts to clear them.
func (l *Lockout) UnlockSource(ctx context.Context, ip string) (int64, error) {
	source, err := NormalizeSource(ip, l.config.IPv6PrefixLen)
	if err != nil {
		return 0, err
	}

	cleared, err := l.queries.AuthSourceCounterUnlock(ctx, dbgen.AuthSourceCounterUnlockParams{Now: l.now(), Ip: source})
	if err != nil {
		return 0, fmt.Errorf("pgguard: failed to unlock source: %w", err)
	}

	if cleared > 0 {
		l.emit(ctx, LockoutEvent{Kind: EventUnlocked, Tier: TierSource, Source: prefixValue(source)})
	}
	return cleared, nil
}

// Lock is one active lock listed by [Lockout.ListLocks].
type Lock struct {
	Tier    Tier
	Channel Channel
	// Email is empty for a source-wide lock.
	Email string
	// Source is invalid for an account-wide lock and for unknown sources.
	Source netip.Prefix
	// Until is when the lock ends; for a hard lock, which has no end, it is
	// when the hard lock began.
	Until time.Time
	// Hard reports a hard lock, listed with Tier TierAccount.
	Hard bool
}

// LockPage is one page of [Lockout.ListLocks].
type LockPage struct {
	Locks []Lock
	// Next is the cursor of the following page, or empty after the last.
	Next string
}

// ListLocks returns up to limit active locks of every tier, ordered by tier
// and then by when each counter was created. Pass an empty cursor for the
// first page and the previous page's Next for the following ones.
func (l *Lockout) ListLocks(ctx context.Context, cursor string, limit int) (LockPage, error) {
	if limit < 1 || limit > 10_000 {
		return LockPage{}, invalidInput("limit", fmt.Sprintf("%d; use a value from 1 to 10000", limit))
	}
	afterTier, afterID, err := parseLockCursor(cursor)
	if err != nil {
		return LockPage{}, err
	}

	rows, err := l.queries.AuthLockList(ctx, dbgen.AuthLockListParams{
		Now:       l.now(),
		AfterTier: afterTier,
		AfterID:   afterID,
		MaxRows:   int32(limit),
	})
	if err != nil {
		return LockPage{}, fmt.Errorf("pgguard: failed to list locks: %w", err)
	}

	page := LockPage{Locks: make([]Lock, 0, len(rows))}
	for _, row := range rows {
		page.Locks = append(page.Locks, Lock{
			Tier:    Tier(row.Tier),
			Channel: Channel(row.Channel),
			Email:   row.Email,
			Source:  prefixValue(row.Ip),
			Until:   row.LockedUntil,
			Hard:    row.HardLocked,
		})
	}
	if len(rows) == limit {
		last := rows[len(rows)-1]
		page.Next = last.Tier + ":" + strconv.FormatInt(last.ID, 10)
	}
	return page, nil
}

func parseLockCursor(cursor string) (string, int64, error) {
	if cursor == "" {
		return "", 0, nil
	}
	tier, id, ok := strings.Cut(cursor, ":")
	number, err := strconv.ParseInt(id, 10, 64)
	known := Tier(tier) == TierAccount || Tier(tier) == TierAccountSource || Tier(tier) == TierSource
	if !ok || err != nil || !known || number < 1 {
		return "", 0, invalidInput("cursor", fmt.Sprintf("%q is not a cursor returned by ListLocks", cursor))
	}
	return tier, number, nil
}

// PurgeIdle deletes counters whose last attempt and last lock both ended
// more than retention ago, and known sources older than KnownSourceWindow.
// Hard locks are kept, and so are streaks toward one until their last
// failure is StreakRetention old. It returns how many rows it deleted. A
// retention shorter than the longest FailureWindow of any channel would
// forget failures early, so it is rejected.
//
// No statement reads or deletes more than batchSize rows, so none holds
// many row locks. The counter tables have no index on the time of the last
// attempt, which every login would have to update, so a purge walks each of
// them in id order, batchSize rows per statement: one purge reads every
// counter once.
func (l *Lockout) PurgeIdle(ctx context.Context, retention time.Duration, batchSize int) (int64, error) {
	if longest := l.longestWindow(); retention < longest {
		return 0, invalidInput("retention", fmt.Sprintf("%s is shorter than the longest FailureWindow %s; idle counters must outlive it", retention, longest))
	}
	if batchSize < 1 || batchSize > 1_000_000 {
		return 0, invalidInput("batch size", fmt.Sprintf("%d; use a number of rows from 1 to 1000000, for example 1000", batchSize))
	}
	now, err := l.dbNow(ctx)
	if err != nil {
		return 0, err
	}
	idleBefore := now.Add(-retention)
	streakBefore := now.Add(-l.config.StreakRetention)
	maxRows := int32(batchSize)

	// Each walk deletes the idle rows among the next batch after afterID
	// and returns the last id of that batch, or 0 at the end of the table.
	walks := []func(afterID int64) (lastID, deleted int64, err error){
		func(afterID int64) (int64, int64, error) {
			row, err := l.queries.AuthAttemptDeleteIdle(ctx, dbgen.AuthAttemptDeleteIdleParams{
				AfterID: afterID, MaxRows: maxRows, IdleBefore: idleBefore,
			})
			return row.LastID, row.Deleted, err
		},
		func(afterID int64) (int64, int64, error) {
			row, err := l.queries.AuthAccountCounterDeleteIdle(ctx, dbgen.AuthAccountCounterDeleteIdleParams{
				AfterID: afterID, MaxRows: maxRows, IdleBefore: idleBefore, StreakBefore: streakBefore,
			})
			return row.LastID, row.Deleted, err
		},
		func(afterID int64) (int64, int64, error) {
			row, err := l.queries.AuthSourceCounterDeleteIdle(ctx, dbgen.AuthSourceCounterDeleteIdleParams{
				AfterID: afterID, MaxRows: maxRows, IdleBefore: idleBefore,
			})
			return row.LastID, row.Deleted, err
		},
	}

	var total int64
	for _, walk := range walks {
		for afterID := int64(0); ; {
			lastID, deleted, err := walk(afterID)
			total += deleted
			if err != nil {
				return total, fmt.Errorf("pgguard: failed to purge idle lockout rows: %w", err)
			}
			if lastID == 0 {
				break
			}
			afterID = lastID
		}
	}

	deleted, err := deleteInBatches(batchSize, func() (int64, error) {
		return l.queries.AuthKnownSourceDeleteExpired(ctx, dbgen.AuthKnownSourceDeleteExpiredParams{
			SuccessBefore: now.Add(-l.config.KnownSourceWindow),
			MaxRows:       int32(batchSize),
		})
	})
	total += deleted
	if err != nil {
		return total, fmt.Errorf("pgguard: failed to purge idle lockout rows: %w", err)
	}
	return total, nil
}

func (l *Lockout) longestWindow() time.Duration {
	var longest time.Duration
	for _, policy := range l.config.Channels {
		longest = max(longest, policy.AccountSource.FailureWindow, policy.Account.FailureWindow, policy.Source.FailureWindow)
	}
	return longest
}

func activeUntil(lockedUntil *time.Time, now time.Time) time.Time {
	if lockedUntil == nil || !lockedUntil.After(now) {
		return time.Time{}
	}
	return *lockedUntil
}
