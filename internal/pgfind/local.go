package pgfind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// socketDirs are the Unix socket directories that pgx v5 considers when
// PGHOST is unset: the Debian default, the Homebrew default on macOS and the
// PostgreSQL source default. pgx takes the first that exists, and libpq one
// compiled-in directory. findLocal tries every one that contains a socket.
var socketDirs = []string{"/var/run/postgresql", "/private/tmp", "/tmp"}

// fallbackRole is the role tried when the default role (PGUSER or the OS
// user name) does not exist, fails to authenticate, or may not create
// databases. It is also the database tried when the default one is missing.
const fallbackRole = "postgres"

// errCannotCreateDatabase means the role connected but has neither
// SUPERUSER nor CREATEDB.
var errCannotCreateDatabase = errors.New("role may not create databases (needs CREATEDB or SUPERUSER)")

// localLogin is one role and database to try on a local host.
type localLogin struct {
	user     string
	database string
}

// findLocal looks for a server the way psql does. It returns either the
// server or a report of every attempt.
func findLocal(ctx context.Context) (*Server, string) {
	// ParseConfig("") applies PGHOST, PGPORT, PGUSER and the libpq defaults,
	// so it gives the port and the default role for the attempts below.
	base, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, "reading the libpq environment variables failed: " + err.Error()
	}

	hosts := localHosts(base)
	defaultLogin := localLogin{user: base.User, database: os.Getenv("PGDATABASE")}
	if defaultLogin.user == "" {
		// pgx leaves the role empty when the OS user cannot be looked up.
		defaultLogin.user = fallbackRole
	}
	if defaultLogin.database == "" {
		defaultLogin.database = defaultLogin.user
	}

	var reports []string
	for _, host := range hosts {
		srv, hostReports := tryLocalHost(ctx, host, defaultLogin)
		if srv != nil {
			return srv, ""
		}
		reports = append(reports, hostReports...)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, strings.Join(reports, "\n")
}

// localHost is a host, or a Unix socket directory, and a port.
type localHost struct {
	host string
	port uint16
}

func (h localHost) isSocket() bool { return strings.HasPrefix(h.host, "/") }

func (h localHost) String() string {
	return fmt.Sprintf("host %s port %d", h.host, h.port)
}

// localHosts lists the hosts to try. With PGHOST set they are the hosts it
// names. Without it they are the socket directories that contain a socket
// for the port, then localhost.
func localHosts(base *pgconn.Config) []localHost {
	if os.Getenv("PGHOST") != "" {
		hosts := []localHost{{host: base.Host, port: base.Port}}
		for _, fallback := range base.Fallbacks {
			// pgx adds a fallback per TLS mode, so hosts repeat.
			h := localHost{host: fallback.Host, port: fallback.Port}
			if !containsHost(hosts, h) {
				hosts = append(hosts, h)
			}
		}
		return hosts
	}

	var hosts []localHost
	socketName := ".s.PGSQL." + strconv.Itoa(int(base.Port))
	for _, dir := range socketDirs {
		if _, err := os.Stat(filepath.Join(dir, socketName)); err == nil {
			hosts = append(hosts, localHost{host: dir, port: base.Port})
		}
	}
	return append(hosts, localHost{host: "localhost", port: base.Port})
}

func containsHost(hosts []localHost, h localHost) bool {
	for _, existing := range hosts {
		if existing == h {
			return true
		}
	}
	return false
}

// tryLocalHost tries first login on host, then the fallback role and
// database where the error shows they could help. PGUSER and PGDATABASE,
// when set, are never replaced.
func tryLocalHost(ctx context.Context, host localHost, first localLogin) (*Server, []string) {
	userFromEnv := os.Getenv("PGUSER") != ""
	databaseFromEnv := os.Getenv("PGDATABASE") != ""

	queue := []localLogin{first}
	tried := map[localLogin]bool{}
	var reports []string

	for len(queue) > 0 {
		login := queue[0]
		queue = queue[1:]
		if tried[login] {
			continue
		}
		tried[login] = true

		srv, err := tryLocalLogin(ctx, host, login)
		if err == nil {
			return srv, nil
		}
		reports = append(reports, fmt.Sprintf("%s, user %s, database %s: %v", host, login.user, login.database, err))

		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "3D000": // invalid_catalog_name: no such database
			if !databaseFromEnv {
				queue = append(queue, localLogin{user: login.user, database: fallbackRole})
			}
		case errors.As(err, &pgErr) && (pgErr.Code == "28000" || pgErr.Code == "28P01"),
			errors.Is(err, errCannotCreateDatabase):
			// 28000 covers a missing role and a pg_hba.conf rejection,
			// 28P01 a wrong password.
			if !userFromEnv {
				database := fallbackRole
				if databaseFromEnv {
					database = login.database
				}
				queue = append(queue, localLogin{user: fallbackRole, database: database})
			}
		default:
			// The server is unreachable on this host, so other roles
			// will not help.
			return nil, reports
		}
	}
	return nil, reports
}

// tryLocalLogin connects as login and checks that the role may create
// databases.
func tryLocalLogin(ctx context.Context, host localHost, login localLogin) (*Server, error) {
	rawURL, err := localURL(host, login)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()

	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var mayCreate bool
	err = conn.QueryRow(ctx,
		"SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").Scan(&mayCreate)
	if err != nil {
		return nil, fmt.Errorf("checking the role's privileges failed: %w", err)
	}
	if !mayCreate {
		return nil, errCannotCreateDatabase
	}

	return &Server{
		URL:    rawURL,
		Method: MethodLocal,
		Source: fmt.Sprintf("local server at %s as user %s, database %s", host, login.user, login.database),
	}, nil
}

// localURL builds a postgres:// URL for login on host. The password comes
// from PGPASSWORD or the password file, as pgx resolves it for that host,
// port, role and database.
func localURL(host localHost, login localLogin) (string, error) {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s",
		quoteKeywordValue(host.host), host.port, quoteKeywordValue(login.user), quoteKeywordValue(login.database)))
	if err != nil {
		return "", fmt.Errorf("building the connection settings failed: %w", err)
	}

	u := url.URL{
		Scheme: "postgres",
		Path:   "/" + login.database,
	}
	if cfg.Password != "" {
		u.User = url.UserPassword(login.user, cfg.Password)
	} else {
		u.User = url.User(login.user)
	}

	query := url.Values{}
	if host.isSocket() {
		// A URL cannot hold a path as its host, so libpq, pgx and lib/pq
		// (used by dbmate) all accept the socket directory as a parameter.
		query.Set("host", host.host)
		query.Set("port", strconv.Itoa(int(host.port)))
		query.Set("sslmode", "disable")
	} else {
		u.Host = net.JoinHostPort(host.host, strconv.Itoa(int(host.port)))
		// lib/pq defaults to sslmode=require, libpq and pgx to prefer, so
		// state it for every client of this URL.
		sslMode := os.Getenv("PGSSLMODE")
		if sslMode == "" {
			sslMode = "prefer"
		}
		query.Set("sslmode", sslMode)
	}
	u.RawQuery = query.Encode()
	return u.String(), nil
}

// quoteKeywordValue quotes s for a keyword/value connection string.
func quoteKeywordValue(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `\'`)
	return "'" + s + "'"
}
