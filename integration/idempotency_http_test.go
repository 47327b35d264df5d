package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

// sendParallel sends n copies of req at once and returns every response.
// Goroutines only collect results; the caller asserts.
func (b *httpBundle) sendParallel(n int, req request) ([]response, error) {
	responses := make([]response, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			responses[i], errs[i] = b.send(b.ctx, req)
		})
	}
	close(start)
	wg.Wait()
	return responses, errors.Join(errs...)
}

func TestIdempotencyHTTPConcurrentDuplicates(t *testing.T) {
	t.Parallel()

	t.Run("LeaseModeAnswersInFlight", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond) // the handler's own work
			calls.Add(1)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, `{"id":1}`)
		})
		req := post("/orders", "dup-lease", `{"item":"book"}`)

		responses, err := b.sendParallel(50, req)
		require.NoError(t, err)

		var fresh, replayed, inFlight int
		for _, res := range responses {
			switch {
			case res.status == http.StatusCreated && !res.replayed():
				fresh++
			case res.status == http.StatusCreated:
				replayed++
				require.Equal(t, `{"id":1}`, string(res.body))
			default:
				requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
				requireRetryAfter(t, res, time.Minute)
				inFlight++
			}
		}
		require.Equal(t, 1, fresh)
		require.Equal(t, 49, replayed+inFlight)
		require.Equal(t, int64(1), calls.Load())

		later := b.do(t, req)
		require.Equal(t, http.StatusCreated, later.status)
		require.True(t, later.replayed())
		require.Equal(t, int64(1), calls.Load())
	})

	t.Run("AtomicModeReplays", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		_, err := b.pool.Exec(b.ctx, `CREATE TABLE test_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL)`)
		require.NoError(t, err)
		var calls atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			tx, ok := idempotencyhttp.Tx(r.Context())
			if !ok {
				http.Error(w, "no transaction", http.StatusInternalServerError)
				return
			}
			var id int64
			if err := tx.QueryRow(r.Context(), `INSERT INTO test_orders (item) VALUES ('book') RETURNING id`).Scan(&id); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			time.Sleep(300 * time.Millisecond) // the handler's own work
			calls.Add(1)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"id":%d}`, id)
		}, idempotencyhttp.Atomic())
		req := post("/orders", "dup-atomic", `{"item":"book"}`)

		responses, err := b.sendParallel(50, req)
		require.NoError(t, err)

		var fresh []response
		for _, res := range responses {
			require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
			if !res.replayed() {
				fresh = append(fresh, res)
			}
		}
		require.Len(t, fresh, 1)
		for _, res := range responses {
			require.Equal(t, fresh[0].body, res.body)
		}
		require.Equal(t, int64(1), calls.Load())
		var orders int
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM test_orders`).Scan(&orders))
		require.Equal(t, 1, orders)

		later := b.do(t, req)
		require.True(t, later.replayed())
		require.Equal(t, fresh[0].body, later.body)
	})
}

// The claim of a request that loses the insert race re-reads the record,
// which the winner may complete or delete in between. Every request must
// end in a run, a replay or a 409, never in a 5xx.
func TestIdempotencyHTTPRaceLoserNeverFails(t *testing.T) {
	t.Parallel()

	t.Run("WinnerReleases", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		// Every run fails validation, which releases the key at once, so
		// the record is inserted and deleted over and over while others
		// conflict.
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "quantity must be positive", http.StatusBadRequest)
		})

		for range 10 {
			responses, err := b.sendParallel(20, post("/orders", "race", `{"quantity":0}`))
			require.NoError(t, err)
			for _, res := range responses {
				if res.status == http.StatusConflict {
					requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
					continue
				}
				require.Equal(t, http.StatusBadRequest, res.status, "response: %s", res)
			}
		}
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("WinnerCompletes", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))

		for round := range 10 {
			key := fmt.Sprintf("race-%d", round)
			responses, err := b.sendParallel(20, post("/orders", key, `{}`))
			require.NoError(t, err)

			fresh := 0
			for _, res := range responses {
				switch {
				case res.status == http.StatusConflict:
					requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
				case res.replayed():
					require.Equal(t, http.StatusCreated, res.status)
				default:
					require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
					fresh++
				}
			}
			require.Equal(t, 1, fresh, "round %d", round)
		}
		require.Equal(t, int64(10), calls.Load())
	})
}

