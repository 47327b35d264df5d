package pgfind

import (
	"context"
	"crypto/rand"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const testEnvVar = "PGFIND_TEST_DATABASE_URL"

// unsetEnv unsets key for the duration of the test and restores it after.
func unsetEnv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "") // registers the restore and forbids t.Parallel
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}

// withoutDocker hides any Docker engine from Find for the duration of the test.
func withoutDocker(t *testing.T) {
	t.Helper()
	unsetEnv(t, "DOCKER_HOST")
	saved := dockerSocketPath
	dockerSocketPath = filepath.Join(t.TempDir(), "no-docker.sock")
	t.Cleanup(func() { dockerSocketPath = saved })
}

// findLocalForTest returns a local server or fails with Find's explanation,
// unless the machine provides PostgreSQL only through TEST_DATABASE_URL or
// Docker, in which case the local tests do not apply.
func findLocalForTest(t *testing.T) *Server {
	t.Helper()
	dockerOK, _ := dockerConfigured()
	providedElsewhere := os.Getenv("TEST_DATABASE_URL") != "" || dockerOK

	withoutDocker(t)
	unsetEnv(t, testEnvVar)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := Find(ctx, testEnvVar)
	if err != nil {
		if providedElsewhere && errors.Is(err, ErrNotFound) {
			t.Skipf("no local PostgreSQL server, and one is provided through TEST_DATABASE_URL or Docker: %v", err)
		}
		t.Fatal(err)
	}
	return srv
}

func TestFindLocalServer(t *testing.T) {
	srv := findLocalForTest(t)

	if srv.Method != MethodLocal {
		t.Errorf("Method = %v, want %v", srv.Method, MethodLocal)
	}
	if !strings.HasPrefix(srv.Source, "local server at ") {
		t.Errorf("Source = %q, want a local server description", srv.Source)
	}
	if err := srv.Close(context.Background()); err != nil {
		t.Errorf("Close of a local server: %v", err)
	}
	t.Logf("found %s", srv.Source)
}

func TestFindEnvVarWins(t *testing.T) {
	local := findLocalForTest(t)
	t.Setenv(testEnvVar, local.URL)

	srv, err := Find(context.Background(), testEnvVar)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Method != MethodEnv {
		t.Errorf("Method = %v, want %v", srv.Method, MethodEnv)
	}
	if srv.URL != local.URL {
		t.Errorf("URL = %q, want the environment value %q", RedactURL(srv.URL), RedactURL(local.URL))
	}
	if !strings.HasPrefix(srv.Source, testEnvVar+" (") {
		t.Errorf("Source = %q, want it to name %s", srv.Source, testEnvVar)
	}
}

func TestFindEnvVarUnreachable(t *testing.T) {
	withoutDocker(t)
	// Port 1 on loopback has no PostgreSQL server, so the connection is refused.
	t.Setenv(testEnvVar, "postgres://someone:secret-password@127.0.0.1:1/db?sslmode=disable")

	_, err := Find(context.Background(), testEnvVar)
	if err == nil {
		t.Fatal("Find succeeded with an unreachable URL, want an error")
	}
	if errors.Is(err, ErrNotFound) {
		t.Errorf("error wraps ErrNotFound, want an error about %s only: %v", testEnvVar, err)
	}
	if !strings.Contains(err.Error(), testEnvVar+" is set") {
		t.Errorf("error does not name %s: %v", testEnvVar, err)
	}
	if strings.Contains(err.Error(), "secret-password") {
		t.Errorf("error contains the password: %v", err)
	}
}

func TestFindEnvVarNotAURL(t *testing.T) {
	withoutDocker(t)
	t.Setenv(testEnvVar, "host=localhost user=postgres")

	_, err := Find(context.Background(), testEnvVar)
	if err == nil {
		t.Fatal("Find accepted a keyword/value string, want an error asking for a URL")
	}
	if !strings.Contains(err.Error(), "postgres://") {
		t.Errorf("error does not show the expected URL form: %v", err)
	}
}

func TestFindNothingExplainsAllWays(t *testing.T) {
	withoutDocker(t)
	unsetEnv(t, testEnvVar)
	t.Setenv("PGHOST", filepath.Join(t.TempDir(), "no-server"))

	_, err := Find(context.Background(), testEnvVar)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	msg := err.Error()
	for _, want := range []string{
		testEnvVar + " is not set",
		"DOCKER_HOST is not set",
		"no-server",
		"set " + testEnvVar + " to a postgres:// URL",
		"start Docker",
		"start a local PostgreSQL server",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not contain %q:\n%s", want, msg)
		}
	}
}

