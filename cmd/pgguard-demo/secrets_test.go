package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// Values that must never appear in a log line, an error message or a
// response of the demo.
const (
	secretPassword       = "pw-5ecret-7f3a"
	secretKey            = "key-5ecret-91bd"
	secretBody           = "body-5ecret-c04e"
	secretConnPassword   = "conn-5ecret-2d8e"
	secretsApplication   = "pgguard-demo-secrets-test"
	unreachableSecretURL = "postgres://postgres:" + secretConnPassword + "@127.0.0.1:1/pgguard?connect_timeout=2&sslmode=disable"
)

// logCapture is an io.Writer that keeps everything a slog handler writes.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func TestNoSecretsInLogsOrResponses(t *testing.T) {
	t.Parallel()
	logs := &logCapture{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var seen []string // error messages and the bodies of error responses

	// The test server trusts local connections, so the password in the
	// URL is sent and ignored.
	db := newTestDatabase(t)
	u, err := url.Parse(db.URL)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), secretConnPassword)
	query := u.Query()
	query.Set("application_name", secretsApplication)
	u.RawQuery = query.Encode()
	databaseURL := u.String()

	config := fastConfig()
	config.Accounts = []credential{{Email: "alice@example.com", Password: secretPassword}}
	serve := func(poolURL string) *scenario {
		pool, err := pgxpool.New(t.Context(), poolURL)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		handler, err := newServer(pool, config, logger)
		require.NoError(t, err)
		server := httptest.NewServer(handler)
		t.Cleanup(server.Close)
		return &scenario{baseURL: server.URL, client: server.Client(), organizationID: "acme"}
	}
	send := func(client *scenario, req request) {
		ex, err := client.send(t.Context(), req)
		require.NoError(t, err)
		if ex.status >= 400 {
			seen = append(seen, string(ex.body))
		}
	}
	login := func(client *scenario, password string) {
		send(client, loginRequestFor("alice@example.com", password))
	}

	client := serve(databaseURL)
	login(client, secretPassword)
	for range config.Password.MaxFailures + 1 {
		login(client, "wrong "+secretPassword)
	}
	send(client, request{method: http.MethodPost, path: "/login", body: `{"email":"alice@example.com","password":"` + secretPassword})
	send(client, request{method: http.MethodPost, path: "/login", body: `{"email":"alice@example.com","password":"x","otp":"` + secretPassword + `"}`})
	order := `{"item":"` + secretBody + `","quantity":1}`
	send(client, client.orderRequest(secretKey, order))
	send(client, client.orderRequest(secretKey, order))
	send(client, client.orderRequest(secretKey, `{"item":"other `+secretBody+`","quantity":1}`))
	send(client, client.orderRequest(secretKey+", "+secretKey, order))
	send(client, client.orderRequest("short-"+secretKey, `{"item":"`+secretBody))
	send(client, client.orderRequest("nul-"+secretKey, `{"item":"`+secretBody+`\u0000","quantity":1}`))

	// Errors of killed connections and of an unreachable server are
	// logged with the driver's messages.
	_, err = db.Pool.Exec(t.Context(), `
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, secretsApplication)
	require.NoError(t, err)
	login(client, secretPassword)
	send(client, client.orderRequest("after-kill-"+secretKey, order))
	down := serve(unreachableSecretURL)
	login(down, secretPassword)
	send(down, down.orderRequest(secretKey, order))

	// Starting the server logs the database URL without its password.
	getenv := func(name string) string {
		if name == databaseURLEnvVar {
			return unreachableSecretURL
		}
		return ""
	}
	_, closeDatabase, err := openServerDatabase(t.Context(), getenv, logger)
	require.NoError(t, err)
	closeDatabase()
	require.Contains(t, logs.String(), "using the database in DATABASE_URL")

	// Rejected accounts on the command line are reported without their
	// password.
	for _, account := range []string{"alice" + secretPassword, "alice:" + secretPassword, "alice@example.com:" + secretPassword + strings.Repeat("p", maxPasswordBytes)} {
		_, err := parseOptions([]string{"-account", account}, func(string) string { return "" }, io.Discard)
		require.Error(t, err)
		seen = append(seen, err.Error())
	}

	output := logs.String()
	require.Contains(t, output, "lockout locked", "the lock was not logged, so the test checks less than it should")
	for _, secret := range []string{secretPassword, secretKey, secretBody, secretConnPassword} {
		require.NotContains(t, output, secret, "a log line contains a secret")
		for _, text := range seen {
			require.NotContains(t, text, secret, "an error message or response contains a secret")
		}
	}
}
