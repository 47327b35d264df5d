package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard"
	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// Values that must never appear in a log line or an error message.
const (
	secretKey            = "key-5ecret-91bd"
	secretBody           = "body-5ecret-c04e"
	secretConnPassword   = "conn-5ecret-2d8e"
	secretMemberName     = "member-5ecret-77aa"
	secretsApplication   = "pgguard-secrets-test"
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

// secretsBundle collects the log output and the error messages of one
// test, to search them for secrets at the end.
type secretsBundle struct {
	ctx    context.Context
	logs   *logCapture
	logger *slog.Logger
	mu     sync.Mutex
	texts  []string
}

// note keeps the message of err, and texts the client receives, such as
// a problem details body.
func (s *secretsBundle) note(err error, texts ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.texts = append(s.texts, err.Error())
	}
	s.texts = append(s.texts, texts...)
}

func (s *secretsBundle) requireNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()

	logs := s.logs.String()
	require.NotEmpty(t, logs, "nothing was logged, so the test checks nothing")
	for _, secret := range secrets {
		require.NotContains(t, logs, secret, "a log line contains a secret")
		for _, text := range s.texts {
			require.NotContains(t, text, secret, "an error message contains a secret")
		}
	}
}

// withPassword returns databaseURL with secretConnPassword as its password
// and secretsApplication as its application_name. The test server trusts
// local connections, so the password is sent and ignored.
func withPassword(t *testing.T, databaseURL string) string {
	t.Helper()

	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), secretConnPassword)
	query := u.Query()
	query.Set("application_name", secretsApplication)
	u.RawQuery = query.Encode()
	return u.String()
}

