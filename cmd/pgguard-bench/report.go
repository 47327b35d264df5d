package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// report is everything one run measured. It is printed as tables and
// written as JSON with the same numbers.
type report struct {
	Command     string         `json:"command"`
	Date        string         `json:"date"`
	Seconds     float64        `json:"seconds"`
	Environment environment    `json:"environment"`
	Clients     []int          `json:"clients"`
	Ops         int            `json:"ops_per_measurement"`
	Results     []measurement  `json:"results"`
	Harness     *harnessResult `json:"harness,omitempty"`
	Scale       *scaleResults  `json:"scale,omitempty"`
	Targets     []target       `json:"targets"`
}

// ratios compare a pgguard measurement with the other designs at the same
// client count. A ratio is zero when the run did not measure that design.
type ratios struct {
	// Floor names the floor operation compared with: the upsert for
	// operations that write, the select for those that only decide.
	Floor string `json:"floor"`
	// CallsVsFloor is pgguard's database calls per second (ops/s times
	// round trips per op) divided by the floor's ops/s.
	CallsVsFloor float64 `json:"calls_per_second_vs_floor"`
	// P50VsFloor is pgguard's p50 divided by the floor's p50 times
	// pgguard's round trips per op: the latency of an op against the
	// same number of floor statements.
	P50VsFloor float64 `json:"p50_vs_floor"`
	// VsUsual, VsUsual3 and VsRedis divide pgguard's ops/s by the usual
	// design's, the usual design's doing pgguard's work, and the Redis
	// reference's for the same operation.
	VsUsual  float64 `json:"ops_per_second_vs_usual,omitempty"`
	VsUsual3 float64 `json:"ops_per_second_vs_usual3,omitempty"`
	VsRedis  float64 `json:"ops_per_second_vs_redis,omitempty"`
}

// floorOf maps each operation to the floor it is compared with.
var floorOf = map[string]string{
	opBeginFail:    opFloorUpsert,
	opBeginSucceed: opFloorUpsert,
	opBeginLocked:  opFloorSelect,
	opFirstRequest: opFloorUpsert,
	opReplay:       opFloorSelectRecord,
	opInFlight:     opFloorSelectRecord,
}

// find returns the measurement of operation and design at clients, or nil.
func (r *report) find(operation, design string, clients int) *measurement {
	for i := range r.Results {
		m := &r.Results[i]
		if m.Operation == operation && m.Design == design && m.Clients == clients {
			return m
		}
	}
	return nil
}

// addRatios sets the ratios of every pgguard measurement that has a floor.
func (r *report) addRatios() {
	for i := range r.Results {
		m := &r.Results[i]
		floorOp, ok := floorOf[m.Operation]
		if m.Design != designPgguard || !ok {
			continue
		}
		ratio := &ratios{Floor: floorOp}
		if floor := r.find(floorOp, designFloor, m.Clients); floor != nil {
			ratio.CallsVsFloor = m.OpsPerSecond * m.RoundTripsPerOp / floor.OpsPerSecond
			ratio.P50VsFloor = m.P50Ms / (floor.P50Ms * m.RoundTripsPerOp)
		}
		if usual := r.find(m.Operation, designUsual, m.Clients); usual != nil {
			ratio.VsUsual = m.OpsPerSecond / usual.OpsPerSecond
		}
		if usual3 := r.find(m.Operation, designUsual3, m.Clients); usual3 != nil {
			ratio.VsUsual3 = m.OpsPerSecond / usual3.OpsPerSecond
		}
		if redis := r.find(m.Operation, designRedis, m.Clients); redis != nil {
			ratio.VsRedis = m.OpsPerSecond / redis.OpsPerSecond
		}
		m.Ratios = ratio
	}
}

