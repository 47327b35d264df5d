package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"path"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/internal/pgfind"
)

// templateVersion goes into the template hash. Change it when the way a
// template is built changes, so that old templates are not reused.
const templateVersion = "pgtest template v1"

// templateHash returns a SHA-256 over the names and contents of the files
// in dir of fsys, in name order.
func templateHash(fsys fs.FS, dir string) ([]byte, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("failed to list the migrations: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, entry := range entries {
		if !entry.IsDir() {
			names = append(names, entry.Name())
		}
	}
	sort.Strings(names)

	h := sha256.New()
	h.Write([]byte(templateVersion))
	for _, name := range names {
		content, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("failed to read migration %s: %w", name, err)
		}
		// Length prefixes keep different splits of the same bytes apart.
		writeField(h, []byte(name))
		writeField(h, content)
	}
	return h.Sum(nil), nil
}

func writeField(h hash.Hash, field []byte) {
	var length [8]byte
	binary.BigEndian.PutUint64(length[:], uint64(len(field)))
	h.Write(length[:])
	h.Write(field)
}

// migrationSet is the directory of dbmate migrations that a template is
// built from.
type migrationSet struct {
	fsys fs.FS
	dir  string
}

// pgguardMigrations is the migration set of [New].
var pgguardMigrations = migrationSet{fsys: pgguard.Migrations, dir: pgguard.MigrationsDir}

// templateDatabase is a migrated template database on the server.
type templateDatabase struct {
	// name is pgguard_tpl_<id>.
	name string
	// id is 16 hex digits of the template hash. The ready clones of the
	// template carry it in their names too.
	id string
}

// ensureTemplate returns the template database for migrations, and builds
// it first when the server does not have it yet.
func ensureTemplate(ctx context.Context, srv *pgfind.Server, migrations migrationSet) (templateDatabase, error) {
	sum, err := templateHash(migrations.fsys, migrations.dir)
	if err != nil {
		return templateDatabase{}, err
	}
	tpl := templateDatabase{id: hex.EncodeToString(sum[:8])}
	tpl.name = "pgguard_tpl_" + tpl.id
	name := tpl.name
	// The lock key comes from the same hash, so processes building
	// different templates do not wait for each other.
	lockKey := int64(binary.BigEndian.Uint64(sum[8:16]))

	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		return templateDatabase{}, fmt.Errorf("failed to connect to %s: %w", srv.Source, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// A session lock is released when the connection closes, so a test
	// process that dies while building does not block the others.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return templateDatabase{}, fmt.Errorf("failed to take the advisory lock for template %s: %w", name, err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey) //nolint:errcheck // closing the connection releases it too

	// The template flag is set last, so it marks a complete template.
	var isTemplate bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&isTemplate)
	switch {
	case err == nil && isTemplate:
		return tpl, nil
	case err == nil:
		// A process died while building it.
		if err := srv.DropDatabase(ctx, name); err != nil {
			return templateDatabase{}, fmt.Errorf("failed to drop incomplete template: %w", err)
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return templateDatabase{}, fmt.Errorf("failed to look up template %s: %w", name, err)
	}

	if err := buildTemplate(ctx, srv, conn, name, migrations); err != nil {
		return templateDatabase{}, err
	}
	return tpl, nil
}

// buildTemplate creates database name, applies the migrations and marks it
// as a template. conn is a connection to the admin database.
func buildTemplate(ctx context.Context, srv *pgfind.Server, conn *pgx.Conn, name string, migrations migrationSet) error {
	if err := srv.CreateDatabase(ctx, name, ""); err != nil {
		return err
	}
	if err := pgguard.Migrate(ctx, srv.DatabaseURL(name), pgguard.MigrateOptions{FS: migrations.fsys, Dir: migrations.dir}); err != nil {
		return fmt.Errorf("failed to migrate template %s: %w", name, err)
	}

	// Disallowing connections keeps stray sessions (a developer's psql, for
	// example) out of the template, because PostgreSQL cannot copy a
	// database while another session is connected to it.
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident+" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"); err != nil {
		return fmt.Errorf("failed to mark %s as a template: %w", name, err)
	}
	return nil
}
