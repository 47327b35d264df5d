package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Designs compared in one run.
const (
	designPgguard = "pgguard"
	designFloor   = "floor"
	designUsual   = "usual"
	designUsual3  = "usual3"
	designRedis   = "redis"
)

// workload is one logical operation that clients repeat.
type workload struct {
	// operation names what one op does, for example "lockout Begin+Fail".
	// Workloads of different designs that do the same logical work share
	// it, so their figures can be compared.
	operation string
	design    string
	// op runs operation number key. Every call gets a number no other
	// call of this workload in this run gets, so workloads can derive
	// distinct keys from it. op returns an error when the operation did
	// not take the path the workload measures, for example a Begin that
	// found a lock where none was expected.
	op func(ctx context.Context, key int64) error

	keys atomic.Int64
}

// nextKey returns a key number no earlier call returned.
func (w *workload) nextKey() int64 {
	return w.keys.Add(1) - 1
}

// measurement is the outcome of one workload at one number of clients.
type measurement struct {
	Operation    string  `json:"operation"`
	Design       string  `json:"design"`
	Clients      int     `json:"clients"`
	Ops          int     `json:"ops"`
	Seconds      float64 `json:"seconds"`
	OpsPerSecond float64 `json:"ops_per_second"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	// RoundTripsPerOp is the mean number of round trips of the measured
	// ops; MinRoundTrips and MaxRoundTrips show whether every op took the
	// same number.
	RoundTripsPerOp float64 `json:"round_trips_per_op"`
	MinRoundTrips   int64   `json:"min_round_trips"`
	MaxRoundTrips   int64   `json:"max_round_trips"`
	// ServerCPUMicros is the CPU time the pool's Postgres backends used
	// per op, in microseconds; 0 when the server's processes cannot be
	// read (see serverCPU).
	ServerCPUMicros float64 `json:"server_cpu_us_per_op,omitempty"`
	// Prepares counts statements prepared during the measured ops, one
	// extra round trip each; 0 once every connection of the pool has run
	// the workload's statements.
	Prepares int64 `json:"prepares"`

	// Ratios compare a pgguard measurement with the other designs.
	Ratios *ratios `json:"ratios,omitempty"`

	// Rows, BatchSize and RowsPerSecond describe a purge, whose ops are
	// DELETE statements of up to BatchSize rows each.
	Rows          int64   `json:"rows,omitempty"`
	BatchSize     int     `json:"batch_size,omitempty"`
	RowsPerSecond float64 `json:"rows_per_second,omitempty"`
}

// warmupOps returns how many unmeasured ops run before a measurement at
// this many clients: enough for every pooled connection to prepare the
// workload's statements, so that the measured ops see a warm statement
// cache, as a long-running application does.
func warmupOps(clients int) int {
	return max(50, 4*clients)
}

// measure runs warmupOps(clients) ops of w and then ops more, spread over
// clients goroutines that each run one op at a time, and returns the
// figures of the measured ops. cpu may be nil.
func measure(ctx context.Context, w *workload, clients, ops int, cpu *serverCPU) (measurement, error) {
	if _, err := runOps(ctx, w, clients, warmupOps(clients)); err != nil {
		return measurement{}, fmt.Errorf("warm-up: %w", err)
	}
	cpuBefore, cpuKnown := cpu.used()
	run, err := runOps(ctx, w, clients, ops)
	if err != nil {
		return measurement{}, err
	}
	cpuAfter, cpuKnownAfter := cpu.used()

	m := measurement{
		Operation:     w.operation,
		Design:        w.design,
		Clients:       clients,
		Ops:           ops,
		Seconds:       run.elapsed.Seconds(),
		OpsPerSecond:  float64(ops) / run.elapsed.Seconds(),
		P50Ms:         milliseconds(percentile(run.latencies, 50)),
		P99Ms:         milliseconds(percentile(run.latencies, 99)),
		MinRoundTrips: slices.Min(run.roundTrips),
		MaxRoundTrips: slices.Max(run.roundTrips),
		Prepares:      run.prepares,
	}
	var total int64
	for _, n := range run.roundTrips {
		total += n
	}
	m.RoundTripsPerOp = float64(total) / float64(ops)
	if cpuKnown && cpuKnownAfter {
		m.ServerCPUMicros = float64(cpuAfter-cpuBefore) / float64(time.Microsecond) / float64(ops)
	}
	return m, nil
}

// opsRun holds the raw figures of runOps, one entry per op.
type opsRun struct {
	began      time.Time
	elapsed    time.Duration
	prepares   int64
	latencies  []time.Duration
	roundTrips []int64
	// finished is when each op ended, counted from the start of the run.
	finished []time.Duration
}

// runOps runs ops ops of w over clients goroutines. The goroutines start
// together and take op numbers from a shared counter, so a slow client
// does not hold the others back.
func runOps(ctx context.Context, w *workload, clients, ops int) (opsRun, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	run := opsRun{
		latencies:  make([]time.Duration, ops),
		roundTrips: make([]int64, ops),
		finished:   make([]time.Duration, ops),
	}
	var next atomic.Int64
	var prepares atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	var began time.Time

	for range clients {
		wg.Go(func() {
			counter := &roundTrips{}
			clientCtx := withRoundTrips(ctx, counter)
			defer func() { prepares.Add(counter.prepares.Load()) }()
			<-start
			for {
				i := next.Add(1) - 1
				if i >= int64(ops) || ctx.Err() != nil {
					return
				}
				before := counter.n.Load()
				opBegan := time.Now()
				err := w.op(clientCtx, w.nextKey())
				ended := time.Now()
				run.latencies[i] = ended.Sub(opBegan)
				run.finished[i] = ended.Sub(began)
				run.roundTrips[i] = counter.n.Load() - before
				if err != nil {
					cancel(fmt.Errorf("%s (%s), %d clients: %w", w.operation, w.design, clients, err))
					return
				}
			}
		})
	}

	began = time.Now()
	close(start)
	wg.Wait()
	run.began = began
	run.elapsed = time.Since(began)
	run.prepares = prepares.Load()
	if err := context.Cause(ctx); err != nil {
		return opsRun{}, err
	}
	return run, nil
}

// percentile returns the p-th percentile of durations by the
// nearest-rank method: the smallest value that at least p percent of the
// values do not exceed. It sorts a copy.
func percentile(durations []time.Duration, p float64) time.Duration {
	if len(durations) == 0 {
		return 0
	}
	sorted := slices.Clone(durations)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func milliseconds(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}