func TestIdempotencyHTTPExpiredLease(t *testing.T) {
	t.Parallel()

	// crash claims the key the way the middleware does for post(route,
	// key, body) and never settles it, as a process that died would.
	crash := func(t *testing.T, b *httpBundle, route, key, body string) {
		t.Helper()
		claim, _, err := b.idempotency.Begin(b.ctx, service.Request{
			Key:            key,
			Method:         http.MethodPost,
			Route:          route,
			Body:           []byte(body),
			OrganizationID: "org-1",
		})
		require.NoError(t, err)
		require.NotNil(t, claim)
	}

	t.Run("InFlightBeforeExpiry", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))
		crash(t, b, "/orders", "k", `{}`)
		b.clock.Advance(45*time.Second + 500*time.Millisecond)

		res := b.do(t, post("/orders", "k", `{}`))

		requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
		// 14.5 s of the lease are left; Retry-After never exceeds them.
		require.Equal(t, "14", res.header.Get("Retry-After"))
		require.Zero(t, calls.Load())
	})

	t.Run("OutcomeUnknownWithoutRerun", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))
		crash(t, b, "/orders", "k", `{}`)
		b.clock.Advance(61 * time.Second)

		res := b.do(t, post("/orders", "k", `{}`))

		requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemOutcomeUnknown)
		require.Empty(t, res.header.Get("Retry-After"))
		require.Zero(t, calls.Load())
	})

	t.Run("TakeoverWithRerun", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls), idempotencyhttp.AllowRerun())
		crash(t, b, "/orders", "k", `{}`)
		b.clock.Advance(61 * time.Second)

		res := b.do(t, post("/orders", "k", `{}`))
		require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
		require.False(t, res.replayed())

		retry := b.do(t, post("/orders", "k", `{}`))
		require.True(t, retry.replayed())
		require.Equal(t, res.body, retry.body)
		require.Equal(t, int64(1), calls.Load())
	})

	t.Run("LeaseIsPerRoute", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls), idempotencyhttp.Lease(5*time.Second))
		started := make(chan struct{})
		release := make(chan struct{})
		b.handle(t, "POST /slow", func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-release
			w.WriteHeader(http.StatusNoContent)
		}, idempotencyhttp.Lease(5*time.Second))

		first := make(chan error, 1)
		go func() {
			_, err := b.send(b.ctx, post("/slow", "k", `{}`))
			first <- err
		}()
		<-started
		res := b.do(t, post("/slow", "k", `{}`))
		close(release)

		requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
		require.Equal(t, "5", res.header.Get("Retry-After"))
		require.NoError(t, <-first)
	})
}

