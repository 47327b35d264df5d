package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// benchEnv holds what the workloads of one run share: one pool, the
// services built on it, and the Redis connections.
type benchEnv struct {
	db          *scratchDatabase
	pool        *pgxpool.Pool
	lockout     *service.Lockout
	idempotency *service.Idempotency
	// redis is nil when the run skips the Redis reference.
	redis *redisPool
	// cpu reads the CPU time of the pool's backends; nil when it cannot.
	cpu         *serverCPU
	runID       string
	environment environment
	progress    func(format string, args ...any)
}

// poolHeadroom is how many connections the pool keeps beyond the largest
// client count, for the scale cases' background purge.
const poolHeadroom = 4

// openBenchEnv connects to the scratch database and Redis, builds the
// services with their default configuration and seeds the rows the
// workloads expect.
func openBenchEnv(ctx context.Context, db *scratchDatabase, opts options) (*benchEnv, error) {
	env := &benchEnv{
		db:       db,
		runID:    strings.ToLower(rand.Text()[:8]),
		progress: func(format string, args ...any) { progressf(opts, format, args...) },
	}
	var err error
	if env.pool, err = openPool(ctx, db.url, maxClients(opts)+poolHeadroom); err != nil {
		return nil, err
	}
	if env.cpu, err = newServerCPU(ctx, env.pool, maxClients(opts)+poolHeadroom); err != nil {
		env.close()
		return nil, err
	}
	if env.environment, err = describeEnvironment(ctx, env.pool); err != nil {
		env.close()
		return nil, fmt.Errorf("failed to read the server's version and settings: %w", err)
	}
	env.environment.DatabaseOn = db.server.Source

	if env.lockout, err = service.NewLockout(env.pool, service.LockoutConfig{}); err != nil {
		env.close()
		return nil, err
	}
	if env.idempotency, err = service.NewIdempotency(env.pool, service.IdempotencyConfig{}); err != nil {
		env.close()
		return nil, err
	}

	if opts.redisAddr != "" {
		if env.redis, err = openRedisPool(ctx, opts.redisAddr, maxClients(opts)); err != nil {
			env.close()
			return nil, fmt.Errorf("%w; pass -redis '' to skip the Redis reference", err)
		}
		env.environment.Redis = env.redis.version
	}

	if err := env.seed(ctx, keysNeeded(opts)); err != nil {
		env.close()
		return nil, err
	}
	return env, nil
}

// seed creates the rows the workloads read and update, then refreshes the
// planner's statistics, which the server would otherwise gather only with
// autovacuum on.
func (e *benchEnv) seed(ctx context.Context, keys int64) error {
	e.progress("Seeding %d keys per workload", keys)
	if err := seedLockoutKeys(ctx, e.pool, keysFail, keys, false); err != nil {
		return err
	}
	if err := seedLockoutKeys(ctx, e.pool, keysSucceed, keys, false); err != nil {
		return err
	}
	if err := seedLockoutKeys(ctx, e.pool, keysLocked, lockedKeys, true); err != nil {
		return err
	}
	if err := seedUsual3Keys(ctx, e.pool, keysFail, keys, false); err != nil {
		return err
	}
	if err := seedUsual3Keys(ctx, e.pool, keysSucceed, keys, false); err != nil {
		return err
	}
	if err := seedUsual3Keys(ctx, e.pool, keysLocked, lockedKeys, true); err != nil {
		return err
	}
	if err := seedFloorKeys(ctx, e.pool, keys); err != nil {
		return err
	}
	if err := seedIdempotencyKeys(ctx, e.pool, storedKeys); err != nil {
		return err
	}
	if e.redis != nil {
		if err := seedRedisLocks(ctx, e.redis, e.runID); err != nil {
			return err
		}
	}
	if _, err := e.pool.Exec(ctx, `ANALYZE`); err != nil {
		return fmt.Errorf("failed to analyze the seeded tables: %w", err)
	}
	return nil
}

// workloads returns every workload of the matrix: the floor first, then
// each operation's designs.
func (e *benchEnv) workloads() []*workload {
	all := floorWorkloads(e.pool)
	all = append(all, pgguardLockoutWorkloads(e.lockout)...)
	all = append(all, usualLockoutWorkloads(e.pool)...)
	all = append(all, usual3LockoutWorkloads(e.pool)...)
	if e.redis != nil {
		all = append(all, redisWorkloads(e.redis, e.runID)...)
	}
	all = append(all, pgguardIdempotencyWorkloads(e.idempotency)...)
	all = append(all, usualIdempotencyWorkloads(e.pool)...)
	return all
}

func (e *benchEnv) close() {
	if e.redis != nil {
		e.redis.close()
	}
	if e.pool != nil {
		e.pool.Close()
	}
}