// printReport writes the report as plain-text tables.
func printReport(w io.Writer, r *report) {
	env := r.Environment
	fmt.Fprintf(w, "\npgguard-bench, %s\n", r.Date)
	fmt.Fprintf(w, "machine:  %s, %d cores, %d GiB, %s, %s\n", env.CPU, env.Cores, env.MemoryGiB, env.OS, env.GoVersion)
	fmt.Fprintf(w, "postgres: %s\n", env.Postgres)
	fmt.Fprintf(w, "          %s\n", formatSettings(env.Settings))
	if env.Redis != "" {
		fmt.Fprintf(w, "redis:    %s\n", env.Redis)
	}
	fmt.Fprintf(w, "%d measured ops per row after a warm-up; latency per op; RT = database round trips\n", r.Ops)
	fmt.Fprintf(w, "CPU µs/op = CPU time of the pool's Postgres backends per op (blank when the server's processes cannot be read)\n")
	fmt.Fprintf(w, "calls÷floor = pgguard calls/s ÷ floor ops/s; p50÷floor = pgguard p50 ÷ (RT × floor p50)\n\n")

	printMeasurements(w, r)
	if r.Harness != nil {
		printHarness(w, r.Harness)
	}
	if r.Scale != nil {
		printScale(w, r.Scale)
	}
	printTargets(w, r.Targets)
	fmt.Fprintf(w, "\nTotal time: %.0f s\n", r.Seconds)
}

func formatSettings(settings map[string]string) string {
	var parts []string
	for _, name := range postgresSettings {
		parts = append(parts, name+"="+settings[name])
	}
	return strings.Join(parts, " ")
}

// operationOrder is the order of the operations in the table.
var operationOrder = []string{
	opFloorUpsert, opFloorSelect, opFloorSelectRecord,
	opBeginFail, opBeginSucceed, opBeginLocked,
	opFirstRequest, opReplay, opInFlight, opPurge,
}

var designOrder = []string{designPgguard, designUsual, designUsual3, designRedis, designFloor}

func printMeasurements(w io.Writer, r *report) {
	table := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(table, "operation\tdesign\tclients\tops/s\tp50 ms\tp99 ms\tRT/op\tCPU µs/op\tcalls÷floor\tp50÷floor\t÷usual\t÷usual3\t÷redis\t")
	for _, operation := range operationOrder {
		for _, clients := range measuredClients(r, operation) {
			for _, design := range designOrder {
				m := r.find(operation, design, clients)
				if m == nil {
					continue
				}
				fmt.Fprintf(table, "%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
					m.Operation, m.Design, m.Clients, m.OpsPerSecond, m.P50Ms, m.P99Ms, m.RoundTripsPerOp, formatCPU(m.ServerCPUMicros),
					formatRatio(m.Ratios, func(r *ratios) float64 { return r.CallsVsFloor }),
					formatRatio(m.Ratios, func(r *ratios) float64 { return r.P50VsFloor }),
					formatRatio(m.Ratios, func(r *ratios) float64 { return r.VsUsual }),
					formatRatio(m.Ratios, func(r *ratios) float64 { return r.VsUsual3 }),
					formatRatio(m.Ratios, func(r *ratios) float64 { return r.VsRedis }))
			}
		}
	}
	table.Flush()
	for _, m := range r.Results {
		if m.RowsPerSecond > 0 {
			fmt.Fprintf(w, "%s: %d rows in batches of %d, %.0f rows/s\n", m.Operation, m.Rows, m.BatchSize, m.RowsPerSecond)
		}
	}
}

// measuredClients returns the client counts operation was measured at, in
// run order.
func measuredClients(r *report, operation string) []int {
	var clients []int
	seen := map[int]bool{}
	for _, m := range r.Results {
		if m.Operation == operation && !seen[m.Clients] {
			seen[m.Clients] = true
			clients = append(clients, m.Clients)
		}
	}
	return clients
}

func formatCPU(micros float64) string {
	if micros == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", micros)
}

func formatRatio(r *ratios, value func(*ratios) float64) string {
	if r == nil || value(r) == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", value(r))
}

func writeJSON(path string, r *report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode the results: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("failed to write the results: %w", err)
	}
	return nil
}
