package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgfind"
)

// demoMigrations creates the demo's own tables. They run after pgguard's
// and are recorded in their own table, as an application's would be.
//
//go:embed migrations/*.sql
var demoMigrations embed.FS

const (
	demoMigrationsDir   = "migrations"
	demoMigrationsTable = "demo_schema_migrations"
)

// serverDatabaseName is the database the server uses when DATABASE_URL is
// unset. It is kept between runs, so orders and lockout counters persist.
const serverDatabaseName = "pgguard_demo"

// findTimeout bounds the search for a Postgres server. pgfind may pull a
// container image, which can take minutes.
const findTimeout = 5 * time.Minute

// migrateDatabase applies pgguard's migrations, then the demo's.
func migrateDatabase(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	output := &logLineWriter{logger: logger, message: "migration"}
	if err := pgguard.Migrate(ctx, databaseURL, pgguard.MigrateOptions{Log: output}); err != nil {
		return err
	}
	err := pgguard.Migrate(ctx, databaseURL, pgguard.MigrateOptions{
		FS:    demoMigrations,
		Dir:   demoMigrationsDir,
		Table: demoMigrationsTable,
		Log:   output,
	})
	if err != nil {
		return fmt.Errorf("demo migrations: %w", err)
	}
	return nil
}

// openServerDatabase returns the URL of the database the server uses:
// DATABASE_URL when it is set, else database pgguard_demo, created if
// missing, on a server that pgfind finds. The returned function releases
// what pgfind started, such as a container.
func openServerDatabase(ctx context.Context, getenv func(string) string, logger *slog.Logger) (string, func(), error) {
	if databaseURL := getenv(databaseURLEnvVar); databaseURL != "" {
		logger.Info("using the database in "+databaseURLEnvVar, "url", pgfind.RedactURL(databaseURL))
		return databaseURL, func() {}, nil
	}

	findCtx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	server, err := pgfind.Find(findCtx, databaseURLEnvVar)
	if err != nil {
		return "", nil, err
	}
	closeServer := func() {
		if err := server.Close(context.WithoutCancel(ctx)); err != nil {
			logger.Error("failed to stop the Postgres server that pgfind started", "error", err)
		}
	}

	err = server.CreateDatabase(ctx, serverDatabaseName, "")
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		logger.Info("created database", "database", serverDatabaseName, "server", server.Source)
	case errors.As(err, &pgErr) && pgErr.Code == "42P04": // duplicate_database
		logger.Info("using existing database", "database", serverDatabaseName, "server", server.Source)
	default:
		closeServer()
		return "", nil, err
	}
	return server.DatabaseURL(serverDatabaseName), closeServer, nil
}

// logLineWriter logs each line written to it, such as dbmate's progress
// output, as one record.
type logLineWriter struct {
	logger  *slog.Logger
	message string
}

func (w *logLineWriter) Write(p []byte) (int, error) {
	for line := range strings.Lines(string(p)) {
		if trimmed := strings.TrimSpace(line); trimmed != "" {
			w.logger.Info(w.message, "output", trimmed)
		}
	}
	return len(p), nil
}
