package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// Client counts the targets are judged at: throughput under load at
// targetClients, latency without queueing at latencyClients.
const (
	targetClients  = 16
	latencyClients = 1
)

// target is one goal of the benchmark and whether this run met it.
type target struct {
	Name string `json:"name"`
	// Measured is compared with Limit by Comparison: "==", "<=" or ">=".
	Measured   float64 `json:"measured"`
	Comparison string  `json:"comparison"`
	Limit      float64 `json:"limit"`
	Met        bool    `json:"met"`
}

func newTarget(name string, measured float64, comparison string, limit float64) target {
	t := target{Name: name, Measured: measured, Comparison: comparison, Limit: limit}
	switch comparison {
	case "==":
		t.Met = measured == limit
	case "<=":
		t.Met = measured <= limit
	case ">=":
		t.Met = measured >= limit
	}
	return t
}

// evaluateTargets checks every target whose figures the run measured.
func evaluateTargets(r *report) []target {
	var targets []target
	roundTrips := func(operation string, want float64) {
		if m := r.find(operation, designPgguard, targetClients); m != nil {
			targets = append(targets, newTarget(operation+": round trips per op", m.RoundTripsPerOp, "==", want))
		}
	}
	ratio := func(operation string, clients int, name string, value func(*ratios) float64, comparison string, limit float64) {
		m := r.find(operation, designPgguard, clients)
		if m == nil || m.Ratios == nil || value(m.Ratios) == 0 {
			return
		}
		label := fmt.Sprintf("%s: %s at %d clients", operation, name, clients)
		targets = append(targets, newTarget(label, value(m.Ratios), comparison, limit))
	}
	callsVsFloor := func(r *ratios) float64 { return r.CallsVsFloor }
	p50VsFloor := func(r *ratios) float64 { return r.P50VsFloor }
	vsUsual := func(r *ratios) float64 { return r.VsUsual }
	vsUsual3 := func(r *ratios) float64 { return r.VsUsual3 }

	// Begin and each settle take one round trip, so Begin plus a settle
	// takes two and a rejected Begin one.
	roundTrips(opBeginFail, 2)
	roundTrips(opBeginSucceed, 2)
	roundTrips(opBeginLocked, 1)
	for _, operation := range []string{opBeginFail, opBeginSucceed} {
		ratio(operation, targetClients, "calls/s ÷ upsert/s", callsVsFloor, ">=", 0.7)
	}
	for _, operation := range []string{opBeginFail, opBeginSucceed, opBeginLocked} {
		ratio(operation, targetClients, "ops/s ÷ usual design", vsUsual, ">=", 2)
	}
	// The same target against the usual design doing pgguard's work, for
	// context: the one above compares designs that do different work.
	for _, operation := range []string{opBeginFail, opBeginSucceed, opBeginLocked} {
		ratio(operation, targetClients, "ops/s ÷ usual3 design", vsUsual3, ">=", 2)
	}

	roundTrips(opReplay, 1)
	ratio(opReplay, latencyClients, "p50 ÷ select of the record p50", p50VsFloor, "<=", 1.2)
	roundTrips(opFirstRequest, 2)

	if s := r.Scale; s != nil {
		if s.ManySources != nil {
			name := fmt.Sprintf("Begin with %d sources ÷ with 1 source (p50)", s.ManySources.Sources)
			targets = append(targets, newTarget(name, s.ManySources.OwnerBegin.Ratio, "<=", 1.2))
		}
		if s.Purge != nil {
			targets = append(targets, newTarget("insert p99 during purge ÷ without", s.Purge.P99Ratio, "<=", 2))
		}
		if s.Spraying != nil {
			// Server CPU per attempt is the cost itself; latency also
			// moves with whatever else loads the machine, so it only
			// stands in when the CPU time cannot be read.
			name := fmt.Sprintf("spraying %d accounts: last ÷ first tenth (server CPU/op)", s.Spraying.Accounts)
			ratio := s.Spraying.CPURatio
			if ratio == 0 {
				name = fmt.Sprintf("spraying %d accounts: last ÷ first tenth (p50)", s.Spraying.Accounts)
				ratio = s.Spraying.P50Ratio
			}
			targets = append(targets, newTarget(name, ratio, "<=", 1.2))
		}
	}
	if r.Harness != nil {
		targets = append(targets, newTarget("test database per test: median ms", r.Harness.MedianMs, "<=", 50))
	}
	return targets
}

func printTargets(w io.Writer, targets []target) {
	fmt.Fprintf(w, "\nTargets\n")
	table := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range targets {
		verdict := "MISSED"
		if t.Met {
			verdict = "met"
		}
		fmt.Fprintf(table, "  %s\t%.2f %s %g\t%s\n", t.Name, t.Measured, t.Comparison, t.Limit, verdict)
	}
	table.Flush()
}
