package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// usual3Counter is one counter row of the usual3 design, as read under its
// row lock.
type usual3Counter struct {
	failures    int
	pending     int
	lockedUntil *time.Time
}

// usual3Limits are the thresholds of pgguard's default password policy:
// account and source, account, source.
var usual3Limits = [3]int{usualMaxFailures, 20, 100}

// usual3LockoutWorkloads returns the lockout operations written the usual
// way, read-modify-write transactions with SELECT ... FOR UPDATE and the
// decision in Go, but doing pgguard's logical work: three counters per
// login, each reserved before verifying so that attempts in flight count,
// and settled after. It shows what a careful application gets without
// pgguard's database functions.
func usual3LockoutWorkloads(pool *pgxpool.Pool) []*workload {
	beginFail := func(ctx context.Context, key int64) error {
		return usual3Login(ctx, pool, keysFail.email(key), keysFail.ip(key), false)
	}
	beginSucceed := func(ctx context.Context, key int64) error {
		return usual3Login(ctx, pool, keysSucceed.email(key), keysSucceed.ip(key), true)
	}
	beginLocked := func(ctx context.Context, key int64) error {
		key %= lockedKeys
		var locked bool
		err := pool.QueryRow(ctx, `
			SELECT coalesce((SELECT locked_until > now() FROM bench_usual3_accounts WHERE email = $1), false)
				OR coalesce((SELECT locked_until > now() FROM bench_usual3_pairs WHERE email = $1 AND ip = $2), false)
				OR coalesce((SELECT locked_until > now() FROM bench_usual3_sources WHERE ip = $2), false)`,
			keysLocked.email(key), keysLocked.ip(key),
		).Scan(&locked)
		if err != nil {
			return err
		}
		if !locked {
			return errors.New("a locked account was not locked")
		}
		return nil
	}
	return []*workload{
		{operation: opBeginFail, design: designUsual3, op: beginFail},
		{operation: opBeginSucceed, design: designUsual3, op: beginSucceed},
		{operation: opBeginLocked, design: designUsual3, op: beginLocked},
	}
}

// usual3Login reserves the attempt on the three counters, then settles it.
func usual3Login(ctx context.Context, pool *pgxpool.Pool, email, ip string, success bool) error {
	err := usual3Transact(ctx, pool, email, ip, func(counters *[3]usual3Counter, now time.Time) error {
		for i, counter := range counters {
			if counter.lockedUntil != nil && counter.lockedUntil.After(now) {
				return errors.New("account unexpectedly locked")
			}
			if counter.failures+counter.pending >= usual3Limits[i] {
				return errors.New("account unexpectedly saturated")
			}
		}
		for i := range counters {
			counters[i].pending++
		}
		return nil
	})
	if err != nil {
		return err
	}
	return usual3Transact(ctx, pool, email, ip, func(counters *[3]usual3Counter, now time.Time) error {
		for i := range counters {
			counter := &counters[i]
			counter.pending = max(counter.pending-1, 0)
			switch {
			case success && i == 0:
				counter.failures, counter.lockedUntil = 0, nil
			case success:
			case counter.failures+1 >= usual3Limits[i]:
				until := now.Add(usualLockDuration)
				counter.failures, counter.lockedUntil = 0, &until
			default:
				counter.failures++
			}
		}
		return nil
	})
}

// usual3Transact locks the account-and-source, account and source
// counters in that order, lets change modify them, and writes them back,
// all in one transaction: eight round trips.
func usual3Transact(ctx context.Context, pool *pgxpool.Pool, email, ip string, change func(*[3]usual3Counter, time.Time) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // After Commit it only returns ErrTxClosed.

	tables := [3]struct {
		read, write string
		key         []any
	}{
		{
			`SELECT failures, pending, locked_until, now() FROM bench_usual3_pairs WHERE email = $1 AND ip = $2 FOR UPDATE`,
			`UPDATE bench_usual3_pairs SET failures = $3, pending = $4, locked_until = $5, updated_at = now() WHERE email = $1 AND ip = $2`,
			[]any{email, ip},
		},
		{
			`SELECT failures, pending, locked_until, now() FROM bench_usual3_accounts WHERE email = $1 FOR UPDATE`,
			`UPDATE bench_usual3_accounts SET failures = $2, pending = $3, locked_until = $4, updated_at = now() WHERE email = $1`,
			[]any{email},
		},
		{
			`SELECT failures, pending, locked_until, now() FROM bench_usual3_sources WHERE ip = $1 FOR UPDATE`,
			`UPDATE bench_usual3_sources SET failures = $2, pending = $3, locked_until = $4, updated_at = now() WHERE ip = $1`,
			[]any{ip},
		},
	}

	var counters [3]usual3Counter
	var now time.Time
	for i, table := range tables {
		counter := &counters[i]
		err := tx.QueryRow(ctx, table.read, table.key...).Scan(&counter.failures, &counter.pending, &counter.lockedUntil, &now)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("counter %d of %s from %s was not seeded", i, email, ip)
		}
		if err != nil {
			return err
		}
	}
	if err := change(&counters, now); err != nil {
		return err
	}
	for i, table := range tables {
		counter := counters[i]
		args := append(table.key, counter.failures, counter.pending, counter.lockedUntil)
		if _, err := tx.Exec(ctx, table.write, args...); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// seedUsual3Keys creates the usual3 counters of keys 0 to count-1 of set.
// With locked, the account-and-source counters are locked for a day.
func seedUsual3Keys(ctx context.Context, pool *pgxpool.Pool, set keySet, count int64, locked bool) error {
	batch := &pgx.Batch{}
	batch.Queue(`
		INSERT INTO bench_usual3_accounts (email)
		SELECT $1 || '-' || n || '@example.com'
		FROM generate_series(0, $2::bigint - 1) n`,
		set.name, count)
	batch.Queue(`
		INSERT INTO bench_usual3_pairs (email, ip, locked_until)
		SELECT
			$1 || '-' || n || '@example.com',
			'10.0.0.0'::inet + ($3::bigint + n),
			CASE WHEN $4 THEN now() + interval '1 day' END
		FROM generate_series(0, $2::bigint - 1) n`,
		set.name, count, set.firstIP(), locked)
	batch.Queue(`
		INSERT INTO bench_usual3_sources (ip)
		SELECT '10.0.0.0'::inet + ($2::bigint + n)
		FROM generate_series(0, $1::bigint - 1) n`,
		count, set.firstIP())
	if err := pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("failed to seed usual3 keys %q: %w", set.name, err)
	}
	return nil
}
