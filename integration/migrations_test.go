package integration

import (
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgtest"
)

func newDBMate(t *testing.T, databaseURL string) *dbmate.DB {
	t.Helper()

	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	db := dbmate.New(u)
	db.AutoDumpSchema = false
	db.FS = pgguard.Migrations
	db.MigrationsDir = []string{pgguard.MigrationsDir}
	db.Log = io.Discard
	return db
}

// schemaObjects lists the tables and functions of the public schema.
func schemaObjects(t *testing.T, db *pgtest.DB) []string {
	t.Helper()

	rows, err := db.Pool.Query(t.Context(), `
		SELECT 'table ' || table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
		UNION ALL
		SELECT 'function ' || routine_name FROM information_schema.routines
		WHERE routine_schema = 'public'
		ORDER BY 1`)
	require.NoError(t, err)
	var names []string
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		names = append(names, name)
	}
	require.NoError(t, rows.Err())
	return names
}

// schemaListing lists every column, constraint, index and function of the
// public schema, with its definition, and the applied migration versions,
// so two databases with the same listing have the same schema.
func schemaListing(t *testing.T, db *pgtest.DB) []string {
	t.Helper()

	rows, err := db.Pool.Query(t.Context(), `
		SELECT format('column %s.%s %s nullable=%s default=%s',
			table_name, column_name, data_type, is_nullable, coalesce(column_default, ''))
		FROM information_schema.columns WHERE table_schema = 'public'
		UNION ALL
		SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
		FROM pg_constraint WHERE connamespace = 'public'::regnamespace
		UNION ALL
		SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
		UNION ALL
		SELECT format('function %s %s', oid::regprocedure, md5(pg_get_functiondef(oid)))
		FROM pg_proc WHERE pronamespace = 'public'::regnamespace
		UNION ALL
		SELECT 'migration ' || version FROM schema_migrations
		ORDER BY 1`)
	require.NoError(t, err)
	var listing []string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		listing = append(listing, line)
	}
	require.NoError(t, rows.Err())
	return listing
}

// deployMigrate runs "make deploy-migrate", the production target, against
// databaseURL from the repository root.
func deployMigrate(t *testing.T, databaseURL string) {
	t.Helper()

	cmd := exec.CommandContext(t.Context(), "make", "--no-print-directory", "-C", "..", "deploy-migrate")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL)
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "make deploy-migrate:\n%s", output)
}

func TestMigrations(t *testing.T) {
	t.Parallel()

	t.Run("UpDownUp", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewEmpty(t)
		migrator := newDBMate(t, db.URL)

		require.NoError(t, pgguard.Migrate(t.Context(), db.URL, pgguard.MigrateOptions{}))
		applied := schemaObjects(t, db)
		require.Contains(t, applied, "table auth_attempts")
		require.Contains(t, applied, "table idempotency_records")

		migrations, err := migrator.FindMigrations()
		require.NoError(t, err)
		for range migrations {
			require.NoError(t, migrator.Rollback())
		}
		require.Empty(t, schemaObjects(t, db))

		require.NoError(t, migrator.Migrate())
		require.Equal(t, applied, schemaObjects(t, db))
	})

	t.Run("MigrateTwiceKeepsSchema", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewEmpty(t)

		require.NoError(t, pgguard.Migrate(t.Context(), db.URL, pgguard.MigrateOptions{}))
		first := schemaListing(t, db)
		require.NoError(t, pgguard.Migrate(t.Context(), db.URL, pgguard.MigrateOptions{}))

		require.Equal(t, first, schemaListing(t, db))
	})

	t.Run("DeployMigrateTwiceKeepsSchema", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewEmpty(t)
		// The template of pgtest.New is migrated with pgguard.Migrate.
		want := schemaListing(t, pgtest.New(t))

		deployMigrate(t, db.URL)
		require.Equal(t, want, schemaListing(t, db))
		deployMigrate(t, db.URL)
		require.Equal(t, want, schemaListing(t, db))
	})

	t.Run("ConcurrentRunsApplyOnce", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewEmpty(t)

		errs := make(chan error, 4)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				errs <- pgguard.Migrate(t.Context(), db.URL, pgguard.MigrateOptions{})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		files, err := fs.Glob(pgguard.Migrations, pgguard.MigrationsDir+"/*.sql")
		require.NoError(t, err)
		var applied int
		require.NoError(t, db.Pool.QueryRow(t.Context(), "SELECT count(*) FROM schema_migrations").Scan(&applied))
		require.Equal(t, len(files), applied)
	})
}
