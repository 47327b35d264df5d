package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// The inserts of the purge case arrive at a fixed rate, well below what the
// machine can serve, as requests to an application do. Their latency then
// shows what the purge takes from them, not the length of a saturated
// queue.
const (
	scaleInsertRate    = 400 // ops per second, all clients together
	scaleInsertClients = 8
)

// purgeScaleResult compares first requests, which insert records, while a
// purge runs with the same requests without it.
type purgeScaleResult struct {
	Records     int     `json:"records"`
	Expired     int     `json:"expired"`
	SeedSeconds float64 `json:"seed_seconds"`
	// InsertRate is the rate the inserting clients aim at, in ops/s.
	InsertRate int          `json:"insert_rate"`
	Clients    int          `json:"clients"`
	Without    latencyStats `json:"inserts_without_purge"`
	During     latencyStats `json:"inserts_during_purge"`
	// P99Ratio is During.P99Ms divided by Without.P99Ms.
	P99Ratio      float64 `json:"p99_ratio"`
	PurgeSeconds  float64 `json:"purge_seconds"`
	PurgedRows    int64   `json:"purged_rows"`
	RowsPerSecond float64 `json:"purged_rows_per_second"`
	BatchSize     int     `json:"batch_size"`
	// Pause is the cleaner's pause after each full batch; "0s" for none.
	Pause              string  `json:"pause"`
	Batches            int     `json:"batches"`
	BatchP50Ms         float64 `json:"batch_p50_ms"`
	BatchP99Ms         float64 `json:"batch_p99_ms"`
	RoundTripsPerBatch float64 `json:"round_trips_per_batch"`
}

