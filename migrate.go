// Package pgguard holds the database schema of pgguard and runs its
// migrations. The typed queries live in package dbgen and the lockout and
// idempotency logic in package service.
package pgguard

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	_ "github.com/amacneil/dbmate/v2/pkg/driver/postgres" // registers the postgres:// scheme with dbmate
	"github.com/jackc/pgx/v5"
)

// Migrations contains the dbmate migration files, in the directory
// "db/migrations". Applications that run dbmate themselves can point it at
// this file system.
//
//go:embed db/migrations/*.sql
var Migrations embed.FS

// MigrationsDir is the directory inside [Migrations] that holds the files.
const MigrationsDir = "db/migrations"

// migrationLockID is the advisory lock key that serializes concurrent
// migration runs against one database ("pgguard" as ASCII, big-endian).
const migrationLockID int64 = 0x7067677561726400

// MigrateOptions adjusts [Migrate]. The zero value applies pgguard's own
// migrations and records them in schema_migrations, the dbmate default.
type MigrateOptions struct {
	// FS and Dir select other migrations, for example an application's own
	// that run after pgguard's. Defaults to [Migrations] and [MigrationsDir].
	FS  fs.FS
	Dir string
	// Table records applied migrations. Defaults to "schema_migrations".
	Table string
	// Log receives dbmate's progress output. Defaults to io.Discard.
	Log io.Writer
}

// Migrate applies pending migrations to the database at databaseURL, a
// postgres:// URL. It holds a Postgres advisory lock while dbmate runs, so
// when several processes migrate at once one applies the migrations and the
// others wait, then find nothing to do. It never writes a schema file.
func Migrate(ctx context.Context, databaseURL string, opts MigrateOptions) error {
	u, err := url.Parse(databaseURL)
	if err != nil {
		// A *url.Error quotes the whole URL, password included, so only
		// the reason is kept.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return fmt.Errorf("pgguard: invalid database URL: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("pgguard: database URL scheme %q is not supported, use postgres://", u.Scheme)
	}

	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("pgguard: failed to connect for migrations: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockID); err != nil {
		return fmt.Errorf("pgguard: failed to take the migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLockID) //nolint:errcheck // closing the connection releases it too

	db := dbmate.New(u)
	db.AutoDumpSchema = false
	db.FS = Migrations
	db.MigrationsDir = []string{MigrationsDir}
	db.Log = io.Discard
	if opts.Dir != "" {
		db.FS = opts.FS
		db.MigrationsDir = []string{opts.Dir}
	}
	if opts.Table != "" {
		db.MigrationsTableName = opts.Table
	}
	if opts.Log != nil {
		db.Log = opts.Log
	}

	if err := db.Migrate(); err != nil {
		return fmt.Errorf("pgguard: failed to apply migrations: %w", err)
	}
	return nil
}
