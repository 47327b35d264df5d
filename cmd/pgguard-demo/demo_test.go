package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// newTestLogger logs warnings and errors into the test's output.
func newTestLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newTestDatabase returns a new database with pgguard's and the demo's
// migrations. pgtest fails the test when it finds no Postgres server.
func newTestDatabase(t *testing.T) *pgtest.DB {
	db := pgtest.New(t)
	require.NoError(t, migrateDatabase(t.Context(), db.URL, newTestLogger(t)))
	return db
}

// newTestClient starts the API with config on a loopback port of a new
// database and returns a client for it.
func newTestClient(t *testing.T, config serverConfig) (*scenario, *pgtest.DB) {
	db := newTestDatabase(t)
	handler, err := newServer(db.Pool, config, newTestLogger(t))
	require.NoError(t, err)
	server := httptest.NewServer(handler)
	t.Cleanup(server.Close)
	return &scenario{out: io.Discard, baseURL: server.URL, client: server.Client(), orders: handler.orders}, db
}

// fastConfig is the scenario's policy with the cheapest bcrypt cost, for
// tests that do not measure time.
func fastConfig() serverConfig {
	config := scenarioConfig()
	config.BcryptCost = bcrypt.MinCost
	config.OrderDelay = 0
	return config
}

func TestScenarioPasses(t *testing.T) {
	db := newTestDatabase(t)

	var transcript bytes.Buffer
	err := playScenario(t.Context(), &transcript, db.Pool, newTestLogger(t))

	require.NoError(t, err, "transcript:\n%s", transcript.String())
	require.Contains(t, transcript.String(), "All 11 steps passed.")
}

func TestLoginUnknownEmailAnswersIdentical(t *testing.T) {
	config := fastConfig()
	// A lock much longer than the test, so Retry-After is the same whole
	// number of seconds for both emails even on a slow machine.
	config.Password.LockDuration = time.Minute
	config.Password.MaxLockDuration = time.Hour
	client, _ := newTestClient(t, config)
	attempts := config.Password.MaxFailures + 1

	// Each email's attempts run back to back, so each 429 comes right
	// after its own lock was engaged.
	sendAttempts := func(email string) []exchange {
		var responses []exchange
		for i := range attempts {
			ex, err := client.send(t.Context(), loginRequestFor(email, fmt.Sprintf("wrong password %d", i+1)))
			require.NoError(t, err)
			responses = append(responses, ex)
		}
		return responses
	}
	existing := sendAttempts(demoEmail)
	unknown := sendAttempts(unknownEmail)

	for i := range attempts {
		wantStatus := http.StatusUnauthorized
		if i == attempts-1 {
			wantStatus = http.StatusTooManyRequests
		}
		require.Equal(t, wantStatus, existing[i].status, "attempt %d for the existing email", i+1)
		require.Equal(t, existing[i].status, unknown[i].status, "status of attempt %d", i+1)
		require.Equal(t, string(existing[i].body), string(unknown[i].body), "body of attempt %d", i+1)
		require.Equal(t, existing[i].header.Get("Retry-After"), unknown[i].header.Get("Retry-After"), "Retry-After of attempt %d", i+1)
		require.Equal(t, existing[i].header.Get("Content-Type"), unknown[i].header.Get("Content-Type"), "Content-Type of attempt %d", i+1)
	}
	require.Equal(t, "60", unknown[attempts-1].header.Get("Retry-After"))
}

func TestLoginCorrectPasswordSucceeds(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())

	// The email is matched after the same normalization as the lockout key.
	ex, err := client.send(t.Context(), loginRequestFor(" Demo@Example.COM ", demoPassword))

	require.NoError(t, err)
	require.Equal(t, http.StatusOK, ex.status, describeResponse(ex))
	require.Equal(t, "{\"status\":\"ok\"}\n", string(ex.body))
	require.Equal(t, "no-store", ex.header.Get("Cache-Control"))
}

func TestLoginRejectsInvalidRequests(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())
	bodies := map[string]string{
		"not JSON":          `{"email":`,
		"missing password":  `{"email":"demo@example.com"}`,
		"unknown member":    `{"email":"demo@example.com","password":"x","remember":true}`,
		"trailing data":     `{"email":"demo@example.com","password":"x"} {}`,
		"email without @":   `{"email":"demo","password":"x"}`,
		"control character": `{"email":"demo\u0000@example.com","password":"x"}`,
		"empty password":    `{"email":"demo@example.com","password":""}`,
	}

	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			ex, err := client.send(t.Context(), request{method: http.MethodPost, path: "/login", body: body})
			require.NoError(t, err)
			require.NoError(t, expectProblem(ex, http.StatusBadRequest, problemInvalidRequest))
		})
	}
}