func TestDockerConfigured(t *testing.T) {
	withoutDocker(t)

	if ok, found := dockerConfigured(); ok {
		t.Errorf("dockerConfigured() = true (%s) with no DOCKER_HOST and no socket", found)
	}

	socket := filepath.Join(t.TempDir(), "docker.sock")
	if err := os.WriteFile(socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dockerSocketPath = socket
	if ok, found := dockerConfigured(); !ok {
		t.Errorf("dockerConfigured() = false (%s) with %s present", found, socket)
	}

	dockerSocketPath = filepath.Join(t.TempDir(), "missing.sock")
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
	if ok, found := dockerConfigured(); !ok || !strings.Contains(found, "tcp://127.0.0.1:2375") {
		t.Errorf("dockerConfigured() = %v, %q with DOCKER_HOST set", ok, found)
	}
}

func TestContainerImage(t *testing.T) {
	unsetEnv(t, ImageEnvVar)
	if got := containerImage(); got != DefaultImage {
		t.Errorf("containerImage() = %q, want %q", got, DefaultImage)
	}
	t.Setenv(ImageEnvVar, "postgres:17-alpine")
	if got := containerImage(); got != "postgres:17-alpine" {
		t.Errorf("containerImage() = %q, want the value of %s", got, ImageEnvVar)
	}
}

func TestDatabaseURL(t *testing.T) {
	tests := []struct {
		serverURL string
		want      string
	}{
		{
			serverURL: "postgres://u:p@db.example:5433/postgres?sslmode=disable",
			want:      "postgres://u:p@db.example:5433/other?sslmode=disable",
		},
		{
			serverURL: "postgres://root@/root?host=%2Fvar%2Frun%2Fpostgresql&port=5432&sslmode=disable",
			want:      "postgres://root@/other?host=%2Fvar%2Frun%2Fpostgresql&port=5432&sslmode=disable",
		},
		{
			serverURL: "postgresql://u@[::1]:5432?dbname=postgres",
			want:      "postgresql://u@[::1]:5432/other",
		},
	}
	for _, tt := range tests {
		srv := &Server{URL: tt.serverURL}
		if got := srv.DatabaseURL("other"); got != tt.want {
			t.Errorf("DatabaseURL(%q) on %q = %q, want %q", "other", tt.serverURL, got, tt.want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	got := RedactURL("postgres://user:secret@localhost:5432/db")
	if strings.Contains(got, "secret") {
		t.Errorf("RedactURL kept the password: %q", got)
	}
	if !strings.Contains(got, "user:") || !strings.Contains(got, "localhost:5432/db") {
		t.Errorf("RedactURL = %q, want user, host and database kept", got)
	}
}

func TestLocalURLParsesWithSSLMode(t *testing.T) {
	srv := findLocalForTest(t)

	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.ParseConfig(srv.URL); err != nil {
		t.Fatalf("pgx rejects the URL %s: %v", RedactURL(srv.URL), err)
	}
	if u.Query().Get("sslmode") == "" {
		t.Errorf("URL %s has no sslmode, but lib/pq defaults to require", RedactURL(srv.URL))
	}
}

func TestLocalFallsBackFromMissingRole(t *testing.T) {
	local := findLocalForTest(t)
	unsetEnv(t, "PGUSER")
	unsetEnv(t, "PGDATABASE")

	cfg, err := pgx.ParseConfig(local.URL)
	if err != nil {
		t.Fatal(err)
	}
	host := localHost{host: cfg.Host, port: cfg.Port}
	if _, err := tryLocalLogin(context.Background(), host, localLogin{user: fallbackRole, database: fallbackRole}); err != nil {
		t.Skipf("role %q cannot log in and create databases on this server, so the fallback cannot succeed: %v", fallbackRole, err)
	}

	missing := localLogin{user: "pgfind_no_such_role", database: "pgfind_no_such_role"}
	srv, reports := tryLocalHost(context.Background(), host, missing)
	if srv == nil {
		t.Fatalf("tryLocalHost found no server; attempts:\n%s", strings.Join(reports, "\n"))
	}
	if !strings.Contains(srv.Source, "user "+fallbackRole) {
		t.Errorf("Source = %q, want the fallback role %q", srv.Source, fallbackRole)
	}
}

func TestCreateAndDropDatabase(t *testing.T) {
	srv := findLocalForTest(t)
	ctx := context.Background()
	name := "pgfind_test_" + strings.ToLower(rand.Text()[:12])

	if err := srv.CreateDatabase(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.DropDatabase(context.Background(), name) })

	// A connected session and the template flag must not stop the drop.
	conn, err := pgx.Connect(ctx, srv.DatabaseURL(name))
	if err != nil {
		t.Fatalf("connecting to the new database: %v", err)
	}
	defer conn.Close(ctx)
	if err := srv.exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH IS_TEMPLATE true"); err != nil {
		t.Fatal(err)
	}

	if err := srv.DropDatabase(ctx, name); err != nil {
		t.Fatalf("DropDatabase: %v", err)
	}
	if exists := databaseExists(t, srv, name); exists {
		t.Errorf("database %q still exists after DropDatabase", name)
	}
	if err := srv.DropDatabase(ctx, name); err != nil {
		t.Errorf("DropDatabase of a missing database: %v, want nil", err)
	}
}

func TestDatabaseNameLimits(t *testing.T) {
	srv := &Server{URL: "postgres://unused@127.0.0.1:1/x"}
	ctx := context.Background()

	if err := srv.CreateDatabase(ctx, "", ""); err == nil {
		t.Error("CreateDatabase accepted an empty name")
	}
	long := strings.Repeat("a", maxIdentifierLength+1)
	if err := srv.CreateDatabase(ctx, long, ""); err == nil || !strings.Contains(err.Error(), "maximum") {
		t.Errorf("CreateDatabase with a %d-byte name: err = %v, want a length error", len(long), err)
	}
	if err := srv.DropDatabase(ctx, long); err == nil {
		t.Errorf("DropDatabase accepted a %d-byte name", len(long))
	}
}

func databaseExists(t *testing.T, srv *Server, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	var exists bool
	err = conn.QueryRow(context.Background(),
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	return exists
}
