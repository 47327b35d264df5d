// Command pgguard-bench measures pgguard's lockout and idempotency
// operations against the Postgres server the tests use, next to the
// designs they replace, in one run on one machine:
//
//   - the floor: one raw single-row upsert or indexed select per decision;
//   - the usual design: a read-modify-write transaction (SELECT ... FOR
//     UPDATE, decide in Go, UPDATE, COMMIT);
//   - a reference: the same counter in Redis, INCR and EXPIRE in one
//     script.
//
// Each workload runs a fixed number of operations at each client count and
// reports operations per second, p50 and p99 latency, and round trips per
// operation, counted by a pgx tracer. Scale cases, the time to create a
// test database and a check of each performance target follow. The same
// figures are written as JSON with -json.
//
// The server is found like the tests find it: TEST_DATABASE_URL, else
// Docker, else a local server (see internal/pgfind). The run creates a
// scratch database, migrates it with pgguard.Migrate and drops it at the
// end, so the role needs CREATEDB.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgguard/pgguard/internal/pgfind"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed command line.
type options struct {
	clients   []int
	ops       int
	jsonPath  string
	redisAddr string
	applyPath string
	// only selects the workloads whose "operation (design)" it matches.
	only      *regexp.Regexp
	scale     scaleOptions
	clones    int
	cloneHold time.Duration
	progress  io.Writer
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	opts := options{progress: stderr}
	flags := flag.NewFlagSet("pgguard-bench", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pgguard-bench [flags]\n\n"+
			"Benchmarks pgguard against the round-trip floor, the usual read-modify-write\n"+
			"design and Redis, on a scratch database of the server named by %s\n"+
			"(or found like the tests find one).\n\nFlags:\n", databaseURLEnvVar)
		flags.PrintDefaults()
	}

	clients := flags.String("clients", "1,4,16,64", "comma-separated numbers of concurrent clients to run each workload with")
	flags.IntVar(&opts.ops, "ops", 2000, "measured operations per workload and client count, after a warm-up")
	flags.StringVar(&opts.jsonPath, "json", "", "write the results as JSON to this file")
	flags.StringVar(&opts.redisAddr, "redis", "127.0.0.1:6379", "host:port of the Redis server of the reference; empty skips it")
	flags.StringVar(&opts.applyPath, "apply", "", "SQL file to run on the scratch database after the migrations, to measure a proposed schema change")
	only := flags.String("run", "", "only run the workloads whose \"operation (design)\" matches this regular expression")
	scaleCases := flags.String("scale", strings.Join(allScaleCases, ","), "comma-separated scale cases to run, of "+strings.Join(allScaleCases, ", ")+"; empty skips them")
	flags.IntVar(&opts.scale.sources, "scale-sources", 10000, "sources that failed against one email in the first scale case")
	flags.IntVar(&opts.scale.records, "scale-records", 1000000, "idempotency records in the purge scale case")
	flags.IntVar(&opts.scale.expired, "scale-expired", 900000, "expired records among -scale-records")
	flags.IntVar(&opts.scale.accounts, "scale-accounts", 100000, "accounts sprayed in the spraying scale case")
	flags.IntVar(&opts.scale.purgeBatch, "scale-purge-batch", 1000, "rows per DELETE in the purge scale case")
	flags.DurationVar(&opts.scale.purgePause, "scale-purge-pause", 0, "pause after each batch of the purge scale case, as IdempotencyCleanerConfig.BatchPause: 0 for the cleaner's default, negative for none")
	flags.DurationVar(&opts.scale.insertTime, "scale-insert-time", 8*time.Second, "how long the purge scale case inserts without a purge, for its baseline")
	flags.IntVar(&opts.clones, "clones", 20, "test databases to open through internal/pgtest when timing the test harness; 0 skips it")
	flags.DurationVar(&opts.cloneHold, "clone-hold", 50*time.Millisecond, "how long each timed test uses its database before dropping it, as a test body would; 0 drops it at once")

	if err := flags.Parse(args); err != nil {
		return options{}, err
	}
	if flags.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q; pgguard-bench takes only flags", flags.Arg(0))
	}

	var err error
	if opts.clients, err = parseClients(*clients); err != nil {
		return options{}, err
	}
	if opts.ops < 1 {
		return options{}, fmt.Errorf("-ops is %d; use a positive number of operations", opts.ops)
	}
	if *only != "" {
		if opts.only, err = regexp.Compile(*only); err != nil {
			return options{}, fmt.Errorf("-run: %w", err)
		}
	}
	if opts.scale.cases, err = parseScaleCases(*scaleCases); err != nil {
		return options{}, err
	}
	if err := opts.scale.validate(); err != nil {
		return options{}, err
	}
	if opts.cloneHold < 0 {
		return options{}, fmt.Errorf("-clone-hold is %s; use 0 or a positive duration", opts.cloneHold)
	}
	if opts.clones < 0 {
		return options{}, fmt.Errorf("-clones is %d; use 0 to skip the harness timing or a positive count", opts.clones)
	}
	return opts, nil
}