// Attempt A's lease expires, B takes the key over and completes, then A
// completes: A changes nothing, and B's result is the one replayed.
func TestIdempotencyHTTPLateCompletionAfterTakeover(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	aStarted := make(chan struct{})
	aRelease := make(chan struct{})
	b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
		call := calls.Add(1)
		if call == 1 {
			close(aStarted)
			<-aRelease
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"attempt":%d}`, call)
	}, idempotencyhttp.AllowRerun())
	req := post("/orders", "takeover", `{}`)

	type result struct {
		res response
		err error
	}
	aDone := make(chan result, 1)
	go func() {
		res, err := b.send(b.ctx, req)
		aDone <- result{res, err}
	}()
	<-aStarted
	b.clock.Advance(61 * time.Second)

	bRes := b.do(t, req)
	require.Equal(t, http.StatusCreated, bRes.status, "response: %s", bRes)
	require.Equal(t, `{"attempt":2}`, string(bRes.body))

	close(aRelease)
	a := <-aDone
	require.NoError(t, a.err)
	// A's own client still gets A's response.
	require.Equal(t, `{"attempt":1}`, string(a.res.body))

	replay := b.do(t, req)
	require.True(t, replay.replayed())
	require.Equal(t, `{"attempt":2}`, string(replay.body))
	require.Equal(t, `{"attempt":2}`, string(b.record(t, "takeover").body))
	require.Equal(t, int64(2), calls.Load())
}

func TestIdempotencyHTTPKeyReusedWithOtherBody(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	b.handle(t, "POST /orders", createdHandler(&calls))

	first := b.do(t, post("/orders", "reused", `{"amount":100}`))
	require.Equal(t, http.StatusCreated, first.status)
	before := b.record(t, "reused")

	res := b.do(t, post("/orders", "reused", `{"amount":999}`))

	requireProblem(t, res, http.StatusUnprocessableEntity, idempotencyhttp.ProblemKeyReused)
	require.Equal(t, int64(1), calls.Load())
	require.Equal(t, before, b.record(t, "reused"))
}

func TestIdempotencyHTTPRoutesAndPathValuesAreIndependent(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	handler := createdHandler(&calls)
	b.handle(t, "POST /orders", handler)
	b.handle(t, "POST /refunds", handler)
	b.handle(t, "PUT /tickets/{id}", handler)
	requests := []request{
		post("/orders", "same", `{}`),
		post("/refunds", "same", `{}`),
		{method: http.MethodPut, path: "/tickets/1", body: `{}`, key: "same", organization: "org-1"},
		{method: http.MethodPut, path: "/tickets/2", body: `{}`, key: "same", organization: "org-1"},
	}

	var first []response
	for _, req := range requests {
		res := b.do(t, req)
		require.Equal(t, http.StatusCreated, res.status, "%s %s: %s", req.method, req.path, res)
		require.False(t, res.replayed(), "%s %s", req.method, req.path)
		first = append(first, res)
	}
	require.Equal(t, int64(len(requests)), calls.Load())
	require.Equal(t, len(requests), b.rowCount(t))

	for i, req := range requests {
		res := b.do(t, req)
		require.True(t, res.replayed(), "%s %s", req.method, req.path)
		require.Equal(t, first[i].body, res.body, "%s %s", req.method, req.path)
	}

	var routes []string
	rows, err := b.pool.Query(b.ctx, `SELECT route FROM idempotency_records ORDER BY route`)
	require.NoError(t, err)
	for rows.Next() {
		var route string
		require.NoError(t, rows.Scan(&route))
		routes = append(routes, route)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"POST /orders", "POST /refunds", "PUT /tickets/{id} id=1", "PUT /tickets/{id} id=2"}, routes)
}

func TestIdempotencyHTTPScopesAreIndependent(t *testing.T) {
	t.Parallel()

	t.Run("Organizations", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))
		acme := post("/orders", "shared", `{"item":"book"}`)
		acme.organization = "acme"
		globex := acme
		globex.organization = "globex"

		acmeFirst := b.do(t, acme)
		globexFirst := b.do(t, globex)

		require.False(t, acmeFirst.replayed())
		require.False(t, globexFirst.replayed())
		require.Equal(t, int64(2), calls.Load())
		require.Contains(t, string(b.do(t, acme).body), `"organization":"acme"`)
		require.Contains(t, string(b.do(t, globex).body), `"organization":"globex"`)
	})

	t.Run("AnonymousClientsByAddress", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))

		// Both clients would share 127.0.0.1 over loopback, so the mux
		// serves them directly with their own peer addresses.
		serve := func(remoteAddr string) *httptest.ResponseRecorder {
			r := httptest.NewRequestWithContext(b.ctx, http.MethodPost, "/orders", strings.NewReader(`{}`))
			r.RemoteAddr = remoteAddr
			r.Header.Set("Idempotency-Key", "anonymous")
			w := httptest.NewRecorder()
			b.mux.ServeHTTP(w, r)
			return w
		}

		first := serve("192.0.2.1:1234")
		second := serve("[2001:db8::1]:1234")
		again := serve("192.0.2.1:4321")

		require.Equal(t, http.StatusCreated, first.Code)
		require.Equal(t, http.StatusCreated, second.Code)
		require.Empty(t, second.Header().Get("Idempotent-Replayed"))
		require.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		require.Equal(t, first.Body.String(), again.Body.String())
		require.Equal(t, int64(2), calls.Load())
	})
}

func TestIdempotencyHTTPJSONBody(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	var mu sync.Mutex
	var received []string
	b.handle(t, "POST /payments", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		received = append(received, string(body))
		mu.Unlock()
		calls.Add(1)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"call":%d}`, calls.Load())
	}, idempotencyhttp.JSONBody())

	t.Run("OrderAndWhitespaceReplay", func(t *testing.T) {
		first := b.do(t, post("/payments", "json-1", `{"item":"book","amount":100}`))
		second := b.do(t, post("/payments", "json-1", " {\n  \"amount\" : 100,\t\"item\":\"book\" } "))

		require.Equal(t, http.StatusCreated, first.status)
		require.True(t, second.replayed())
		require.Equal(t, first.body, second.body)
		// The handler read the canonical bytes, the ones fingerprinted.
		require.Equal(t, []string{`{"amount":100,"item":"book"}`}, received)
	})

	t.Run("LargeNumbersDiffer", func(t *testing.T) {
		first := b.do(t, post("/payments", "json-2", `{"amount":12345678901234567890}`))
		second := b.do(t, post("/payments", "json-2", `{"amount":12345678901234567000}`))

		require.Equal(t, http.StatusCreated, first.status)
		requireProblem(t, second, http.StatusUnprocessableEntity, idempotencyhttp.ProblemKeyReused)
	})

	t.Run("DuplicateMembersRejected", func(t *testing.T) {
		before := calls.Load()

		res := b.do(t, post("/payments", "json-3", `{"amount":1,"amount":2}`))

		requireProblem(t, res, http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest)
		require.Equal(t, before, calls.Load())
		var count int
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM idempotency_records WHERE key = 'json-3'`).Scan(&count))
		require.Zero(t, count)
	})

	t.Run("InvalidJSONRejected", func(t *testing.T) {
		res := b.do(t, post("/payments", "json-4", `{"amount":`))

		requireProblem(t, res, http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest)
	})
}

func TestIdempotencyHTTPReplayHeaders(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		header := w.Header()
		header.Set("Location", "/orders/42")
		header.Set("ETag", `"v1"`)
		header.Set("Content-Type", "application/vnd.pgguard.order+json; charset=utf-8")
		header.Set("Set-Cookie", "session=secret; HttpOnly")
		header.Set("X-Request-Id", "req-1")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "{\"id\":42,\"note\":\"caf\u00e9\"}\n")
	})
	req := post("/orders", "headers", `{}`)

	first := b.do(t, req)
	replay := b.do(t, req)

	require.Equal(t, http.StatusCreated, first.status)
	require.Equal(t, "session=secret; HttpOnly", first.header.Get("Set-Cookie"))
	require.False(t, first.replayed())

	require.Equal(t, http.StatusCreated, replay.status)
	require.True(t, replay.replayed())
	for _, name := range []string{"Location", "ETag", "Content-Type"} {
		require.Equal(t, first.header.Get(name), replay.header.Get(name), name)
	}
	require.Empty(t, replay.header.Values("Set-Cookie"))
	require.Empty(t, replay.header.Values("X-Request-Id"))
	require.Equal(t, first.body, replay.body)
	require.Equal(t, int64(1), calls.Load())
}

func TestIdempotencyHTTPSizeLimits(t *testing.T) {
	t.Parallel()

	for _, atomicMode := range []bool{false, true} {
		name := "LargeResponseLeaseMode"
		options := []idempotencyhttp.RouteOption{}
		if atomicMode {
			name = "LargeResponseAtomicMode"
			options = append(options, idempotencyhttp.Atomic())
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupHTTP(t, service.IdempotencyConfig{MaxResponseBytes: 1 << 20})
			var calls atomic.Int64
			large := bytes.Repeat([]byte("0123456789abcdef"), 5<<20/16)
			b.handle(t, "POST /exports", func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				w.Header().Set("Content-Type", "application/octet-stream")
				for chunk := range slices.Chunk(large, 64<<10) {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			}, options...)
			req := post("/exports", "large", `{}`)

			first := b.do(t, req)
			require.Equal(t, http.StatusOK, first.status)
			require.True(t, bytes.Equal(large, first.body), "the first client gets the whole body")

			retry := b.do(t, req)
			requireProblem(t, retry, http.StatusConflict, idempotencyhttp.ProblemResultUnavailable)
			require.Equal(t, int64(1), calls.Load())

			stored := b.record(t, "large")
			require.Equal(t, "result_unavailable", stored.state)
			require.Equal(t, int32(http.StatusOK), *stored.status)
			require.Empty(t, stored.body)
		})
	}

	t.Run("LargeRequestRejectedBeforeClaim", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls))

		res := b.do(t, post("/orders", "large-request", strings.Repeat("x", 2<<20)))

		requireProblem(t, res, http.StatusRequestEntityTooLarge, idempotencyhttp.ProblemRequestTooLarge)
		require.Zero(t, calls.Load())
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("RouteRequestLimit", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", createdHandler(&calls), idempotencyhttp.MaxRequestBytes(4))

		allowed := b.do(t, post("/orders", "small", `1234`))
		tooLarge := b.do(t, post("/orders", "large", `12345`))

		require.Equal(t, http.StatusCreated, allowed.status)
		requireProblem(t, tooLarge, http.StatusRequestEntityTooLarge, idempotencyhttp.ProblemRequestTooLarge)
	})
}

func TestIdempotencyHTTPStreamingRefused(t *testing.T) {
	t.Parallel()

	streamers := map[string]func(w http.ResponseWriter, r *http.Request) error{
		"ResponseControllerFlush": func(w http.ResponseWriter, r *http.Request) error {
			fmt.Fprint(w, "data: 1\n\n")
			return http.NewResponseController(w).Flush()
		},
		"Flusher": func(w http.ResponseWriter, r *http.Request) error {
			fmt.Fprint(w, "data: 1\n\n")
			w.(http.Flusher).Flush()
			_, err := fmt.Fprint(w, "data: 2\n\n")
			return err
		},
		"Hijack": func(w http.ResponseWriter, r *http.Request) error {
			_, _, err := http.NewResponseController(w).Hijack()
			return err
		},
		// A server-sent events loop that streams until its context ends.
		// The bound only stops a regression from looping forever.
		"EventLoop": func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 1000 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				if err := http.NewResponseController(w).Flush(); err != nil {
					<-r.Context().Done()
					return context.Cause(r.Context())
				}
			}
			return nil
		},
	}

	for name, stream := range streamers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupHTTP(t, service.IdempotencyConfig{})
			var calls atomic.Int64
			handlerErrs := make(chan error, 2)
			b.handle(t, "GET /events", func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				handlerErrs <- stream(w, r)
			})
			req := request{method: http.MethodGet, path: "/events", key: "stream", organization: "org-1"}

			for attempt := 1; attempt <= 2; attempt++ {
				res := b.do(t, req)

				requireProblem(t, res, http.StatusInternalServerError, idempotencyhttp.ProblemStreamingRefused)
				require.ErrorIs(t, <-handlerErrs, idempotencyhttp.ErrStreamingRefused)
				require.Equal(t, 0, b.rowCount(t), "attempt %d", attempt)
			}
			// The claim was released, so the retry ran again instead of
			// replaying an empty 200.
			require.Equal(t, int64(2), calls.Load())
		})
	}
}

func TestIdempotencyHTTPKeylessRequests(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	b.handle(t, "POST /optional", createdHandler(&calls), idempotencyhttp.KeyOptional())
	b.handle(t, "POST /required", createdHandler(&calls))

	t.Run("OptionalRoutePassesThrough", func(t *testing.T) {
		first := b.do(t, post("/optional", "", `{"item":"a"}`))
		second := b.do(t, post("/optional", "", `{"item":"b"}`))

		require.Equal(t, http.StatusCreated, first.status)
		require.Equal(t, http.StatusCreated, second.status)
		require.False(t, second.replayed())
		require.Equal(t, int64(2), calls.Load())
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("RequiredRouteRejects", func(t *testing.T) {
		res := b.do(t, post("/required", "", `{}`))

		requireProblem(t, res, http.StatusBadRequest, idempotencyhttp.ProblemKeyMissing)
		require.Equal(t, 0, b.rowCount(t))
	})
}

func TestIdempotencyHTTPFailureClassification(t *testing.T) {
	t.Parallel()

	t.Run("ValidationFailureReleasesKey", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			body, _ := io.ReadAll(r.Body)
			if string(body) == `{"quantity":0}` {
				http.Error(w, "quantity must be positive", http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusCreated)
		})

		invalid := b.do(t, post("/orders", "fix", `{"quantity":0}`))
		require.Equal(t, http.StatusBadRequest, invalid.status)
		require.Equal(t, 0, b.rowCount(t))

		corrected := b.do(t, post("/orders", "fix", `{"quantity":1}`))
		require.Equal(t, http.StatusCreated, corrected.status)
		require.False(t, corrected.replayed())
		require.Equal(t, int64(2), calls.Load())
	})

	t.Run("PanicAfterSideEffectKeepsKey", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var sideEffects atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			sideEffects.Add(1)
			panic("failed after charging the card")
		})
		req := post("/orders", "panic", `{}`)

		// net/http handles a panic by closing the connection.
		_, err := b.send(b.ctx, req)
		require.Error(t, err)
		require.Equal(t, "outcome_unknown", b.record(t, "panic").state)

		for range 2 {
			res := b.do(t, req)
			requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemOutcomeUnknown)
		}
		require.Equal(t, int64(1), sideEffects.Load())
	})

	t.Run("AbandonedRequestKeepsKey", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		started := make(chan struct{})
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			close(started)
			// The work may have begun; the handler stops when the client
			// goes away and writes nothing.
			<-r.Context().Done()
		})
		req := post("/orders", "abandoned", `{}`)

		ctx, cancel := context.WithCancel(b.ctx)
		sent := make(chan error, 1)
		go func() {
			_, err := b.send(ctx, req)
			sent <- err
		}()
		<-started
		cancel()
		require.ErrorIs(t, <-sent, context.Canceled)

		require.Eventually(t, func() bool {
			var state string
			err := b.pool.QueryRow(b.ctx, `SELECT state FROM idempotency_records WHERE key = 'abandoned'`).Scan(&state)
			return err == nil && state == "outcome_unknown"
		}, 10*time.Second, 10*time.Millisecond, "the abandoned request was never settled")
		res := b.do(t, req)
		requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemOutcomeUnknown)
		require.Equal(t, int64(1), calls.Load())
	})

	t.Run("ServerErrorStored", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			http.Error(w, "payment provider failed after the charge", http.StatusBadGateway)
		})
		req := post("/orders", "bad-gateway", `{}`)

		first := b.do(t, req)
		retry := b.do(t, req)

		require.Equal(t, http.StatusBadGateway, first.status)
		require.Equal(t, http.StatusBadGateway, retry.status)
		require.True(t, retry.replayed())
		require.Equal(t, first.body, retry.body)
		require.Equal(t, int64(1), calls.Load())
	})

	t.Run("SetOutcomeOverridesClassifier", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			// The database was down before anything happened: a retry may
			// run again.
			idempotencyhttp.SetOutcome(r.Context(), idempotencyhttp.OutcomeRelease)
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
		})
		req := post("/orders", "unavailable", `{}`)

		first := b.do(t, req)
		retry := b.do(t, req)

		require.Equal(t, http.StatusServiceUnavailable, first.status)
		require.False(t, retry.replayed())
		require.Equal(t, int64(2), calls.Load())
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("CustomClassifier", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var calls atomic.Int64
		storeEverything := func(idempotencyhttp.Attempt) idempotencyhttp.Outcome { return idempotencyhttp.OutcomeStore }
		b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			http.Error(w, "card declined", http.StatusPaymentRequired)
		}, idempotencyhttp.Classify(storeEverything))
		req := post("/orders", "declined", `{}`)

		b.do(t, req)
		retry := b.do(t, req)

		require.Equal(t, http.StatusPaymentRequired, retry.status)
		require.True(t, retry.replayed())
		require.Equal(t, int64(1), calls.Load())
	})
}

func TestIdempotencyHTTPMalformedKeys(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	b.handle(t, "POST /orders", createdHandler(&calls))

	keys := map[string][]string{
		"256 characters":      {strings.Repeat("k", 256)},
		"256 quoted":          {`"` + strings.Repeat("k", 256) + `"`},
		"tab":                 {"a\tb"},
		"bare list":           {"a, b"},
		"quoted list":         {`"a", "b"`},
		"two header lines":    {"a", "b"},
		"empty":               {`""`},
		"unterminated":        {`"abc`},
		"parameters":          {`"abc";v=1`},
		"invalid escape":      {`"a\nb"`},
		"quote inside bare":   {`a"b`},
		"non-ASCII":           {"caf\u00e9"},
		"after closing quote": {`"abc"x`},
	}
	for name, values := range keys {
		t.Run(name, func(t *testing.T) {
			req := post("/orders", "", `{}`)
			req.header = http.Header{"Idempotency-Key": values}

			res := b.do(t, req)

			requireProblem(t, res, http.StatusBadRequest, idempotencyhttp.ProblemKeyInvalid)
		})
	}

	// net/http clients refuse to send control characters other than a
	// tab, so this one goes straight to the mux.
	t.Run("control character", func(t *testing.T) {
		r := httptest.NewRequestWithContext(b.ctx, http.MethodPost, "/orders", strings.NewReader(`{}`))
		r.Header.Set("Idempotency-Key", "a\x01b")
		w := httptest.NewRecorder()

		b.mux.ServeHTTP(w, r)

		require.Equal(t, http.StatusBadRequest, w.Code)
		require.Contains(t, w.Body.String(), idempotencyhttp.ProblemKeyInvalid)
	})

	require.Zero(t, calls.Load())
	require.Equal(t, 0, b.rowCount(t))
}

func TestIdempotencyHTTPKeyForms(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	var calls atomic.Int64
	b.handle(t, "POST /orders", createdHandler(&calls))

	// The quotes of an RFC 8941 String are syntax: "abc" and abc are one key.
	pairs := [][2]string{
		{`"abc"`, `abc`},
		{`"a\\b"`, `a\b`},
		{`8e03978e-40d5-43e8-bc93-6894a57f9324`, `"8e03978e-40d5-43e8-bc93-6894a57f9324"`},
		{strings.Repeat("k", 255), `"` + strings.Repeat("k", 255) + `"`},
	}
	for i, pair := range pairs {
		first := post("/orders", pair[0], `{}`)
		second := post("/orders", pair[1], `{}`)

		firstRes := b.do(t, first)
		secondRes := b.do(t, second)

		require.Equal(t, http.StatusCreated, firstRes.status, "pair %d: %s", i, firstRes)
		require.False(t, firstRes.replayed(), "pair %d", i)
		require.True(t, secondRes.replayed(), "pair %d", i)
	}

	// A quoted key may hold what a bare one cannot.
	quoted := b.do(t, post("/orders", `"a \"quoted\", key"`, `{}`))
	require.Equal(t, http.StatusCreated, quoted.status, "response: %s", quoted)
	require.Equal(t, "completed", b.record(t, `a "quoted", key`).state)
	require.Equal(t, int64(len(pairs)+1), calls.Load())
}

func TestIdempotencyHTTPDifferentKeysRunConcurrently(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	// Each handler waits until both have started, which only happens if
	// the two requests run at the same time. The timeout turns a
	// serialization into a failure instead of a hang.
	var arrived atomic.Int64
	bothStarted := make(chan struct{})
	b.handle(t, "POST /orders", func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == 2 {
			close(bothStarted)
		}
		select {
		case <-bothStarted:
			w.WriteHeader(http.StatusCreated)
		case <-time.After(10 * time.Second):
			http.Error(w, "the other request never started", http.StatusInternalServerError)
		}
	})

	results := make(chan response, 2)
	errs := make(chan error, 2)
	for _, key := range []string{"key-a", "key-b"} {
		go func() {
			res, err := b.send(b.ctx, post("/orders", key, `{}`))
			results <- res
			errs <- err
		}()
	}

	for range 2 {
		require.NoError(t, <-errs)
		res := <-results
		require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
	}
}

