// Command pgguard-demo is a small HTTP API that uses pgguard as an
// application would: POST /login behind the brute-force lockout and
// POST /orders behind idempotency keys, both stored in Postgres.
//
// Without flags it serves the API on 127.0.0.1:8080 for manual use. With
// -scenario it creates a throwaway database, drives a scripted session over
// HTTP, prints a transcript and exits non-zero if any response differs from
// what the script expects. See README.md beside this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
)

// Environment variables read by the demo.
const (
	databaseURLEnvVar = "DATABASE_URL"
	accountsEnvVar    = "PGGUARD_DEMO_ACCOUNTS"
)

// shutdownTimeout bounds how long in-flight requests may run after SIGINT or
// SIGTERM before the server closes their connections.
const shutdownTimeout = 10 * time.Second

// options are the parsed command line and environment.
type options struct {
	addr     string
	scenario bool
	server   serverConfig
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgguard-demo: %v\n", err)
		return 2
	}

	if opts.scenario {
		return runScenarioCommand(ctx, stdout, stderr)
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	err = runServer(ctx, opts, getenv, stdout, logger)
	if errors.Is(err, pgfind.ErrNotFound) {
		// The explanation spans several lines, which a log record would
		// escape into one.
		fmt.Fprintf(stderr, "pgguard-demo: the server needs a PostgreSQL database and found none.\n%v\n", err)
		return 1
	}
	if err != nil {
		logger.Error("server failed", "error", err)
		return 1
	}
	return 0
}

// parseOptions reads the flags in args and the accounts in
// PGGUARD_DEMO_ACCOUNTS.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	opts := options{server: serverConfig{
		Accounts: []credential{{Email: demoEmail, Password: demoPassword}},
	}}
	// Account flags are parsed after flag.Parse, because the flag package
	// would quote a rejected value, password included, in its error.
	var accountFlags []string

	flags := flag.NewFlagSet("pgguard-demo", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintf(stderr, `Usage: pgguard-demo [flags]

Serves a demo API guarded by pgguard. The database is $%s, or else
database %s, created if missing, on a server found the way psql
finds one.

The account %s with password %q always
exists. Add more with -account, or with $%s, a
comma-separated list of email:password entries.

With -scenario, runs a scripted session against a new throwaway database
instead, and exits non-zero if a response differs from the script. The
scenario uses its own short policy and ignores the other flags.

Flags:
`, databaseURLEnvVar, serverDatabaseName, demoEmail, demoPassword, accountsEnvVar)
		flags.PrintDefaults()
	}

	flags.StringVar(&opts.addr, "addr", "127.0.0.1:8080", "TCP `address` to listen on")
	flags.BoolVar(&opts.scenario, "scenario", false, "run the scripted scenario against a new database and exit")
	flags.Func("account", "add an account, as `email:password` (split at the first colon; repeatable)", func(value string) error {
		accountFlags = append(accountFlags, value)
		return nil
	})
	flags.IntVar(&opts.server.Password.MaxFailures, "max-failures", 5, "number of failed logins, per email and client network, that engages a lock")
	flags.DurationVar(&opts.server.Password.LockDuration, "lock-duration", 30*time.Second, "length of the first lock; each consecutive lock doubles it")
	flags.DurationVar(&opts.server.Password.MaxLockDuration, "max-lock-duration", time.Hour, "cap on the doubled lock length")
	flags.DurationVar(&opts.server.Password.FailureWindow, "failure-window", 24*time.Hour, "how long failures are remembered after the last failure and the end of the last lock")
	flags.Func("trusted-proxy", "trust X-Forwarded-For from this reverse proxy `network`, such as 10.0.0.0/8 (repeatable)", func(value string) error {
		prefix, err := netip.ParsePrefix(value)
		if err != nil {
			return fmt.Errorf("not a network in CIDR notation such as 10.0.0.0/8")
		}
		opts.server.TrustedProxies = append(opts.server.TrustedProxies, prefix.Masked())
		return nil
	})
	flags.DurationVar(&opts.server.Idempotency.LeaseDuration, "lease", time.Minute, "how long a POST /orders request keeps its idempotency key before retries get 409 outcome unknown")
	flags.DurationVar(&opts.server.OrderDelay, "order-delay", 0, "pause inside POST /orders before the insert, to make concurrent retries overlap")

	if err := flags.Parse(args); err != nil {
		return options{}, err
	}
	if flags.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q; all settings are flags, see -help", flags.Arg(0))
	}
	if err := validatePolicy(opts.server); err != nil {
		return options{}, err
	}

	envAccounts, err := parseCredentialList(getenv(accountsEnvVar))
	if err != nil {
		return options{}, fmt.Errorf("%s: %w", accountsEnvVar, err)
	}
	opts.server.Accounts = append(opts.server.Accounts, envAccounts...)
	for i, value := range accountFlags {
		c, err := parseCredential(value)
		if err != nil {
			return options{}, fmt.Errorf("-account flag %d: %w", i+1, err)
		}
		opts.server.Accounts = append(opts.server.Accounts, c)
	}
	return opts, nil
}

