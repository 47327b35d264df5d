package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/service"
)

// manySourcesOps is how many times each call of the many-sources case is
// timed per email, after manySourcesWarmup untimed rounds.
const (
	manySourcesOps    = 1000
	manySourcesWarmup = 50
)

// manySourcesResult compares the calls of one email that many sources
// failed against with those of an email that one source failed against.
// Both accounts are in the same state otherwise: account-locked, with the
// owner's source known and spared by that lock.
type manySourcesResult struct {
	Sources int `json:"sources"`
	Ops     int `json:"ops_per_call_and_email"`
	// OwnerBegin is Begin from the owner's known source, which the
	// account's locks spare, so it takes the whole reservation path.
	OwnerBegin comparison `json:"owner_begin"`
	// OwnerCancel settles that attempt.
	OwnerCancel comparison `json:"owner_cancel"`
	// AttackerBegin is Begin from a new source, which the account lock
	// rejects.
	AttackerBegin comparison `json:"attacker_begin"`
}

// comparison holds the latencies of one call for the email with one
// source and for the email with many.
type comparison struct {
	OneSourceP50Ms   float64 `json:"one_source_p50_ms"`
	OneSourceP99Ms   float64 `json:"one_source_p99_ms"`
	ManySourcesP50Ms float64 `json:"many_sources_p50_ms"`
	ManySourcesP99Ms float64 `json:"many_sources_p99_ms"`
	// Ratio is ManySourcesP50Ms divided by OneSourceP50Ms.
	Ratio float64 `json:"p50_ratio"`
}

func compare(one, many []time.Duration) comparison {
	c := comparison{
		OneSourceP50Ms:   milliseconds(percentile(one, 50)),
		OneSourceP99Ms:   milliseconds(percentile(one, 99)),
		ManySourcesP50Ms: milliseconds(percentile(many, 50)),
		ManySourcesP99Ms: milliseconds(percentile(many, 99)),
	}
	c.Ratio = c.ManySourcesP50Ms / c.OneSourceP50Ms
	return c
}

// measureManySources seeds keysWide's account with sources failed
// attempts, one from each source, and keysNarrow's with one. It then times
// both accounts' calls on one client, alternating between the accounts so
// that any drift of the machine affects both alike.
func measureManySources(ctx context.Context, env *benchEnv, sources int) (*manySourcesResult, error) {
	env.progress("Scale: Begin on an email that %d sources failed against, and on one with 1 source", sources)
	if err := seedFailedSources(ctx, env, keysWide, sources); err != nil {
		return nil, err
	}
	if err := seedFailedSources(ctx, env, keysNarrow, 1); err != nil {
		return nil, err
	}
	if _, err := env.pool.Exec(ctx, `ANALYZE`); err != nil {
		return nil, err
	}

	sets := []keySet{keysNarrow, keysWide}
	var ownerBegin, ownerCancel, attackerBegin [2][]time.Duration
	// Each attacker Begin comes from a source never seen before, numbered
	// after the seeded ones.
	attacker := int64(sources)
	for round := -manySourcesWarmup; round < manySourcesOps; round++ {
		for i, set := range sets {
			begin, cancel, err := timeOwnerLogin(ctx, env.lockout, set)
			if err != nil {
				return nil, err
			}
			attacker++
			rejected, err := timeAttackerBegin(ctx, env.lockout, set, keysAttacker.ip(attacker))
			if err != nil {
				return nil, err
			}
			if round >= 0 {
				ownerBegin[i] = append(ownerBegin[i], begin)
				ownerCancel[i] = append(ownerCancel[i], cancel)
				attackerBegin[i] = append(attackerBegin[i], rejected)
			}
		}
	}

	return &manySourcesResult{
		Sources:       sources,
		Ops:           manySourcesOps,
		OwnerBegin:    compare(ownerBegin[0], ownerBegin[1]),
		OwnerCancel:   compare(ownerCancel[0], ownerCancel[1]),
		AttackerBegin: compare(attackerBegin[0], attackerBegin[1]),
	}, nil
}

