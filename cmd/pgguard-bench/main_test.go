package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

type testBundle struct {
	ctx         context.Context
	pool        *pgxpool.Pool
	lockout     *service.Lockout
	idempotency *service.Idempotency
}

// setup returns a migrated database with the baselines' tables, a pool
// that counts round trips, and the keys of the workloads seeded.
func setup(t *testing.T) *testBundle {
	t.Helper()

	db := pgtest.New(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, db.URL)
	require.NoError(t, err)
	require.NoError(t, execScript(ctx, conn, benchTablesSQL))
	require.NoError(t, conn.Close(ctx))

	pool, err := openPool(ctx, db.URL, 2)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	require.NoError(t, seedLockoutKeys(ctx, pool, keysFail, 10, false))
	require.NoError(t, seedLockoutKeys(ctx, pool, keysSucceed, 10, false))
	require.NoError(t, seedLockoutKeys(ctx, pool, keysLocked, lockedKeys, true))
	require.NoError(t, seedUsual3Keys(ctx, pool, keysFail, 10, false))
	require.NoError(t, seedUsual3Keys(ctx, pool, keysSucceed, 10, false))
	require.NoError(t, seedUsual3Keys(ctx, pool, keysLocked, lockedKeys, true))
	require.NoError(t, seedFloorKeys(ctx, pool, 10))
	require.NoError(t, seedIdempotencyKeys(ctx, pool, 10))

	lockout, err := service.NewLockout(pool, service.LockoutConfig{})
	require.NoError(t, err)
	idempotency, err := service.NewIdempotency(pool, service.IdempotencyConfig{})
	require.NoError(t, err)
	return &testBundle{ctx: ctx, pool: pool, lockout: lockout, idempotency: idempotency}
}

// countRoundTrips runs fn with a fresh counter and returns the round trips
// it counted. Prepares are counted apart, so the first use of a statement
// on a connection counts the same as later ones.
func (b *testBundle) countRoundTrips(t *testing.T, fn func(ctx context.Context) error) int64 {
	t.Helper()
	counter := &roundTrips{}
	require.NoError(t, fn(withRoundTrips(b.ctx, counter)))
	return counter.n.Load()
}

// workloadOf returns the workload of operation and design from workloads.
func workloadOf(t *testing.T, workloads []*workload, operation, design string) *workload {
	t.Helper()
	for _, w := range workloads {
		if w.operation == operation && w.design == design {
			return w
		}
	}
	t.Fatalf("no workload %q of design %q", operation, design)
	return nil
}

func TestLockoutRoundTrips(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var attempt *service.Attempt
	begin := func(key int64) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			var err error
			attempt, err = b.lockout.Begin(ctx, service.ChannelPassword, keysFail.email(key), keysFail.ip(key))
			return err
		}
	}

	require.Equal(t, int64(1), b.countRoundTrips(t, begin(0)), "Begin")
	require.Equal(t, int64(1), b.countRoundTrips(t, func(ctx context.Context) error {
		_, err := attempt.Fail(ctx)
		return err
	}), "Fail")
	require.Equal(t, int64(1), b.countRoundTrips(t, begin(1)), "Begin")
	require.Equal(t, int64(1), b.countRoundTrips(t, attempt.Succeed), "Succeed")
	require.Equal(t, int64(1), b.countRoundTrips(t, begin(2)), "Begin")
	require.Equal(t, int64(1), b.countRoundTrips(t, attempt.Cancel), "Cancel")

	locked := b.countRoundTrips(t, func(ctx context.Context) error {
		_, err := b.lockout.Begin(ctx, service.ChannelPassword, keysLocked.email(0), keysLocked.ip(0))
		if !errors.Is(err, service.ErrLocked) {
			return errors.New("Begin of a seeded locked key was not locked")
		}
		return nil
	})
	require.Equal(t, int64(1), locked, "Begin while locked")
}

func TestIdempotencyRoundTrips(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var claim *service.Claim
	require.Equal(t, int64(1), b.countRoundTrips(t, func(ctx context.Context) error {
		var err error
		claim, _, err = b.idempotency.Begin(ctx, orderRequest(keyPrefixFirst, 0))
		return err
	}), "Begin of a new key")
	require.NotNil(t, claim)
	require.Equal(t, int64(1), b.countRoundTrips(t, func(ctx context.Context) error {
		return claim.Complete(ctx, orderResponse(0))
	}), "Complete")

	workloads := pgguardIdempotencyWorkloads(b.idempotency)
	for _, operation := range []string{opReplay, opInFlight} {
		w := workloadOf(t, workloads, operation, designPgguard)
		require.Equal(t, int64(1), b.countRoundTrips(t, func(ctx context.Context) error { return w.op(ctx, 3) }), operation)
	}
}