// A completed record one second past its expiry is replaced atomically:
// of many concurrent requests, exactly one runs as a new request.
func TestIdempotencyHTTPExpiredRecordTakenOver(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{RecordTTL: time.Hour})
	var calls atomic.Int64
	b.handle(t, "POST /orders", createdHandler(&calls))

	first := b.do(t, post("/orders", "expiring", `{"item":"old"}`))
	require.Equal(t, http.StatusCreated, first.status)
	b.clock.Advance(time.Hour + time.Second)

	// Another body is fine: the old record no longer counts.
	responses, err := b.sendParallel(10, post("/orders", "expiring", `{"item":"new"}`))
	require.NoError(t, err)

	var fresh []response
	for _, res := range responses {
		switch {
		case res.status == http.StatusCreated && !res.replayed():
			fresh = append(fresh, res)
		case res.status == http.StatusCreated:
		default:
			requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
		}
	}
	require.Len(t, fresh, 1)
	require.Equal(t, int64(2), calls.Load())
	require.Equal(t, 1, b.rowCount(t))

	replay := b.do(t, post("/orders", "expiring", `{"item":"new"}`))
	require.True(t, replay.replayed())
	require.Equal(t, fresh[0].body, replay.body)
}

func TestIdempotencyHTTPConfigValidation(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{RecordTTL: time.Hour})

	invalid := map[string]idempotencyhttp.RouteOption{
		"Lease":           idempotencyhttp.Lease(0),
		"negative Lease":  idempotencyhttp.Lease(-time.Second),
		"long Lease":      idempotencyhttp.Lease(2 * time.Hour),
		"MaxRequestBytes": idempotencyhttp.MaxRequestBytes(0),
		"Classify":        idempotencyhttp.Classify(nil),
		"zero option":     {},
	}
	for name, option := range invalid {
		_, err := b.middleware.Route(option)
		require.ErrorIs(t, err, service.ErrInvalidConfig, name)
	}

	_, err := idempotencyhttp.New(idempotencyhttp.Config{})
	require.ErrorIs(t, err, service.ErrInvalidConfig)
}