// timeOwnerLogin times Begin from the owner's known source and the Cancel
// that settles it.
func timeOwnerLogin(ctx context.Context, lockout *service.Lockout, set keySet) (time.Duration, time.Duration, error) {
	began := time.Now()
	attempt, err := lockout.Begin(ctx, service.ChannelPassword, set.email(0), set.ip(0))
	begin := time.Since(began)
	if err != nil {
		return 0, 0, fmt.Errorf("Begin from the owner's known source returned %w; the account's locks should spare it", err)
	}

	began = time.Now()
	if err := attempt.Cancel(ctx); err != nil {
		return 0, 0, err
	}
	return begin, time.Since(began), nil
}

func timeAttackerBegin(ctx context.Context, lockout *service.Lockout, set keySet, ip string) (time.Duration, error) {
	began := time.Now()
	_, err := lockout.Begin(ctx, service.ChannelPassword, set.email(0), ip)
	took := time.Since(began)
	if !errors.Is(err, service.ErrLocked) {
		return 0, fmt.Errorf("Begin from a new source on a locked account returned %v, expected a *LockedError", err)
	}
	return took, nil
}

// seedFailedSources stores what failures from sources attacker sources
// against set's account leave behind: a counter per source with one
// failure and an account-wide lock. The owner logged in from set.ip(0)
// before, so that source is known and has its own counters, and the
// owner's successes ended each streak before it reached the hard lock,
// which would reject the owner too.
func seedFailedSources(ctx context.Context, env *benchEnv, set keySet, sources int) error {
	email, owner := set.email(0), set.ip(0)
	batch := &pgx.Batch{}
	batch.Queue(`
		INSERT INTO auth_attempts (email, ip, channel, failures_count)
		SELECT $1, '10.0.0.0'::inet + ($2::bigint + n), 'password', 1
		FROM generate_series(0, $3::bigint - 1) n`,
		email, keysAttacker.firstIP(), sources)
	batch.Queue(`
		INSERT INTO auth_source_counters (ip, channel, failures_count)
		SELECT '10.0.0.0'::inet + ($1::bigint + n), 'password', 1
		FROM generate_series(0, $2::bigint - 1) n
		ON CONFLICT DO NOTHING`,
		keysAttacker.firstIP(), sources)
	batch.Queue(`
		INSERT INTO auth_account_counters (email, channel, lock_count, locked_until)
		VALUES ($1, 'password', 1, now() + interval '1 day')`,
		email)
	batch.Queue(`INSERT INTO auth_attempts (email, ip, channel) VALUES ($1, $2, 'password')`, email, owner)
	batch.Queue(`INSERT INTO auth_source_counters (ip, channel) VALUES ($1, 'password')`, owner)
	batch.Queue(`INSERT INTO auth_known_sources (email, ip, last_success_at) VALUES ($1, $2, now())`, email, owner)
	if err := env.pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("failed to seed %d failed sources: %w", sources, err)
	}
	return nil
}

func printManySources(w io.Writer, r *manySourcesResult) {
	fmt.Fprintf(w, "  %d sources failed against one email vs 1 source (1 client, %d calls each, p50 / p99 ms):\n", r.Sources, r.Ops)
	for _, row := range []struct {
		name string
		c    comparison
	}{
		{"owner Begin (known source, full path)", r.OwnerBegin},
		{"owner Cancel", r.OwnerCancel},
		{"attacker Begin (new source, locked)", r.AttackerBegin},
	} {
		fmt.Fprintf(w, "    %-42s 1 source %.3f / %.3f   %d sources %.3f / %.3f   p50 ratio %.2f\n",
			row.name, row.c.OneSourceP50Ms, row.c.OneSourceP99Ms, r.Sources, row.c.ManySourcesP50Ms, row.c.ManySourcesP99Ms, row.c.Ratio)
	}
}
