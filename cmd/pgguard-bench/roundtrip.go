package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// roundTrips counts the database round trips of the operations that carry
// it in their context. Workloads read it before and after each operation.
type roundTrips struct {
	n atomic.Int64
	// prepares counts the statements pgx prepared, one round trip each,
	// apart from n: pgx prepares a statement once per connection and
	// reuses it, so prepares measure how warm the pool is rather than the
	// cost of an operation.
	prepares atomic.Int64
}

type roundTripsKey struct{}

// withRoundTrips returns ctx carrying counter, so that every query, batch
// and prepare sent with ctx, or with a context derived from it, is counted.
func withRoundTrips(ctx context.Context, counter *roundTrips) context.Context {
	return context.WithValue(ctx, roundTripsKey{}, counter)
}

// countRoundTrip adds one round trip to the counter in ctx, if any. The
// Redis client calls it for each command; pgx calls it through
// roundTripTracer.
func countRoundTrip(ctx context.Context) {
	if counter, ok := ctx.Value(roundTripsKey{}).(*roundTrips); ok {
		counter.n.Add(1)
	}
}

// statementTimes records the duration of each statement sent with a
// context that carries it, for example each DELETE of a purge.
type statementTimes struct {
	mu        sync.Mutex
	durations []time.Duration
}

func (t *statementTimes) add(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.durations = append(t.durations, d)
}

func (t *statementTimes) all() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Duration(nil), t.durations...)
}

type statementTimesKey struct{}

type statementStartKey struct{}

func withStatementTimes(ctx context.Context, times *statementTimes) context.Context {
	return context.WithValue(ctx, statementTimesKey{}, times)
}

// roundTripTracer counts round trips for pgx. Query, QueryRow and Exec
// each send one request and wait for its response. A batch is sent in one
// go and its results read back together, so it counts once, however many
// statements it holds. Prepares are counted apart.
type roundTripTracer struct{}

var (
	_ pgx.QueryTracer   = roundTripTracer{}
	_ pgx.BatchTracer   = roundTripTracer{}
	_ pgx.PrepareTracer = roundTripTracer{}
)

func (roundTripTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	countRoundTrip(ctx)
	if _, ok := ctx.Value(statementTimesKey{}).(*statementTimes); ok {
		ctx = context.WithValue(ctx, statementStartKey{}, time.Now())
	}
	return ctx
}

func (roundTripTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	times, ok := ctx.Value(statementTimesKey{}).(*statementTimes)
	if !ok {
		return
	}
	start, ok := ctx.Value(statementStartKey{}).(time.Time)
	if !ok {
		return
	}
	times.add(time.Since(start))
}

func (roundTripTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	countRoundTrip(ctx)
	return ctx
}

func (roundTripTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (roundTripTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (roundTripTracer) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	if counter, ok := ctx.Value(roundTripsKey{}).(*roundTrips); ok {
		counter.prepares.Add(1)
	}
	return ctx
}

func (roundTripTracer) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}
