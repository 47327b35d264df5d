package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// Lockout operations.
const (
	opBeginFail    = "lockout Begin+Fail"
	opBeginSucceed = "lockout Begin+Succeed"
	opBeginLocked  = "lockout Begin while locked"
)

// lockedKeys is how many locked accounts the "Begin while locked" workloads
// cycle through. A locked Begin writes nothing, so keys can repeat.
const lockedKeys = 1000

// usualMaxFailures and usualLockDuration are the policy of the usual
// design, the default of pgguard's account-and-source counter.
const (
	usualMaxFailures  = 5
	usualLockDuration = 30 * time.Second
)

// pgguardLockoutWorkloads returns the lockout operations through
// service.Lockout with the default policy.
func pgguardLockoutWorkloads(lockout *service.Lockout) []*workload {
	beginFail := func(ctx context.Context, key int64) error {
		attempt, err := lockout.Begin(ctx, service.ChannelPassword, keysFail.email(key), keysFail.ip(key))
		if err != nil {
			return err
		}
		_, err = attempt.Fail(ctx)
		return err
	}
	beginSucceed := func(ctx context.Context, key int64) error {
		attempt, err := lockout.Begin(ctx, service.ChannelPassword, keysSucceed.email(key), keysSucceed.ip(key))
		if err != nil {
			return err
		}
		return attempt.Succeed(ctx)
	}
	beginLocked := func(ctx context.Context, key int64) error {
		key %= lockedKeys
		_, err := lockout.Begin(ctx, service.ChannelPassword, keysLocked.email(key), keysLocked.ip(key))
		if !errors.Is(err, service.ErrLocked) {
			return fmt.Errorf("Begin of a locked account returned %v, expected a *LockedError", err)
		}
		return nil
	}
	return []*workload{
		{operation: opBeginFail, design: designPgguard, op: beginFail},
		{operation: opBeginSucceed, design: designPgguard, op: beginSucceed},
		{operation: opBeginLocked, design: designPgguard, op: beginLocked},
	}
}

// usualLockoutWorkloads returns the same operations in the design that
// django-axes and ASP.NET Identity use: before verifying, read whether the
// key is locked; after verifying, count the outcome in a read-modify-write
// transaction (SELECT ... FOR UPDATE, decide in Go, UPDATE, COMMIT). It
// keeps one counter per email and source where pgguard keeps three, and
// concurrent attempts all pass the check before any failure is counted.
func usualLockoutWorkloads(pool *pgxpool.Pool) []*workload {
	beginFail := func(ctx context.Context, key int64) error {
		return usualLogin(ctx, pool, keysFail.email(key), keysFail.ip(key), false)
	}
	beginSucceed := func(ctx context.Context, key int64) error {
		return usualLogin(ctx, pool, keysSucceed.email(key), keysSucceed.ip(key), true)
	}
	beginLocked := func(ctx context.Context, key int64) error {
		key %= lockedKeys
		locked, err := usualIsLocked(ctx, pool, keysLocked.email(key), keysLocked.ip(key))
		if err != nil {
			return err
		}
		if !locked {
			return errors.New("a locked account was not locked")
		}
		return nil
	}
	return []*workload{
		{operation: opBeginFail, design: designUsual, op: beginFail},
		{operation: opBeginSucceed, design: designUsual, op: beginSucceed},
		{operation: opBeginLocked, design: designUsual, op: beginLocked},
	}
}

// usualLogin checks the lock, then records the outcome of verification.
func usualLogin(ctx context.Context, pool *pgxpool.Pool, email, ip string, success bool) error {
	locked, err := usualIsLocked(ctx, pool, email, ip)
	if err != nil {
		return err
	}
	if locked {
		return errors.New("account unexpectedly locked")
	}
	return usualRecord(ctx, pool, email, ip, success)
}

func usualIsLocked(ctx context.Context, pool *pgxpool.Pool, email, ip string) (bool, error) {
	var locked bool
	err := pool.QueryRow(ctx, `
		SELECT coalesce(locked_until > now(), false)
		FROM bench_usual_attempts
		WHERE email = $1 AND ip = $2`,
		email, ip,
	).Scan(&locked)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return locked, err
}

// usualRecord counts a failure, or resets the counter after a success, in
// one read-modify-write transaction.
func usualRecord(ctx context.Context, pool *pgxpool.Pool, email, ip string, success bool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // After Commit it only returns ErrTxClosed.

	var failures int
	var lockedUntil *time.Time
	var now time.Time
	err = tx.QueryRow(ctx, `
		SELECT failures, locked_until, now()
		FROM bench_usual_attempts
		WHERE email = $1 AND ip = $2
		FOR UPDATE`,
		email, ip,
	).Scan(&failures, &lockedUntil, &now)
	if errors.Is(err, pgx.ErrNoRows) {
		// First attempt of this key: create the row, locked by this
		// transaction until it commits.
		err = tx.QueryRow(ctx, `
			INSERT INTO bench_usual_attempts (email, ip) VALUES ($1, $2)
			RETURNING failures, locked_until, now()`,
			email, ip,
		).Scan(&failures, &lockedUntil, &now)
	}
	if err != nil {
		return err
	}

	switch {
	case success:
		failures, lockedUntil = 0, nil
	case failures+1 >= usualMaxFailures:
		until := now.Add(usualLockDuration)
		failures, lockedUntil = 0, &until
	default:
		failures++
	}

	_, err = tx.Exec(ctx, `
		UPDATE bench_usual_attempts
		SET failures = $3, locked_until = $4, updated_at = now()
		WHERE email = $1 AND ip = $2`,
		email, ip, failures, lockedUntil,
	)
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// seedLockoutKeys creates the rows that keys 0 to count-1 of set would
// have after an earlier login, in pgguard's three counter tables and in the
// usual design's table, so that measured ops update rows rather than
// insert them, as they do for accounts that log in regularly. With locked,
// the account-and-source counters are locked for a day.
func seedLockoutKeys(ctx context.Context, pool *pgxpool.Pool, set keySet, count int64, locked bool) error {
	batch := &pgx.Batch{}
	batch.Queue(`
		INSERT INTO auth_account_counters (email, channel)
		SELECT $1 || '-' || n || '@example.com', 'password'
		FROM generate_series(0, $2::bigint - 1) n`,
		set.name, count)
	batch.Queue(`
		INSERT INTO auth_attempts (email, ip, channel, lock_count, locked_until)
		SELECT
			$1 || '-' || n || '@example.com',
			'10.0.0.0'::inet + ($3::bigint + n),
			'password',
			CASE WHEN $4 THEN 1 ELSE 0 END,
			CASE WHEN $4 THEN now() + interval '1 day' END
		FROM generate_series(0, $2::bigint - 1) n`,
		set.name, count, set.firstIP(), locked)
	batch.Queue(`
		INSERT INTO auth_source_counters (ip, channel)
		SELECT '10.0.0.0'::inet + ($2::bigint + n), 'password'
		FROM generate_series(0, $1::bigint - 1) n`,
		count, set.firstIP())
	batch.Queue(`
		INSERT INTO bench_usual_attempts (email, ip, locked_until)
		SELECT
			$1 || '-' || n || '@example.com',
			'10.0.0.0'::inet + ($3::bigint + n),
			CASE WHEN $4 THEN now() + interval '1 day' END
		FROM generate_series(0, $2::bigint - 1) n`,
		set.name, count, set.firstIP(), locked)
	if err := pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("failed to seed lockout keys %q: %w", set.name, err)
	}
	return nil
}