func parseClients(list string) ([]int, error) {
	var clients []int
	for field := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-clients: %q is not a positive number of clients", field)
		}
		clients = append(clients, n)
	}
	return clients, nil
}

// run is main without the process: it returns the exit status. Missed
// targets do not fail the run, because absolute speed depends on the
// machine; the report marks them.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgguard-bench: %v\n", err)
		return 2
	}

	began := time.Now()
	result, err := runBench(ctx, opts)
	if errors.Is(err, pgfind.ErrNotFound) {
		fmt.Fprintf(stderr, "pgguard-bench: no PostgreSQL server found.\n%v\n", err)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgguard-bench: %v\n", err)
		return 1
	}
	result.Command = strings.Join(append([]string{"pgguard-bench"}, args...), " ")
	result.Seconds = time.Since(began).Seconds()

	printReport(stdout, result)
	if opts.jsonPath != "" {
		if err := writeJSON(opts.jsonPath, result); err != nil {
			fmt.Fprintf(stderr, "pgguard-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "\nWrote %s\n", opts.jsonPath)
	}
	return 0
}

// runBench sets up the scratch database and runs every part of the
// benchmark. It drops the database on return.
func runBench(ctx context.Context, opts options) (*report, error) {
	server, err := findServer(ctx)
	if err != nil {
		return nil, err
	}
	defer server.Close(context.WithoutCancel(ctx)) //nolint:errcheck // Nothing to do about a failed container stop.
	progressf(opts, "Using %s", server.Source)

	db, err := createScratchDatabase(ctx, server, "pgguard_bench_", "")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := db.drop(ctx); err != nil {
			progressf(opts, "failed to drop scratch database %s: %v", db.name, err)
		}
	}()
	if err := prepareSchema(ctx, db.url, opts.applyPath); err != nil {
		return nil, err
	}

	env, err := openBenchEnv(ctx, db, opts)
	if err != nil {
		return nil, err
	}
	defer env.close()

	result := &report{
		Date:        time.Now().UTC().Format(time.RFC3339),
		Environment: env.environment,
		Clients:     opts.clients,
		Ops:         opts.ops,
	}
	if result.Results, err = runMatrix(ctx, env, opts); err != nil {
		return nil, err
	}
	if matches(opts, opPurge, designPgguard) {
		purge, err := measurePurge(ctx, env)
		if err != nil {
			return nil, err
		}
		result.Results = append(result.Results, purge)
	}
	if opts.clones > 0 {
		if result.Harness, err = measureHarness(ctx, server, opts); err != nil {
			return nil, err
		}
	}
	if len(opts.scale.cases) > 0 {
		if result.Scale, err = runScaleCases(ctx, env, opts); err != nil {
			return nil, err
		}
	}
	result.addRatios()
	result.Targets = evaluateTargets(result)
	return result, nil
}

// runMatrix measures every selected workload at every client count. For
// each client count all workloads run one after the other, so that the
// designs compared at one count see the same machine and the same database.
func runMatrix(ctx context.Context, env *benchEnv, opts options) ([]measurement, error) {
	var workloads []*workload
	for _, w := range env.workloads() {
		if matches(opts, w.operation, w.design) {
			workloads = append(workloads, w)
		}
	}

	var results []measurement
	for _, clients := range opts.clients {
		for _, w := range workloads {
			m, err := measure(ctx, w, clients, opts.ops, env.cpu)
			if err != nil {
				return nil, err
			}
			progressf(opts, "%-34s %-8s %3d clients %8.0f ops/s  p50 %6.2f ms  p99 %6.2f ms  %.2f round trips/op  %4.0f µs server CPU/op",
				m.Operation, m.Design, m.Clients, m.OpsPerSecond, m.P50Ms, m.P99Ms, m.RoundTripsPerOp, m.ServerCPUMicros)
			results = append(results, m)
		}
	}
	return results, nil
}

func matches(opts options, operation, design string) bool {
	return opts.only == nil || opts.only.MatchString(operation+" ("+design+")")
}

// keysNeeded returns how many distinct keys a workload uses over a run:
// its warm-up and measured ops at every client count.
func keysNeeded(opts options) int64 {
	var total int64
	for _, clients := range opts.clients {
		total += int64(warmupOps(clients) + opts.ops)
	}
	return total
}

func progressf(opts options, format string, args ...any) {
	fmt.Fprintf(opts.progress, format+"\n", args...)
}

// maxClients returns the largest client count of the run.
func maxClients(opts options) int {
	return slices.Max(opts.clients)
}
