// Command pgguard runs pgguard's operations against the database named by
// DATABASE_URL: migrations, lockout administration and idempotency cleanup.
//
//	pgguard migrate
//	pgguard lockout status|unlock|locks|purge ...
//	pgguard idempotency purge ...
//
// Run "pgguard help" or "pgguard GROUP -h" for the flags of each command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard"
)

// command is one top-level command. Groups such as "lockout" dispatch on
// their first argument themselves.
type command struct {
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

// commands maps a command name to its implementation. Files of this package
// add their commands in init functions.
var commands = map[string]command{}

// environment is the context every command receives: the output streams
// and a pool opened on first use, so "help" needs no database.
type environment struct {
	stdout io.Writer
	stderr io.Writer
	pool   *pgxpool.Pool
}

// usageError is an error caused by bad arguments; main exits with status 2.
type usageError struct{ message string }

func (e *usageError) Error() string { return e.message }

func usagef(format string, args ...any) error {
	return &usageError{message: fmt.Sprintf(format, args...)}
}

func init() {
	commands["migrate"] = command{
		summary: "apply pending pgguard migrations to DATABASE_URL under an advisory lock",
		run:     runMigrate,
	}
}

// runMigrate applies pgguard's migrations. Several deploys may run it at
// once: pgguard.Migrate holds an advisory lock, so one applies the
// migrations and the others wait and then find nothing to do.
func runMigrate(ctx context.Context, env *environment, args []string) error {
	flags := flag.NewFlagSet("pgguard migrate", flag.ContinueOnError)
	flags.SetOutput(env.stderr)
	wait := flags.Duration("wait", 0, "keep trying to connect for this long before giving up, for example 60s while the database starts")
	if err := flags.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return usagef("migrate takes only flags, got %q", flags.Args())
	}
	url, err := databaseURL()
	if err != nil {
		return err
	}
	if err := waitForDatabase(ctx, url, *wait); err != nil {
		return err
	}

	if err := pgguard.Migrate(ctx, url, pgguard.MigrateOptions{Log: env.stdout}); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "migrations are up to date")
	return nil
}

// waitForDatabase returns once a connection to url succeeds, trying once a
// second for up to wait. With wait 0 it returns at once and leaves the
// error to the migration itself.
func waitForDatabase(ctx context.Context, url string, wait time.Duration) error {
	if wait <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()

	for {
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-ctx.Done():
			// The error names the host, never the password.
			return fmt.Errorf("database did not accept connections within %s: %w", wait, err)
		case <-time.After(time.Second):
		}
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	env := &environment{stdout: stdout, stderr: stderr}
	defer func() {
		if env.pool != nil {
			env.pool.Close()
		}
	}()

	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stdout)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pgguard: unknown command %q\n\n", args[0])
		printUsage(stderr)
		return 2
	}

	err := cmd.run(ctx, env, args[1:])
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}

	// Errors from the library already start with "pgguard: ".
	message := err.Error()
	if !strings.HasPrefix(message, "pgguard: ") {
		message = "pgguard: " + message
	}
	fmt.Fprintln(stderr, message)
	if _, ok := errors.AsType[*usageError](err); ok {
		return 2
	}
	return 1
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: pgguard COMMAND [ARGS]")
	fmt.Fprintln(w, "\nThe database is read from DATABASE_URL. Commands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-12s %s\n", name, commands[name].summary)
	}
}

func databaseURL() (string, error) {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return "", usagef("DATABASE_URL is not set; set it to a postgres:// URL")
	}
	return url, nil
}

// connect opens the pool on first use.
func (env *environment) connect(ctx context.Context) (*pgxpool.Pool, error) {
	if env.pool != nil {
		return env.pool, nil
	}
	url, err := databaseURL()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("invalid DATABASE_URL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("failed to connect to DATABASE_URL: %w", err)
	}
	env.pool = pool
	return pool, nil
}

// subcommand is one action inside a group such as "lockout".
type subcommand struct {
	usage string
	run   func(ctx context.Context, env *environment, args []string) error
}

// runGroup dispatches args[0] to one of subs and prints the group's usage for
// a missing or unknown action.
func runGroup(ctx context.Context, env *environment, group string, subs map[string]subcommand, args []string) error {
	if len(args) > 0 {
		if sub, ok := subs[args[0]]; ok {
			return sub.run(ctx, env, args[1:])
		}
	}

	w := env.stdout
	if len(args) > 0 && args[0] != "-h" && args[0] != "help" {
		w = env.stderr
		fmt.Fprintf(w, "unknown action %q\n", args[0])
	}
	fmt.Fprintf(w, "Usage of pgguard %s:\n", group)
	names := make([]string, 0, len(subs))
	for name := range subs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  pgguard %s %s\n", group, subs[name].usage)
	}
	if w == env.stderr || len(args) == 0 {
		return usagef("%s needs an action", group)
	}
	return nil
}
