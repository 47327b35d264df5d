package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
)

// problemIdempotencyUnavailable is the middleware's 503 under this API's
// type base.
const problemIdempotencyUnavailable = problemTypeBase + idempotencyhttp.ProblemUnavailable

func TestDatabaseUnavailableAnswers503(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1 of the loopback address, so every
	// connection fails at once.
	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/pgguard?connect_timeout=2&sslmode=disable")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	handler, err := newServer(pool, fastConfig(), newTestLogger(t))
	require.NoError(t, err)
	server := httptest.NewServer(handler)
	t.Cleanup(server.Close)
	client := &scenario{baseURL: server.URL, client: server.Client(), organizationID: "acme"}

	ex, err := client.send(t.Context(), loginRequestFor(demoEmail, demoPassword))
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusServiceUnavailable, problemLoginUnavailable))
	require.Equal(t, "5", ex.header.Get("Retry-After"))

	ex, err = client.send(t.Context(), client.orderRequest("order-1", `{"item":"widget","quantity":1}`))
	require.NoError(t, err)
	require.NoError(t, expectProblem(ex, http.StatusServiceUnavailable, problemIdempotencyUnavailable))
	require.Equal(t, "5", ex.header.Get("Retry-After"))
}
