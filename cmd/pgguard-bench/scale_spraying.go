package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/pgguard/pgguard/service"
)

// The spraying case: sprayingSources sources try one password on each of
// many accounts, sprayingClients attempts at a time. Every attempt of a
// source updates that source's counter row, so the case is about hot rows:
// each source row takes a write from one in sprayingSources attempts, and
// concurrent attempts from one source wait for each other's row lock.
const (
	sprayingSources = 16
	sprayingClients = 16
	// sprayingWindows is how many equal parts of the run, in op order,
	// are compared.
	sprayingWindows = 10
	// sprayingSourceLimit is the source-wide MaxFailures of the case, the
	// highest LockoutConfig accepts. Each source fails accounts/16 times,
	// fewer than maxKeysPerSet/16, so it never locks.
	sprayingSourceLimit = 1000000
)

// sprayingResult shows whether the cost of an attempt grows as the sprayed
// accounts, and the counter rows they leave, pile up.
type sprayingResult struct {
	Accounts     int     `json:"accounts"`
	Sources      int     `json:"sources"`
	Clients      int     `json:"clients"`
	Seconds      float64 `json:"seconds"`
	OpsPerSecond float64 `json:"ops_per_second"`
	RoundTrips   float64 `json:"round_trips_per_op"`
	// Windows splits the attempts in op order into equal parts.
	Windows []sprayingWindow `json:"windows"`
	// P50Ratio, OpsRatio and CPURatio compare the last window with the
	// first. CPURatio is 0 when the server's CPU time cannot be read.
	P50Ratio float64 `json:"last_vs_first_p50"`
	OpsRatio float64 `json:"last_vs_first_ops_per_second"`
	CPURatio float64 `json:"last_vs_first_server_cpu,omitempty"`
}

type sprayingWindow struct {
	FirstOp      int     `json:"first_op"`
	Ops          int     `json:"ops"`
	OpsPerSecond float64 `json:"ops_per_second"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	// ServerCPUMicros is the backends' CPU time per op over the window's
	// span, interpolated between samples; 0 where it cannot be read.
	ServerCPUMicros float64 `json:"server_cpu_us_per_op,omitempty"`
}

// measureSpraying runs Begin+Fail once for each of accounts new accounts,
// the account n from source n mod sprayingSources. The source-wide limit
// is raised so that the sources keep being counted instead of being locked
// after 30 failures. The other limits keep their defaults, which one
// failure per account never reaches.
func measureSpraying(ctx context.Context, env *benchEnv, accounts int) (*sprayingResult, error) {
	env.progress("Scale: spraying %d accounts from %d sources with %d clients", accounts, sprayingSources, sprayingClients)
	policy := service.DefaultPasswordPolicy()
	policy.Source.MaxFailures = sprayingSourceLimit
	lockout, err := service.NewLockout(env.pool, service.LockoutConfig{
		Channels: map[service.Channel]service.ChannelPolicy{service.ChannelPassword: policy},
	})
	if err != nil {
		return nil, err
	}

	spray := &workload{operation: "spraying Begin+Fail", design: designPgguard, op: func(ctx context.Context, key int64) error {
		attempt, err := lockout.Begin(ctx, service.ChannelPassword, keysSprayed.email(key), keysSprayers.ip(key%sprayingSources))
		if err != nil {
			return err
		}
		_, err = attempt.Fail(ctx)
		return err
	}}
	sampler := startCPUSampler(env.cpu)
	run, err := runOps(ctx, spray, sprayingClients, accounts)
	samples := sampler.stop()
	if err != nil {
		return nil, err
	}

	result := &sprayingResult{
		Accounts:     accounts,
		Sources:      sprayingSources,
		Clients:      sprayingClients,
		Seconds:      run.elapsed.Seconds(),
		OpsPerSecond: float64(accounts) / run.elapsed.Seconds(),
	}
	var total int64
	for _, n := range run.roundTrips {
		total += n
	}
	result.RoundTrips = float64(total) / float64(accounts)

	size := accounts / sprayingWindows
	for first := 0; first+size <= accounts; first += size {
		result.Windows = append(result.Windows, windowOf(run, samples, first, first+size))
	}
	firstWindow, lastWindow := result.Windows[0], result.Windows[len(result.Windows)-1]
	result.P50Ratio = lastWindow.P50Ms / firstWindow.P50Ms
	result.OpsRatio = lastWindow.OpsPerSecond / firstWindow.OpsPerSecond
	if firstWindow.ServerCPUMicros > 0 && lastWindow.ServerCPUMicros > 0 {
		result.CPURatio = lastWindow.ServerCPUMicros / firstWindow.ServerCPUMicros
	}
	return result, nil
}

// windowOf summarizes ops from to to-1 of run. Their throughput is their
// count over the time from the first one's start to the last one's end,
// and their server CPU the CPU samples' growth over that span.
func windowOf(run opsRun, samples cpuSamples, from, to int) sprayingWindow {
	latencies := run.latencies[from:to]
	var earliest, latest time.Duration = math.MaxInt64, 0
	for i := from; i < to; i++ {
		earliest = min(earliest, run.finished[i]-run.latencies[i])
		latest = max(latest, run.finished[i])
	}
	window := sprayingWindow{
		FirstOp:      from,
		Ops:          to - from,
		OpsPerSecond: float64(to-from) / (latest - earliest).Seconds(),
		P50Ms:        milliseconds(percentile(latencies, 50)),
		P99Ms:        milliseconds(percentile(latencies, 99)),
	}
	if used, ok := samples.between(run.began.Add(earliest), run.began.Add(latest)); ok {
		window.ServerCPUMicros = float64(used) / float64(time.Microsecond) / float64(to-from)
	}
	return window
}

func printSpraying(w io.Writer, r *sprayingResult) {
	fmt.Fprintf(w, "  spraying %d accounts from %d sources with %d clients (Begin+Fail): %.0f ops/s, %.2f round trips/op, %.0f s\n",
		r.Accounts, r.Sources, r.Clients, r.OpsPerSecond, r.RoundTrips, r.Seconds)
	for _, window := range r.Windows {
		fmt.Fprintf(w, "    attempts %7d+: %6.0f ops/s  p50 %6.2f ms  p99 %6.2f ms  %4.0f µs server CPU/op\n",
			window.FirstOp, window.OpsPerSecond, window.P50Ms, window.P99Ms, window.ServerCPUMicros)
	}
	fmt.Fprintf(w, "    last window vs first: p50 ratio %.2f, ops/s ratio %.2f, server CPU/op ratio %.2f\n", r.P50Ratio, r.OpsRatio, r.CPURatio)
}