func TestLoginLongPasswordNeverMatchesPrefix(t *testing.T) {
	config := fastConfig()
	longPassword := strings.Repeat("p", maxPasswordBytes)
	config.Accounts = []credential{{Email: "long@example.com", Password: longPassword}}
	client, _ := newTestClient(t, config)

	// bcrypt ignores bytes after the 72nd, so this would match without the
	// length check.
	ex, err := client.send(t.Context(), loginRequestFor("long@example.com", longPassword+"extra"))
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, ex.status, describeResponse(ex))

	ex, err = client.send(t.Context(), loginRequestFor("long@example.com", longPassword))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, ex.status, describeResponse(ex))
}

func TestUnroutedRequestsGetProblems(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())

	ex, err := client.send(t.Context(), request{method: http.MethodGet, path: "/login"})
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusMethodNotAllowed, problemMethodNotAllowed))
	require.Equal(t, "POST", ex.header.Get("Allow"))

	ex, err = client.send(t.Context(), request{method: http.MethodGet, path: "/nowhere"})
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusNotFound, problemNotFound))
}

func TestCreateOrderRejectsLargeBody(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())
	body := `{"item":"` + strings.Repeat("x", maxBodyBytes) + `","quantity":1}`

	ex, err := client.send(t.Context(), request{
		method: http.MethodPost,
		path:   "/orders",
		header: map[string]string{"Idempotency-Key": "large", "X-Organization-ID": "acme"},
		body:   body,
	})

	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusRequestEntityTooLarge, problemRequestTooLarge))
}

func TestCreateOrderRequiresOrganization(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())

	ex, err := client.send(t.Context(), request{
		method: http.MethodPost,
		path:   "/orders",
		header: map[string]string{"Idempotency-Key": "k1"},
		body:   `{"item":"widget","quantity":1}`,
	})

	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusBadRequest, problemInvalidRequest))
}

func TestCreateOrderRejectsInvalidBodies(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())
	client.organizationID = "acme"
	bodies := map[string]string{
		"empty item":        `{"item":"","quantity":1}`,
		"missing quantity":  `{"item":"widget"}`,
		"zero quantity":     `{"item":"widget","quantity":0}`,
		"fraction":          `{"item":"widget","quantity":1.5}`,
		"quantity as text":  `{"item":"widget","quantity":"1"}`,
		"quantity too big":  `{"item":"widget","quantity":2147483648}`,
		"item too long":     `{"item":"` + strings.Repeat("x", maxItemLength+1) + `","quantity":1}`,
		"not an object":     `[]`,
		"unknown member":    `{"item":"widget","quantity":1,"price":3}`,
		"empty body":        ``,
		"trailing brackets": `{"item":"widget","quantity":1}]`,
	}

	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			ex, err := client.send(t.Context(), client.orderRequest("key-"+name, body))
			require.NoError(t, err)
			require.NoError(t, expectProblem(ex, http.StatusBadRequest, problemInvalidRequest))
		})
	}

	count, err := client.orders.countByOrganization(t.Context(), "acme")
	require.NoError(t, err)
	require.Zero(t, count)
}

func TestCreateOrderOrganizationsDoNotShareKeys(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())

	client.organizationID = "acme"
	first, err := client.send(t.Context(), client.orderRequest("shared-key", `{"item":"widget","quantity":1}`))
	require.NoError(t, err)
	created, err := expectCreatedOrder(first, "acme", "widget", 1)
	require.NoError(t, err)

	client.organizationID = "globex"
	second, err := client.send(t.Context(), client.orderRequest("shared-key", `{"item":"widget","quantity":1}`))
	require.NoError(t, err)
	_, err = expectCreatedOrder(second, "globex", "widget", 1)
	require.NoError(t, err)
	require.Empty(t, second.header.Get("Idempotent-Replayed"))

	// globex cannot read acme's order.
	ex, err := client.send(t.Context(), request{
		method: http.MethodGet,
		path:   fmt.Sprintf("/orders/%d", created.ID),
		header: map[string]string{"X-Organization-ID": "globex"},
	})
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusNotFound, problemOrderNotFound))
}