// validatePolicy rejects flag values that the library would read as "use
// the default" (zero) or that make no sense for a command line, so a typo
// such as -lock-duration 0 is an error instead of a silent 30 seconds.
func validatePolicy(config serverConfig) error {
	positive := []struct {
		flag  string
		value time.Duration
	}{
		{"-lock-duration", config.Password.LockDuration},
		{"-max-lock-duration", config.Password.MaxLockDuration},
		{"-failure-window", config.Password.FailureWindow},
		{"-lease", config.Idempotency.LeaseDuration},
	}
	for _, p := range positive {
		if p.value <= 0 {
			return fmt.Errorf("%s is %s; use a positive duration such as 2s", p.flag, p.value)
		}
	}
	if config.Password.MaxFailures < 1 {
		return fmt.Errorf("-max-failures is %d; use 1 or more", config.Password.MaxFailures)
	}
	if config.OrderDelay < 0 {
		return fmt.Errorf("-order-delay is %s; use 0 or a positive duration", config.OrderDelay)
	}
	return nil
}

// runServer serves the API until ctx ends.
func runServer(ctx context.Context, opts options, getenv func(string) string, stdout io.Writer, logger *slog.Logger) error {
	databaseURL, closeDatabase, err := openServerDatabase(ctx, getenv, logger)
	if err != nil {
		return err
	}
	defer closeDatabase()

	if err := migrateDatabase(ctx, databaseURL, logger); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("failed to open a connection pool: %w", err)
	}
	defer pool.Close()

	handler, err := newServer(pool, opts.server, logger)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", opts.addr)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", opts.addr, err)
	}

	policy := opts.server.Password
	logger.Info("listening",
		"address", listener.Addr().String(),
		"accounts", len(handler.accounts.hashes),
		"max_failures", policy.MaxFailures,
		"lock_duration", policy.LockDuration,
		"max_lock_duration", policy.MaxLockDuration,
		"failure_window", policy.FailureWindow,
		"lease", opts.server.Idempotency.LeaseDuration,
		"order_delay", opts.server.OrderDelay,
	)
	printExamples(stdout, "http://"+listener.Addr().String())

	return serve(ctx, listener, handler, logger)
}

// serve runs an HTTP server on listener until ctx ends, then shuts it down
// gracefully: it stops accepting connections and waits up to
// shutdownTimeout for requests in flight.
func serve(ctx context.Context, listener net.Listener, handler http.Handler, logger *slog.Logger) error {
	httpServer := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	served := make(chan error, 1)
	go func() { served <- httpServer.Serve(listener) }()

	select {
	case err := <-served:
		return fmt.Errorf("HTTP server failed: %w", err)
	case <-ctx.Done():
	}

	logger.Info("shutting down", "timeout", shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("graceful shutdown failed: %w", err)
	}
	<-served // http.ErrServerClosed once Shutdown has begun
	logger.Info("stopped")
	return nil
}

// printExamples writes curl commands that try each endpoint of the server
// at baseURL.
func printExamples(w io.Writer, baseURL string) {
	login := fmt.Sprintf(`{"email":%q,"password":%q}`, demoEmail, demoPassword)
	wrongLogin := fmt.Sprintf(`{"email":%q,"password":"wrong"}`, demoEmail)
	examples := []struct{ title, command string }{
		{"Log in", `curl -i -X POST ` + baseURL + `/login -H 'Content-Type: application/json' -d '` + login + `'`},
		{"Fail a login (repeat to get 429 with Retry-After)", `curl -i -X POST ` + baseURL + `/login -H 'Content-Type: application/json' -d '` + wrongLogin + `'`},
		{"Create an order (repeat with the same key to get the stored response back)", `curl -i -X POST ` + baseURL + `/orders -H 'Idempotency-Key: order-1' -H 'X-Organization-ID: acme' -H 'Content-Type: application/json' -d '{"item":"widget","quantity":2}'`},
		{"Reuse the key with another body (422)", `curl -i -X POST ` + baseURL + `/orders -H 'Idempotency-Key: order-1' -H 'X-Organization-ID: acme' -H 'Content-Type: application/json' -d '{"item":"widget","quantity":3}'`},
		{"Read an order", `curl -i ` + baseURL + `/orders/1 -H 'X-Organization-ID: acme'`},
	}

	var b strings.Builder
	fmt.Fprintf(&b, "pgguard demo API at %s. Try:\n", baseURL)
	for _, e := range examples {
		fmt.Fprintf(&b, "\n# %s\n%s\n", e.title, e.command)
	}
	_, _ = io.WriteString(w, b.String())
}
