package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/pgguard/pgguard/service"
)

func init() {
	commands["idempotency"] = command{
		summary: "maintain idempotency records (purge, for cron)",
		run: func(ctx context.Context, env *environment, args []string) error {
			return runGroup(ctx, env, "idempotency", idempotencyCommands, args)
		},
	}
}

var idempotencyCommands = map[string]subcommand{
	"purge": {
		usage: "purge [-batch N] [-pause D]   delete records past their expiry, N rows per statement, pausing D after each",
		run:   runIdempotencyPurge,
	},
}

// runIdempotencyPurge deletes expired idempotency records once. Expiry is
// stored in each record when it is claimed, so the command needs no policy
// flags. Cron runs may overlap each other and an application's
// IdempotencyCleaner: each batch skips rows that another session locked.
func runIdempotencyPurge(ctx context.Context, env *environment, args []string) error {
	flags := flag.NewFlagSet("purge", flag.ContinueOnError)
	flags.SetOutput(env.stderr)
	batch := flags.Int("batch", 1000, "rows deleted per statement; each statement holds its row locks only briefly")
	pause := flags.Duration("pause", 10*time.Millisecond, "wait after each full batch, so requests' commits do not queue behind the purge; 0 for none")
	if err := flags.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return usagef("pgguard idempotency purge takes only flags, got %q", flags.Args())
	}
	if *batch < 1 {
		return usagef("-batch is %d; use a positive number of rows", *batch)
	}
	if *pause < 0 || *pause > time.Minute {
		return usagef("-pause is %s; use 0 to 1m, for example 10ms", *pause)
	}

	pool, err := env.connect(ctx)
	if err != nil {
		return err
	}
	idempotency, err := service.NewIdempotency(pool, service.IdempotencyConfig{})
	if err != nil {
		return err
	}
	// A zero BatchPause means the default, so no pause is a negative one.
	batchPause := *pause
	if batchPause == 0 {
		batchPause = -1
	}
	cleaner, err := service.NewIdempotencyCleaner(idempotency, service.IdempotencyCleanerConfig{BatchSize: *batch, BatchPause: batchPause})
	if err != nil {
		return err
	}
	deleted, err := cleaner.PurgeOnce(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "deleted %d expired idempotency records\n", deleted)
	return nil
}