func TestCreateOrderLeaseExpiredOutcomeUnknown(t *testing.T) {
	config := fastConfig()
	config.Idempotency.LeaseDuration = time.Second
	config.OrderDelay = 3 * time.Second
	client, db := newTestClient(t, config)
	client.organizationID = "acme"
	req := client.orderRequest("slow", `{"item":"widget","quantity":1}`)

	type result struct {
		ex  exchange
		err error
	}
	firstDone := make(chan result, 1)
	go func() {
		ex, err := client.send(context.WithoutCancel(t.Context()), req)
		firstDone <- result{ex, err}
	}()

	// After the lease ends and before the first request completes, the
	// key is neither in flight nor completed. The poll waits for the
	// database clock, which decides when the lease ends.
	require.Eventually(t, func() bool {
		var expired bool
		err := db.Pool.QueryRow(t.Context(),
			`SELECT lease_expires_at <= now() FROM idempotency_records WHERE key = 'slow'`,
		).Scan(&expired)
		return err == nil && expired
	}, 5*time.Second, 10*time.Millisecond, "the first request never claimed its key, or its lease never ended")
	ex, err := client.send(t.Context(), req)
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusConflict, problemOutcomeUnknown))
	require.Empty(t, ex.header.Get("Retry-After"))

	first := <-firstDone
	require.NoError(t, first.err)
	_, err = expectCreatedOrder(first.ex, "acme", "widget", 1)
	require.NoError(t, err)

	// No request took the key over, so the late response was stored after all.
	ex, err = client.send(t.Context(), req)
	require.NoError(t, err)
	require.NoError(t, expectReplayOf(ex, first.ex))
}

func TestParseCredential(t *testing.T) {
	c, err := parseCredential("alice@example.com:pass:with:colons")
	require.NoError(t, err)
	require.Equal(t, credential{Email: "alice@example.com", Password: "pass:with:colons"}, c)

	invalid := map[string]string{
		"no colon":       "alice@example.com",
		"no @":           "alice:secret",
		"empty password": "alice@example.com:",
		"long password":  "alice@example.com:" + strings.Repeat("p", maxPasswordBytes+1),
	}
	for name, value := range invalid {
		t.Run(name, func(t *testing.T) {
			_, err := parseCredential(value)
			require.Error(t, err)
		})
	}
}

func TestParseOptionsAccounts(t *testing.T) {
	getenv := func(name string) string {
		if name == accountsEnvVar {
			return " bob@example.com:hunter2 , ,carol@example.com:pw"
		}
		return ""
	}

	opts, err := parseOptions([]string{"-account", "dave@example.com:x", "-max-failures", "3", "-lock-duration", "2s"}, getenv, io.Discard)

	require.NoError(t, err)
	require.Equal(t, []credential{
		{Email: demoEmail, Password: demoPassword},
		{Email: "bob@example.com", Password: "hunter2"},
		{Email: "carol@example.com", Password: "pw"},
		{Email: "dave@example.com", Password: "x"},
	}, opts.server.Accounts)
	require.Equal(t, 3, opts.server.Password.MaxFailures)
	require.Equal(t, 2*time.Second, opts.server.Password.LockDuration)
}

func TestParseOptionsErrorHidesPassword(t *testing.T) {
	var output bytes.Buffer

	_, err := parseOptions([]string{"-account", "no-at-sign-secret-password"}, func(string) string { return "" }, &output)

	require.Error(t, err)
	require.NotContains(t, err.Error(), "secret-password")
	require.NotContains(t, output.String(), "secret-password")
}

func TestParseOptionsRejectsZeroDurations(t *testing.T) {
	_, err := parseOptions([]string{"-lock-duration", "0"}, func(string) string { return "" }, io.Discard)

	require.ErrorContains(t, err, "-lock-duration")
}

func TestNewServerRejectsInvalidPolicy(t *testing.T) {
	db := newTestDatabase(t)
	config := fastConfig()
	config.Password.MaxLockDuration = time.Second
	config.Password.LockDuration = time.Minute

	_, err := newServer(db.Pool, config, newTestLogger(t))

	require.ErrorIs(t, err, service.ErrInvalidConfig)
}

func TestProblemBodyIsRFC9457(t *testing.T) {
	recorder := httptest.NewRecorder()

	writeInvalidRequest(recorder, "The X header is missing.")

	require.Equal(t, http.StatusBadRequest, recorder.Code)
	require.Equal(t, problemContentType, recorder.Header().Get("Content-Type"))
	require.Equal(t, "no-store", recorder.Header().Get("Cache-Control"))
	var members map[string]any
	require.NoError(t, json.Unmarshal(recorder.Body.Bytes(), &members))
	require.Equal(t, map[string]any{
		"type":   problemInvalidRequest,
		"title":  "Invalid request",
		"status": float64(http.StatusBadRequest),
		"detail": "The X header is missing.",
	}, members)
}

func TestCreateOrderRejectsMalformedKey(t *testing.T) {
	client, _ := newTestClient(t, fastConfig())
	client.organizationID = "acme"

	ex, err := client.send(t.Context(), client.orderRequest("first, second", `{"item":"widget","quantity":1}`))

	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusBadRequest, problemKeyInvalid))
	count, err := client.orders.countByOrganization(t.Context(), "acme")
	require.NoError(t, err)
	require.Zero(t, count)
}
