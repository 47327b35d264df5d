// Package pgfind locates a PostgreSQL server for tests and for the demo
// program. [Find] tries three ways, in this order, and uses the first that
// works:
//
//  1. a postgres:// URL in an environment variable that the caller names
//     (tests use TEST_DATABASE_URL, the demo uses DATABASE_URL);
//  2. a new container started with testcontainers, but only when a Docker
//     engine is configured (DOCKER_HOST is set or /var/run/docker.sock
//     exists);
//  3. a local server, found the way psql finds one: PGHOST, PGPORT, PGUSER,
//     PGPASSWORD and PGDATABASE, then the libpq defaults.
//
// The returned [Server] contains an admin URL from which the caller may create
// and drop databases.
package pgfind

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
)

// ErrNotFound is wrapped by the error that [Find] returns when none of the
// three ways found a server.
var ErrNotFound = errors.New("pgfind: no PostgreSQL server found")

// connectTimeout limits each connection attempt to an environment URL or a
// local server, so a server that does not respond fails fast.
const connectTimeout = 5 * time.Second

// Method is the way [Find] located a server.
type Method int

const (
	// MethodEnv is a URL from the environment variable passed to [Find].
	MethodEnv Method = iota + 1
	// MethodContainer is a container started with testcontainers.
	MethodContainer
	// MethodLocal is a local server found through the libpq defaults.
	MethodLocal
)

// String returns a short name of the method, for logs.
func (m Method) String() string {
	switch m {
	case MethodEnv:
		return "environment"
	case MethodContainer:
		return "container"
	case MethodLocal:
		return "local"
	default:
		return fmt.Sprintf("Method(%d)", int(m))
	}
}

// Server is a PostgreSQL server that [Find] located.
type Server struct {
	// URL is a postgres:// URL of an existing database on the server that the
	// caller may run CREATE DATABASE and DROP DATABASE from. It may contain a
	// password, so log it through [RedactURL].
	URL string
	// Method is the way the server was found.
	Method Method
	// Source describes the server for people, without a password, for
	// example "local server at host /var/run/postgresql port 5432 as user
	// root, database root".
	Source string

	container *postgres.PostgresContainer
}

// Find locates a PostgreSQL server. envVar names the environment variable
// that may hold a postgres:// URL, for example "TEST_DATABASE_URL".
//
// When envVar is set and not empty, Find uses that URL or returns its
// error, and never falls back to another server, so a typo does not silently
// send work to a different database. Find checks that the URL connects.
// Unlike with a local server, it does not check that the role may create
// databases.
//
// When no way works, the error wraps [ErrNotFound] and lists what each way
// found and how to provide a server.
//
// Starting a container may pull an image, so give ctx a generous deadline
// (minutes, not seconds). Call [Server.Close] when done with the server.
func Find(ctx context.Context, envVar string) (*Server, error) {
	if envVar == "" {
		return nil, errors.New("pgfind: the environment variable name is empty")
	}

	if rawURL := os.Getenv(envVar); rawURL != "" {
		return findFromEnv(ctx, envVar, rawURL)
	}
	envReport := envVar + " is not set"

	srv, containerReport := findContainer(ctx)
	if srv != nil {
		return srv, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pgfind: %s: %w", containerReport, err)
	}

	srv, localReport := findLocal(ctx)
	if srv != nil {
		return srv, nil
	}

	return nil, notFoundError(envVar, envReport, containerReport, localReport)
}

// notFoundError builds the error that lists the three ways tried and how to
// provide a server.
func notFoundError(envVar, envReport, containerReport, localReport string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s; tried, in order:\n", ErrNotFound)
	fmt.Fprintf(&b, "  1. environment variable: %s\n", envReport)
	fmt.Fprintf(&b, "  2. Docker (testcontainers): %s\n", indent(containerReport, "     "))
	fmt.Fprintf(&b, "  3. local server (libpq defaults): %s\n", indent(localReport, "     "))
	b.WriteString("Provide a server in one of these ways:\n")
	fmt.Fprintf(&b, "  - set %s to a postgres:// URL of a server where that user may create databases,\n", envVar)
	fmt.Fprintf(&b, "    for example %s=postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable\n", envVar)
	fmt.Fprintf(&b, "  - start Docker, or set DOCKER_HOST, so that a %s container can be started\n", containerImage())
	b.WriteString("  - start a local PostgreSQL server that psql reaches without arguments, or set PGHOST, PGPORT, PGUSER and PGPASSWORD")
	return &notFound{msg: b.String()}
}

// notFound is the multi-line error of [Find]. It unwraps to [ErrNotFound],
// whose text is its first line.
type notFound struct{ msg string }

func (e *notFound) Error() string { return e.msg }
func (e *notFound) Unwrap() error { return ErrNotFound }

// indent puts prefix in front of every line of s after the first.
func indent(s, prefix string) string {
	return strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// Close terminates the container when [Find] started one, and does nothing
// otherwise. It does not drop databases that the caller created.
func (s *Server) Close(ctx context.Context) error {
	if s == nil || s.container == nil {
		return nil
	}
	return terminateContainer(ctx, s.container)
}

// DatabaseURL returns the URL of database name on the same server, with the
// same user, password and parameters as [Server.URL].
func (s *Server) DatabaseURL(name string) string {
	u, err := url.Parse(s.URL)
	if err != nil {
		// Find returns only URLs that parse, so this is a programming error.
		panic(fmt.Sprintf("pgfind: Server.URL is not a valid URL: %v", err))
	}
	u.Path = "/" + name
	u.RawPath = ""

	// A dbname parameter overrides the path in libpq and pgx.
	query := u.Query()
	if query.Has("dbname") {
		query.Del("dbname")
		u.RawQuery = query.Encode()
	}
	return u.String()
}

// RedactURL returns rawURL with its password replaced by "xxxxx", for logs.
// A string that does not parse as a URL comes back as "(invalid URL)"
// because it may contain a password in a form that cannot be found.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}

// describeURL returns "host H, database D" for a postgres:// URL, without the
// user or password.
func describeURL(u *url.URL) string {
	host := u.Host
	if h := u.Query().Get("host"); h != "" {
		host = h
	}
	if host == "" {
		host = "(libpq default)"
	}
	database := strings.TrimPrefix(u.Path, "/")
	if d := u.Query().Get("dbname"); d != "" {
		database = d
	}
	if database == "" {
		database = "(user name)"
	}
	return fmt.Sprintf("host %s, database %s", host, database)
}

// probe connects to rawURL within connectTimeout and runs SELECT 1.
func probe(ctx context.Context, rawURL string) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()

	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var result int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&result); err != nil {
		return fmt.Errorf("SELECT 1 failed: %w", err)
	}
	return nil
}