type latencyStats struct {
	Ops   int     `json:"ops"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
}

func statsOf(latencies []time.Duration) latencyStats {
	return latencyStats{
		Ops:   len(latencies),
		P50Ms: milliseconds(percentile(latencies, 50)),
		P99Ms: milliseconds(percentile(latencies, 99)),
	}
}

// measurePurgeAtScale fills idempotency_records up to opts.records rows,
// opts.expired of them expired, then times paced first requests for
// opts.insertTime, then again while one pass of an IdempotencyCleaner,
// with opts.purgeBatch and opts.purgePause, deletes the expired rows.
func measurePurgeAtScale(ctx context.Context, env *benchEnv, opts scaleOptions) (*purgeScaleResult, error) {
	records, expired := opts.records, opts.expired
	env.progress("Scale: seeding %d idempotency records, %d of them expired", records, expired)
	cleaner, err := service.NewIdempotencyCleaner(env.idempotency, service.IdempotencyCleanerConfig{
		BatchSize:  opts.purgeBatch,
		BatchPause: opts.purgePause,
	})
	if err != nil {
		return nil, err
	}
	result := &purgeScaleResult{
		Records:    records,
		Expired:    expired,
		InsertRate: scaleInsertRate,
		Clients:    scaleInsertClients,
		BatchSize:  opts.purgeBatch,
		Pause:      max(cleaner.Config().BatchPause, 0).String(),
	}
	began := time.Now()
	if err := seedRecords(ctx, env.pool, "scale-expired-", int64(expired), true); err != nil {
		return nil, err
	}
	if err := seedRecords(ctx, env.pool, "scale-live-", int64(records-expired), false); err != nil {
		return nil, err
	}
	if _, err := env.pool.Exec(ctx, `ANALYZE idempotency_records`); err != nil {
		return nil, err
	}
	// Write the seeded rows out now, so that the checkpoint they would
	// cause does not land in either measurement.
	if _, err := env.pool.Exec(ctx, `CHECKPOINT`); err != nil {
		env.progress("Scale: CHECKPOINT failed, so a checkpoint may fall into a measurement: %v", err)
	}
	result.SeedSeconds = time.Since(began).Seconds()

	insert := firstRequestWorkload(env.idempotency, "scale-first-")
	env.progress("Scale: %d inserts/s for %s without a purge", scaleInsertRate, opts.insertTime)
	stop := make(chan struct{})
	time.AfterFunc(opts.insertTime, func() { close(stop) })
	without, err := runPaced(ctx, insert, scaleInsertClients, scaleInsertRate, stop)
	if err != nil {
		return nil, err
	}
	result.Without = statsOf(without)

	env.progress("Scale: %d inserts/s while purging %d expired records", scaleInsertRate, expired)
	counter := &roundTrips{}
	times := &statementTimes{}
	purgeCtx := withStatementTimes(withRoundTrips(ctx, counter), times)
	stop = make(chan struct{})
	var purgeErr error
	go func() {
		defer close(stop)
		began := time.Now()
		result.PurgedRows, purgeErr = cleaner.PurgeOnce(purgeCtx)
		result.PurgeSeconds = time.Since(began).Seconds()
	}()
	during, err := runPaced(ctx, insert, scaleInsertClients, scaleInsertRate, stop)
	<-stop
	if err != nil {
		return nil, err
	}
	if purgeErr != nil {
		return nil, purgeErr
	}
	result.During = statsOf(during)

	batches := times.all()
	result.Batches = len(batches)
	result.BatchP50Ms = milliseconds(percentile(batches, 50))
	result.BatchP99Ms = milliseconds(percentile(batches, 99))
	result.RoundTripsPerBatch = float64(counter.n.Load()) / float64(len(batches))
	result.RowsPerSecond = float64(result.PurgedRows) / result.PurgeSeconds
	result.P99Ratio = result.During.P99Ms / result.Without.P99Ms
	return result, nil
}

// seedRecords inserts count completed records keyed "<prefix><n>". Expired
// records expired between one and two days ago; the others expire between
// one hour and one day from now, after any run.
func seedRecords(ctx context.Context, db *pgxpool.Pool, prefix string, count int64, expired bool) error {
	_, err := db.Exec(ctx, `
		INSERT INTO idempotency_records (
			key, route, scope, request_hash, state,
			response_status, response_headers, response_body_json,
			created_at, completed_at, expires_at
		)
		SELECT
			$1 || n, 'POST /orders', 'org:org-' || n % 100, 'v2:' || md5(n::text) || md5(n::text), 'completed',
			201, '{"Content-Type":["application/json"]}', '{"id":' || n || ',"status":"created"}',
			now() - interval '1 day', now() - interval '1 day',
			CASE WHEN $3 THEN now() - interval '2 days' ELSE now() + interval '1 hour' END
				+ n * interval '23 hours' / $2::bigint
		FROM generate_series(0, $2::bigint - 1) n`,
		prefix, count, expired)
	if err != nil {
		return fmt.Errorf("failed to seed idempotency records: %w", err)
	}
	return nil
}

// runPaced runs ops of w at rate ops per second, spread evenly over
// clients goroutines, until stop is closed, and returns their latencies.
// Each latency runs from the time the op was due, so an op that starts
// late because the previous one ran long counts its wait.
func runPaced(ctx context.Context, w *workload, clients, rate int, stop <-chan struct{}) ([]time.Duration, error) {
	interval := time.Duration(float64(time.Second) * float64(clients) / float64(rate))
	start := time.Now()

	var mu sync.Mutex
	var latencies []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	for client := range clients {
		wg.Go(func() {
			due := start.Add(interval * time.Duration(client) / time.Duration(clients))
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-time.After(time.Until(due)):
				}
				err := w.op(ctx, w.nextKey())
				took := time.Since(due)

				mu.Lock()
				latencies = append(latencies, took)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				if err != nil {
					return
				}
				due = due.Add(interval)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return latencies, ctx.Err()
}

func printPurgeAtScale(w io.Writer, r *purgeScaleResult) {
	fmt.Fprintf(w, "  purge of %d expired records out of %d (seeded in %.0f s) while %d clients insert %d first requests/s:\n",
		r.Expired, r.Records, r.SeedSeconds, r.Clients, r.InsertRate)
	fmt.Fprintf(w, "    inserts without purge: %d ops, p50 %.2f ms, p99 %.2f ms\n", r.Without.Ops, r.Without.P50Ms, r.Without.P99Ms)
	fmt.Fprintf(w, "    inserts during purge:  %d ops, p50 %.2f ms, p99 %.2f ms   p99 ratio %.2f\n", r.During.Ops, r.During.P50Ms, r.During.P99Ms, r.P99Ratio)
	fmt.Fprintf(w, "    purge: %d rows in %.1f s (%.0f rows/s), %d batches of up to %d, pause %s, batch p50 %.2f ms, p99 %.2f ms, %.2f round trips per batch\n",
		r.PurgedRows, r.PurgeSeconds, r.RowsPerSecond, r.Batches, r.BatchSize, r.Pause, r.BatchP50Ms, r.BatchP99Ms, r.RoundTripsPerBatch)
}
