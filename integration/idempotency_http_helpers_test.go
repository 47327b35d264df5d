package integration

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// httpBundle is an idempotent API on a loopback httptest.Server with its
// own database. Routes are added with handle before the first request.
type httpBundle struct {
	ctx         context.Context
	pool        *pgxpool.Pool
	clock       *testClock
	idempotency *service.Idempotency
	middleware  *idempotencyhttp.Middleware
	mux         *http.ServeMux
	server      *httptest.Server
}

func setupHTTP(t *testing.T, config service.IdempotencyConfig) *httpBundle {
	t.Helper()

	db := pgtest.New(t)
	clock := newTestClock()
	config.Now = clock.Now
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	config.Logger = logger
	idempotency, err := service.NewIdempotency(db.Pool, config)
	require.NoError(t, err)
	middleware, err := idempotencyhttp.New(idempotencyhttp.Config{
		Idempotency: idempotency,
		Scope:       organizationScope,
		Logger:      logger,
	})
	require.NoError(t, err)

	mux := http.NewServeMux()
	server := httptest.NewUnstartedServer(mux)
	// Panicking handlers are part of the tests; their stack traces are not.
	server.Config.ErrorLog = log.New(io.Discard, "", 0)
	server.Start()
	t.Cleanup(server.Close)

	return &httpBundle{
		ctx:         t.Context(),
		pool:        db.Pool,
		clock:       clock,
		idempotency: idempotency,
		middleware:  middleware,
		mux:         mux,
		server:      server,
	}
}

// organizationScope scopes a request by its X-Organization-ID header.
// Requests without one are anonymous, scoped by their peer address.
func organizationScope(r *http.Request) (idempotencyhttp.Scope, error) {
	return idempotencyhttp.Scope{OrganizationID: r.Header.Get("X-Organization-ID")}, nil
}

// handle registers handler for pattern behind the middleware.
func (b *httpBundle) handle(t *testing.T, pattern string, handler http.HandlerFunc, options ...idempotencyhttp.RouteOption) {
	t.Helper()

	route, err := b.middleware.Route(options...)
	require.NoError(t, err)
	b.mux.Handle(pattern, route(handler))
}

// request is one request to the bundle's server.
type request struct {
	method string
	path   string
	body   string
	// key is sent as the Idempotency-Key header unless it is empty.
	key string
	// organization is sent as X-Organization-ID unless it is empty.
	organization string
	// header holds more headers, added after key and organization.
	header http.Header
}

// post returns a POST request of org-1 with key and body.
func post(path, key, body string) request {
	return request{method: http.MethodPost, path: path, body: body, key: key, organization: "org-1"}
}

// response is one HTTP response, fully read.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

func (r response) String() string {
	body := string(r.body)
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return fmt.Sprintf("%d %s %s", r.status, r.header, body)
}

// send sends req and reads the whole response. It is safe to call from
// several goroutines.
func (b *httpBundle) send(ctx context.Context, req request) (response, error) {
	httpRequest, err := http.NewRequestWithContext(ctx, req.method, b.server.URL+req.path, strings.NewReader(req.body))
	if err != nil {
		return response{}, err
	}
	if req.key != "" {
		httpRequest.Header.Set("Idempotency-Key", req.key)
	}
	if req.organization != "" {
		httpRequest.Header.Set("X-Organization-ID", req.organization)
	}
	for name, values := range req.header {
		for _, value := range values {
			httpRequest.Header.Add(name, value)
		}
	}

	httpResponse, err := b.server.Client().Do(httpRequest)
	if err != nil {
		return response{}, err
	}
	defer httpResponse.Body.Close()
	body, err := io.ReadAll(httpResponse.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: httpResponse.StatusCode, header: httpResponse.Header, body: body}, nil
}

// do sends req from the test goroutine and fails the test on a transport
// error.
func (b *httpBundle) do(t *testing.T, req request) response {
	t.Helper()

	res, err := b.send(b.ctx, req)
	require.NoError(t, err)
	return res
}

// requireProblem checks that res is an RFC 9457 problem of the default
// type base with name and status, sent with Cache-Control: no-store.
func requireProblem(t *testing.T, res response, status int, name string) {
	t.Helper()

	require.Equal(t, status, res.status, "response: %s", res)
	require.Equal(t, "application/problem+json", res.header.Get("Content-Type"))
	require.Equal(t, "no-store", res.header.Get("Cache-Control"))
	require.Contains(t, string(res.body), `"type":"`+idempotencyhttp.DefaultProblemTypeBase+name+`"`)
	require.Contains(t, string(res.body), `"status":`+strconv.Itoa(status))
}

// requireRetryAfter checks that res has a Retry-After of whole seconds
// from 1 to max, and returns it.
func requireRetryAfter(t *testing.T, res response, max time.Duration) time.Duration {
	t.Helper()

	seconds, err := strconv.Atoi(res.header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", res.header.Get("Retry-After"))
	wait := time.Duration(seconds) * time.Second
	require.GreaterOrEqual(t, wait, time.Second)
	require.LessOrEqual(t, wait, max)
	return wait
}

// rowCount returns the number of idempotency records.
func (b *httpBundle) rowCount(t *testing.T) int {
	t.Helper()

	var count int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM idempotency_records").Scan(&count))
	return count
}

// record is the part of an idempotency record that tests inspect.
type record struct {
	state       string
	route       string
	requestHash string
	status      *int32
	body        []byte
}

// record returns the only record with key.
func (b *httpBundle) record(t *testing.T, key string) record {
	t.Helper()

	var r record
	var bodyText *string
	err := b.pool.QueryRow(b.ctx, `
		SELECT state, route, request_hash, response_status, response_body_json, response_body
		FROM idempotency_records WHERE key = $1`, key,
	).Scan(&r.state, &r.route, &r.requestHash, &r.status, &bodyText, &r.body)
	require.NoError(t, err)
	if bodyText != nil {
		r.body = []byte(*bodyText)
	}
	return r
}

// createdHandler answers 201 with a JSON body naming the call number and
// the request's path and organization, and counts its calls.
func createdHandler(calls *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		call := calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", fmt.Sprintf("/things/%d", call))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"call":%d,"path":%q,"organization":%q}`, call, r.URL.Path, r.Header.Get("X-Organization-ID"))
	}
}