// TestBaselineRoundTrips pins the round trips of the designs pgguard is
// compared with, so that a change to them shows in review.
func TestBaselineRoundTrips(t *testing.T) {
	t.Parallel()
	b := setup(t)

	cases := []struct {
		workloads []*workload
		operation string
		design    string
		want      int64
	}{
		{floorWorkloads(b.pool), opFloorUpsert, designFloor, 1},
		{floorWorkloads(b.pool), opFloorSelect, designFloor, 1},
		{floorWorkloads(b.pool), opFloorSelectRecord, designFloor, 1},
		// Check, then BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT.
		{usualLockoutWorkloads(b.pool), opBeginFail, designUsual, 5},
		{usualLockoutWorkloads(b.pool), opBeginSucceed, designUsual, 5},
		{usualLockoutWorkloads(b.pool), opBeginLocked, designUsual, 1},
		// Twice BEGIN, three SELECT ... FOR UPDATE, three UPDATE, COMMIT.
		{usual3LockoutWorkloads(b.pool), opBeginFail, designUsual3, 16},
		{usual3LockoutWorkloads(b.pool), opBeginSucceed, designUsual3, 16},
		{usual3LockoutWorkloads(b.pool), opBeginLocked, designUsual3, 1},
		// BEGIN, SELECT ... FOR UPDATE, INSERT, COMMIT, then UPDATE.
		{usualIdempotencyWorkloads(b.pool), opFirstRequest, designUsual, 5},
		// BEGIN, SELECT ... FOR UPDATE, COMMIT.
		{usualIdempotencyWorkloads(b.pool), opReplay, designUsual, 3},
		{usualIdempotencyWorkloads(b.pool), opInFlight, designUsual, 3},
	}
	for _, c := range cases {
		w := workloadOf(t, c.workloads, c.operation, c.design)
		got := b.countRoundTrips(t, func(ctx context.Context) error { return w.op(ctx, 4) })
		require.Equal(t, c.want, got, "%s (%s)", c.operation, c.design)
	}
}

func TestRoundTripTracerCountsBatchOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)

	got := b.countRoundTrips(t, func(ctx context.Context) error {
		batch := &pgx.Batch{}
		batch.Queue(`SELECT 1`)
		batch.Queue(`SELECT 2`)
		batch.Queue(`SELECT 3`)
		return b.pool.SendBatch(ctx, batch).Close()
	})
	require.Equal(t, int64(1), got)
}

func TestSeededKeysMatchWorkloadKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)

	// Begin of a seeded key finds its rows: it inserts none.
	var before, after int
	count := `SELECT (SELECT count(*) FROM auth_attempts) + (SELECT count(*) FROM auth_source_counters) + (SELECT count(*) FROM auth_account_counters)`
	require.NoError(t, b.pool.QueryRow(b.ctx, count).Scan(&before))
	attempt, err := b.lockout.Begin(b.ctx, service.ChannelPassword, keysFail.email(9), keysFail.ip(9))
	require.NoError(t, err)
	require.NoError(t, attempt.Cancel(b.ctx))
	require.NoError(t, b.pool.QueryRow(b.ctx, count).Scan(&after))
	require.Equal(t, before, after)
}

func TestRedisWorkloadsRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	addr := startFakeRedis(t)

	pool, err := openRedisPool(ctx, addr, 1)
	require.NoError(t, err)
	t.Cleanup(pool.close)
	require.Equal(t, "7.0-fake", pool.version)
	require.NoError(t, seedRedisLocks(ctx, pool, "test"))

	want := map[string]int64{opBeginFail: 2, opBeginSucceed: 2, opBeginLocked: 1}
	for _, w := range redisWorkloads(pool, "test") {
		counter := &roundTrips{}
		require.NoError(t, w.op(withRoundTrips(ctx, counter), 0), w.operation)
		require.Equal(t, want[w.operation], counter.n.Load(), w.operation)
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()

	durations := make([]time.Duration, 100)
	for i := range durations {
		durations[i] = time.Duration(100-i) * time.Millisecond
	}
	cases := []struct {
		p    float64
		want time.Duration
	}{
		{50, 50 * time.Millisecond},
		{99, 99 * time.Millisecond},
		{100, 100 * time.Millisecond},
		{0, time.Millisecond},
	}
	for _, c := range cases {
		require.Equal(t, c.want, percentile(durations, c.p), "p%v", c.p)
	}
	require.Equal(t, time.Duration(0), percentile(nil, 50))
}

func TestParseClients(t *testing.T) {
	t.Parallel()

	clients, err := parseClients("1, 4,16")
	require.NoError(t, err)
	require.Equal(t, []int{1, 4, 16}, clients)

	for _, invalid := range []string{"", "0", "4,x", "-1"} {
		_, err := parseClients(invalid)
		require.Error(t, err, invalid)
	}
}

// TestRunWritesReport runs the whole command with tiny sizes, including the
// scale cases and the harness timing, and checks the JSON report.
func TestRunWritesReport(t *testing.T) {
	t.Parallel()
	jsonPath := filepath.Join(t.TempDir(), "bench.json")

	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{
		"-ops", "20", "-clients", "1,2", "-redis", "", "-json", jsonPath, "-clones", "2",
		"-scale-sources", "20", "-scale-records", "200", "-scale-expired", "150",
		"-scale-accounts", "40", "-scale-insert-time", "200ms",
	}, &stdout, &stderr)
	require.Equal(t, 0, code, "stderr: %s", stderr.String())
	require.Contains(t, stdout.String(), "Targets")

	data, err := os.ReadFile(jsonPath)
	require.NoError(t, err)
	var result report
	require.NoError(t, json.Unmarshal(data, &result))

	// Every workload at both client counts, and the purge once.
	require.Len(t, result.Results, 2*18+1)
	replay := result.find(opReplay, designPgguard, 1)
	require.NotNil(t, replay)
	require.NotNil(t, replay.Ratios)
	require.Equal(t, opFloorSelectRecord, replay.Ratios.Floor)
	require.Equal(t, 1.0, replay.RoundTripsPerOp)

	require.NotNil(t, result.Harness)
	require.Equal(t, 2, result.Harness.Clones)
	require.NotNil(t, result.Scale)
	require.Equal(t, int64(150), result.Scale.Purge.PurgedRows)
	require.Len(t, result.Scale.Spraying.Windows, sprayingWindows)
	require.NotEmpty(t, result.Targets)
}
