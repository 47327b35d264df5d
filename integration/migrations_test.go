package integration

import (
	"io"
	"io/fs"
	"net/url"
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
