package pgfind

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// maxIdentifierLength is NAMEDATALEN-1 of a default PostgreSQL build. The
// server truncates longer names, which would make the name in a URL differ
// from the database created.
const maxIdentifierLength = 63

func validateDatabaseName(name string) error {
	if name == "" {
		return errors.New("pgfind: database name is empty")
	}
	if len(name) > maxIdentifierLength {
		return fmt.Errorf("pgfind: database name %q is %d bytes long, the maximum is %d", name, len(name), maxIdentifierLength)
	}
	return nil
}

// CreateDatabase creates database name on the server as a copy of template,
// or of the server's default template (template1) when template is "".
// PostgreSQL rejects the copy while another session is connected to the
// template.
func (s *Server) CreateDatabase(ctx context.Context, name, template string) error {
	if err := validateDatabaseName(name); err != nil {
		return err
	}

	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if err := s.exec(ctx, sql); err != nil {
		if template != "" {
			return fmt.Errorf("pgfind: failed to create database %q from template %q: %w", name, template, err)
		}
		return fmt.Errorf("pgfind: failed to create database %q: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name if it exists. It ends the other sessions
// connected to it (DROP DATABASE ... WITH (FORCE), PostgreSQL 13 and later),
// and first clears the template flag, because PostgreSQL does not drop a
// template database.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := validateDatabaseName(name); err != nil {
		return err
	}

	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		return fmt.Errorf("pgfind: failed to connect to drop database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	ident := pgx.Identifier{name}.Sanitize()
	var isTemplate bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&isTemplate)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgfind: failed to look up database %q: %w", name, err)
	}
	if isTemplate {
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE false"); err != nil {
			return fmt.Errorf("pgfind: failed to clear the template flag of database %q: %w", name, err)
		}
	}

	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgfind: failed to drop database %q: %w", name, err)
	}
	return nil
}

// exec runs one statement on a new connection to the admin database.
func (s *Server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	_, err = conn.Exec(ctx, sql)
	return err
}
