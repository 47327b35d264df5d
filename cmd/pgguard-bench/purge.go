package main

import (
	"context"
	"fmt"
	"time"
)

// The matrix's purge deletes purgeRecords expired records in batches of
// purgeBatchSize, with one cleaner: a purge is a background job, so client
// counts do not apply to it.
const (
	purgeRecords   = 20000
	purgeBatchSize = 1000
)

// measurePurge seeds expired records and times Idempotency.PurgeExpired on
// them. Its ops are the DELETE statements, each timed by the tracer.
func measurePurge(ctx context.Context, env *benchEnv) (measurement, error) {
	if err := seedRecords(ctx, env.pool, "purge-", purgeRecords, true); err != nil {
		return measurement{}, err
	}

	counter := &roundTrips{}
	times := &statementTimes{}
	purgeCtx := withStatementTimes(withRoundTrips(ctx, counter), times)
	began := time.Now()
	deleted, err := env.idempotency.PurgeExpired(purgeCtx, purgeBatchSize)
	elapsed := time.Since(began)
	if err != nil {
		return measurement{}, err
	}
	if deleted != purgeRecords {
		return measurement{}, fmt.Errorf("purge deleted %d records, expected %d", deleted, purgeRecords)
	}

	batches := times.all()
	m := measurement{
		Operation:       opPurge,
		Design:          designPgguard,
		Clients:         1,
		Ops:             len(batches),
		Seconds:         elapsed.Seconds(),
		OpsPerSecond:    float64(len(batches)) / elapsed.Seconds(),
		P50Ms:           milliseconds(percentile(batches, 50)),
		P99Ms:           milliseconds(percentile(batches, 99)),
		RoundTripsPerOp: float64(counter.n.Load()) / float64(len(batches)),
		Rows:            deleted,
		BatchSize:       purgeBatchSize,
		RowsPerSecond:   float64(deleted) / elapsed.Seconds(),
	}
	env.progress("%-34s %-8s %3d clients %8.0f batches/s  p50 %6.2f ms  p99 %6.2f ms  %.0f rows/s",
		m.Operation, m.Design, m.Clients, m.OpsPerSecond, m.P50Ms, m.P99Ms, m.RowsPerSecond)
	return m, nil
}
