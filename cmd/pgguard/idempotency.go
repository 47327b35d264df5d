package main

import (
	"context"
	"flag"
	"fmt"

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
		usage: "purge [-batch N]       delete records past their expiry, N rows per statement",
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
	if err := flags.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return usagef("pgguard idempotency purge takes only flags, got %q", flags.Args())
	}
	if *batch < 1 {
		return usagef("-batch is %d; use a positive number of rows", *batch)
	}

	pool, err := env.connect(ctx)
	if err != nil {
		return err
	}
	idempotency, err := service.NewIdempotency(pool, service.IdempotencyConfig{})
	if err != nil {
		return err
	}
	deleted, err := idempotency.PurgeExpired(ctx, *batch)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "deleted %d expired idempotency records\n", deleted)
	return nil
}