func TestNoSecretsInLogsOrErrors(t *testing.T) {
	t.Parallel()
	logs := &logCapture{}
	s := &secretsBundle{ctx: t.Context(), logs: logs, logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}

	db := pgtest.New(t)
	pool, err := pgxpool.New(s.ctx, withPassword(t, db.URL))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	unreachable, err := pgxpool.New(s.ctx, unreachableSecretURL)
	require.NoError(t, err)
	t.Cleanup(unreachable.Close)

	t.Run("Lockout", func(t *testing.T) {
		lockout, err := service.NewLockout(pool, service.LockoutConfig{Logger: s.logger})
		require.NoError(t, err)
		for range 6 {
			attempt, err := lockout.Begin(s.ctx, service.ChannelPassword, "victim@example.com", "192.0.2.1")
			s.note(err)
			if err == nil {
				_, err = attempt.Fail(s.ctx)
				s.note(err)
			}
		}

		closed, err := service.NewLockout(unreachable, service.LockoutConfig{Logger: s.logger})
		require.NoError(t, err)
		_, err = closed.Begin(s.ctx, service.ChannelPassword, "victim@example.com", "192.0.2.1")
		require.ErrorIs(t, err, service.ErrUnavailable)
		s.note(err)
		open, err := service.NewLockout(unreachable, service.LockoutConfig{Logger: s.logger, FailOpen: true})
		require.NoError(t, err)
		_, err = open.Begin(s.ctx, service.ChannelPassword, "victim@example.com", "192.0.2.1")
		require.NoError(t, err)
	})

	t.Run("Idempotency", func(t *testing.T) {
		idempotency, err := service.NewIdempotency(pool, service.IdempotencyConfig{Logger: s.logger, MaxResponseBytes: 16})
		require.NoError(t, err)
		req := orderRequest(secretKey, `{"item":"`+secretBody+`"}`)
		claim, _, err := idempotency.Begin(s.ctx, req)
		require.NoError(t, err)
		s.note(claim.Complete(s.ctx, service.StoredResponse{Status: http.StatusCreated, Body: []byte(secretBody + secretBody)}))

		for _, bad := range []service.Request{
			orderRequest(secretKey, `{"item":"other `+secretBody+`"}`),
			orderRequest(secretKey+"\x00", `{}`),
			orderRequest(secretKey+strings.Repeat("k", 300), `{}`),
		} {
			_, _, err := idempotency.Begin(s.ctx, bad)
			require.Error(t, err)
			s.note(err)
		}
		_, err = service.CanonicalJSON([]byte(`{"` + secretMemberName + `":"` + secretBody + `","` + secretMemberName + `":1}`))
		require.ErrorIs(t, err, service.ErrInvalidInput)
		s.note(err)
		_, err = service.CanonicalJSON([]byte(`{"item":"` + secretBody))
		require.ErrorIs(t, err, service.ErrInvalidInput)
		s.note(err)

		down, err := service.NewIdempotency(unreachable, service.IdempotencyConfig{Logger: s.logger})
		require.NoError(t, err)
		_, _, err = down.Begin(s.ctx, req)
		require.ErrorIs(t, err, service.ErrUnavailable)
		s.note(err)
		_, _, err = down.Do(s.ctx, req, func(context.Context, pgx.Tx) (service.StoredResponse, error) {
			return service.StoredResponse{}, errors.New("fn ran without a database")
		})
		require.ErrorIs(t, err, service.ErrUnavailable)
		s.note(err)
	})

	t.Run("Middleware", func(t *testing.T) {
		serve := func(p *pgxpool.Pool) *httptest.Server {
			idempotency, err := service.NewIdempotency(p, service.IdempotencyConfig{Logger: s.logger, MaxResponseBytes: 64})
			require.NoError(t, err)
			middleware, err := idempotencyhttp.New(idempotencyhttp.Config{Idempotency: idempotency, Scope: organizationScope, Logger: s.logger})
			require.NoError(t, err)
			mux := http.NewServeMux()
			for pattern, handler := range map[string]http.HandlerFunc{
				"POST /orders": func(w http.ResponseWriter, r *http.Request) {
					body, _ := io.ReadAll(r.Body)
					w.WriteHeader(http.StatusCreated)
					_, _ = w.Write(body)
				},
				"POST /panics": func(http.ResponseWriter, *http.Request) { panic("handler failed") },
				"POST /streams": func(w http.ResponseWriter, r *http.Request) {
					_ = http.NewResponseController(w).Flush()
				},
				"POST /large": func(w http.ResponseWriter, r *http.Request) {
					_, _ = w.Write([]byte(strings.Repeat(secretBody, 10)))
				},
			} {
				route, err := middleware.Route(idempotencyhttp.JSONBody())
				require.NoError(t, err)
				mux.Handle(pattern, route(handler))
			}
			server := httptest.NewUnstartedServer(mux)
			server.Config.ErrorLog = log.New(io.Discard, "", 0)
			server.Start()
			t.Cleanup(server.Close)
			return server
		}
		send := func(server *httptest.Server, path, key, body string) {
			req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, server.URL+path, strings.NewReader(body))
			require.NoError(t, err)
			req.Header.Set("Idempotency-Key", key)
			req.Header.Set("X-Organization-ID", "org-1")
			res, err := server.Client().Do(req)
			if err != nil {
				// A panicking handler closes the connection.
				return
			}
			defer res.Body.Close()
			problem, _ := io.ReadAll(res.Body)
			if res.StatusCode >= 400 {
				s.note(nil, string(problem))
			}
		}

		server := serve(pool)
		body := `{"item":"` + secretBody + `"}`
		key := "http-" + secretKey
		send(server, "/orders", key, body)
		send(server, "/orders", key, body)
		send(server, "/orders", key, `{"item":"other `+secretBody+`"}`)
		send(server, "/orders", secretKey+", "+secretKey, body)
		send(server, "/orders", `"`+secretKey+`"x`, body)
		send(server, "/orders", "other-"+secretKey, `{"`+secretMemberName+`":1,"`+secretMemberName+`":2}`)
		send(server, "/orders", "short-"+secretKey, `{"item":"`+secretBody)
		send(server, "/panics", "panic-"+secretKey, body)
		send(server, "/streams", "stream-"+secretKey, body)
		send(server, "/large", "large-"+secretKey, body)

		// Killed connections and an unreachable server are logged with
		// the driver's errors.
		_, err := db.Pool.Exec(s.ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, secretsApplication)
		require.NoError(t, err)
		for i := range 3 {
			send(server, "/orders", fmt.Sprintf("after-kill-%d-%s", i, secretKey), body)
		}
		send(serve(unreachable), "/orders", secretKey, body)
	})

	t.Run("Migrate", func(t *testing.T) {
		for _, databaseURL := range []string{
			unreachableSecretURL,
			"postgres://postgres:" + secretConnPassword + "@127.0.0.1:bad port/pgguard",
			"postgres://postgres:" + secretConnPassword + "@127.0.0.1/pgguard\x7f",
			"mysql://postgres:" + secretConnPassword + "@127.0.0.1/pgguard",
		} {
			err := pgguard.Migrate(s.ctx, databaseURL, pgguard.MigrateOptions{Log: s.logs})
			require.Error(t, err)
			s.note(err)
		}
	})

	s.requireNoSecrets(t, secretKey, secretBody, secretConnPassword, secretMemberName)
}
