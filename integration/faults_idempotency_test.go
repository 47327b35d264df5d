package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

// idempotencyFaults is a fault bundle with an Idempotency on the pool under
// test and a second one on the admin pool, whose Do holds a key's claim
// uncommitted so that a claim of the pool under test waits for it.
type idempotencyFaults struct {
	*faultBundle
	clock       *testClock
	idempotency *service.Idempotency
	blocker     *service.Idempotency
}

func setupIdempotencyFaults(t *testing.T, configure func(*pgxpool.Config)) *idempotencyFaults {
	t.Helper()

	b := setupFaults(t, configure)
	clock := newTestClock()
	idempotency, err := service.NewIdempotency(b.pool, service.IdempotencyConfig{Now: clock.Now})
	require.NoError(t, err)
	blocker, err := service.NewIdempotency(b.admin, service.IdempotencyConfig{Now: clock.Now})
	require.NoError(t, err)
	_, err = b.admin.Exec(b.ctx, `CREATE TABLE test_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL)`)
	require.NoError(t, err)

	return &idempotencyFaults{faultBundle: b, clock: clock, idempotency: idempotency, blocker: blocker}
}

// records lists every idempotency record as "key state token=… status=…
// body=…", ordered by key, so a test can compare the table before and
// after a fault. token is "set" or "none", body the stored length or -1.
func (b *idempotencyFaults) records(t *testing.T) []string {
	t.Helper()

	rows, err := b.admin.Query(b.ctx, `
		SELECT key, state, lock_token IS NOT NULL, coalesce(response_status, 0),
			coalesce(length(response_body_json), length(response_body), -1)
		FROM idempotency_records
		ORDER BY key`)
	require.NoError(t, err)
	var records []string
	for rows.Next() {
		var key, state string
		var owned bool
		var status, bodyLength int
		require.NoError(t, rows.Scan(&key, &state, &owned, &status, &bodyLength))
		token := "none"
		if owned {
			token = "set"
		}
		records = append(records, fmt.Sprintf("%s %s token=%s status=%d body=%d", key, state, token, status, bodyLength))
	}
	require.NoError(t, rows.Err())
	return records
}

func (b *idempotencyFaults) orderCount(t *testing.T) int {
	t.Helper()

	var count int
	require.NoError(t, b.admin.QueryRow(b.ctx, `SELECT count(*) FROM test_orders`).Scan(&count))
	return count
}

// holdClaim claims req's key on the admin pool inside Do and keeps the
// transaction open until the returned function is called, which rolls it
// back. Until then a claim of the same key waits on the unique index.
func (b *idempotencyFaults) holdClaim(t *testing.T, req service.Request) func() {
	t.Helper()

	claimed := make(chan struct{})
	rollBack := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, _, err := b.blocker.Do(context.WithoutCancel(b.ctx), req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			close(claimed)
			<-rollBack
			return service.StoredResponse{}, errors.New("rolled back by the test")
		})
		done <- err
	}()
	<-claimed

	var once atomic.Bool
	release := func() {
		if once.CompareAndSwap(false, true) {
			close(rollBack)
			<-done
		}
	}
	t.Cleanup(release)
	return release
}

// lockRecord locks the record of key FOR UPDATE on the admin pool, so a
// settle of it waits, and returns the function that ends the lock.
func (b *idempotencyFaults) lockRecord(t *testing.T, key string) func() {
	t.Helper()
	return b.holdLock(t, "SELECT 1 FROM idempotency_records WHERE key = $1 FOR UPDATE", key)
}

// claimSettle is one way to settle a claim, with the record it leaves.
type claimSettle struct {
	name   string
	settle func(ctx context.Context, claim *service.Claim) error
	// want is the record after the settle, or empty when it deletes it.
	want []string
}

func claimSettles(key string) []claimSettle {
	return []claimSettle{
		{
			name:   "Complete",
			settle: func(ctx context.Context, c *service.Claim) error { return c.Complete(ctx, created(`{"id":1}`)) },
			want:   []string{key + " completed token=none status=201 body=8"},
		},
		{
			name:   "Release",
			settle: func(ctx context.Context, c *service.Claim) error { return c.Release(ctx) },
		},
		{
			name:   "MarkOutcomeUnknown",
			settle: func(ctx context.Context, c *service.Claim) error { return c.MarkOutcomeUnknown(ctx) },
			want:   []string{key + " outcome_unknown token=none status=0 body=-1"},
		},
		{
			name:   "MarkResultUnavailable",
			settle: func(ctx context.Context, c *service.Claim) error { return c.MarkResultUnavailable(ctx, http.StatusOK) },
			want:   []string{key + " result_unavailable token=none status=200 body=-1"},
		},
	}
}

func TestIdempotencyFaults(t *testing.T) {
	t.Parallel()

	t.Run("BackendKilledDuringClaim", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		req := orderRequest("kill-claim", `{}`)
		release := b.holdClaim(t, req)

		result := make(chan error, 1)
		go func() {
			_, _, err := b.idempotency.Begin(b.ctx, req)
			result <- err
		}()
		b.terminate(t, b.waitForBlockedBackend(t))
		err := <-result
		release()

		// The killed claim rolled back and the blocker rolled back, so the
		// key is free and the retry owns it.
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Empty(t, b.records(t))
		claim, stored, err := b.idempotency.Begin(b.ctx, req)
		require.NoError(t, err)
		require.Nil(t, stored)
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":1}`)))
		require.Equal(t, []string{"kill-claim completed token=none status=201 body=8"}, b.records(t))
	})

	t.Run("CrashAfterClaimEndsWithLease", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		req := orderRequest("crash", `{}`)

		// The claim commits, then every connection dies before a settle,
		// as when the application process crashes.
		abandoned, _, err := b.idempotency.Begin(b.ctx, req)
		require.NoError(t, err)
		_, err = b.admin.Exec(b.ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, faultApplicationName)
		require.NoError(t, err)

		// Until the lease ends a retry gets ErrInFlight. Afterwards no
		// request gets it.
		_, _, err = b.idempotency.Begin(b.ctx, req)
		for errors.Is(err, service.ErrUnavailable) {
			_, _, err = b.idempotency.Begin(b.ctx, req)
		}
		require.ErrorIs(t, err, service.ErrInFlight)
		b.clock.Advance(time.Minute)
		_, _, err = b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrOutcomeUnknown)

		rerun := req
		rerun.AllowTakeover = true
		claim, _, err := b.idempotency.Begin(b.ctx, rerun)
		require.NoError(t, err)
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":2}`)))
		require.ErrorIs(t, abandoned.Complete(b.ctx, created(`{"id":1}`)), service.ErrLeaseLost)
		require.Equal(t, []string{"crash completed token=none status=201 body=8"}, b.records(t))
	})

	for _, s := range claimSettles("kill-settle") {
		t.Run("BackendKilledDuring"+s.name, func(t *testing.T) {
			t.Parallel()
			b := setupIdempotencyFaults(t, nil)
			claim, _, err := b.idempotency.Begin(b.ctx, orderRequest("kill-settle", `{}`))
			require.NoError(t, err)
			before := b.records(t)
			unlock := b.lockRecord(t, "kill-settle")

			result := make(chan error, 1)
			go func() { result <- s.settle(b.ctx, claim) }()
			b.terminate(t, b.waitForBlockedBackend(t))
			err = <-result
			unlock()

			// The server reported the kill, so the statement rolled back
			// and the settle may be called again, exactly once.
			require.ErrorIs(t, err, service.ErrUnavailable)
			require.Equal(t, before, b.records(t))
			require.NoError(t, s.settle(b.ctx, claim))
			require.Equal(t, s.want, b.records(t))
			require.ErrorIs(t, s.settle(b.ctx, claim), service.ErrClaimSettled)
		})
	}

	t.Run("BackendKilledDuringDo", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		req := orderRequest("kill-do", `{}`)

		// The function writes, reports its backend and waits; the test
		// kills that backend before the response is stored.
		backend := make(chan int32, 1)
		proceed := make(chan struct{})
		var calls atomic.Int64
		fn := func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			if calls.Add(1) == 1 {
				var pid int32
				if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
					return service.StoredResponse{}, err
				}
				backend <- pid
				<-proceed
			}
			return insertOrder(ctx, tx)
		}
		result := make(chan error, 1)
		go func() {
			_, _, err := b.idempotency.Do(b.ctx, req, fn)
			result <- err
		}()
		b.terminate(t, <-backend)
		close(proceed)
		err := <-result

		// fn's write fails on the dead connection, so Do returns fn's
		// error unchanged; nothing of the transaction remains.
		require.Error(t, err)
		require.Empty(t, b.records(t))
		require.Zero(t, b.orderCount(t))

		response, replayed, err := b.idempotency.Do(b.ctx, req, fn)
		require.NoError(t, err)
		require.False(t, replayed)
		require.Equal(t, http.StatusCreated, response.Status)
		require.Equal(t, 1, b.orderCount(t))
		require.Equal(t, int64(2), calls.Load())
	})

	t.Run("BackendKilledWhileDoStores", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		req := orderRequest("kill-do-store", `{}`)

		// This function writes nothing after the kill, so the first
		// statement on the dead connection is Do's own.
		backend := make(chan int32, 1)
		proceed := make(chan struct{})
		var calls atomic.Int64
		fn := func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			if _, err := tx.Exec(ctx, `INSERT INTO test_orders (item) VALUES ('book')`); err != nil {
				return service.StoredResponse{}, err
			}
			if calls.Add(1) == 1 {
				var pid int32
				if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
					return service.StoredResponse{}, err
				}
				backend <- pid
				<-proceed
			}
			return service.StoredResponse{Status: http.StatusCreated, Body: []byte(`{"created":true}`)}, nil
		}
		result := make(chan error, 1)
		go func() {
			_, _, err := b.idempotency.Do(b.ctx, req, fn)
			result <- err
		}()
		b.terminate(t, <-backend)
		close(proceed)
		err := <-result

		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Empty(t, b.records(t))
		require.Zero(t, b.orderCount(t))

		_, replayed, err := b.idempotency.Do(b.ctx, req, fn)
		require.NoError(t, err)
		require.False(t, replayed)
		require.Equal(t, 1, b.orderCount(t))
		_, replayed, err = b.idempotency.Do(b.ctx, req, fn)
		require.NoError(t, err)
		require.True(t, replayed)
		require.Equal(t, int64(2), calls.Load())
	})

	t.Run("BackendKilledWhileDoWaits", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		req := orderRequest("kill-do-wait", `{}`)
		release := b.holdClaim(t, req)

		result := make(chan error, 1)
		go func() {
			_, _, err := b.idempotency.Do(b.ctx, req, insertOrder)
			result <- err
		}()
		b.terminate(t, b.waitForBlockedBackend(t))
		err := <-result
		release()

		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Empty(t, b.records(t))
		_, replayed, err := b.idempotency.Do(b.ctx, req, insertOrder)
		require.NoError(t, err)
		require.False(t, replayed)
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("StatementTimeout", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, func(config *pgxpool.Config) {
			config.ConnConfig.RuntimeParams["statement_timeout"] = "200"
		})

		// A claim that waits too long times out and leaves nothing.
		waiting := orderRequest("slow-claim", `{}`)
		release := b.holdClaim(t, waiting)
		_, _, err := b.idempotency.Begin(b.ctx, waiting)
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.ErrorContains(t, err, "statement timeout")
		release()
		require.Empty(t, b.records(t))

		// A settle that times out changes nothing and may be called again.
		claim, _, err := b.idempotency.Begin(b.ctx, orderRequest("slow-settle", `{}`))
		require.NoError(t, err)
		before := b.records(t)
		unlock := b.lockRecord(t, "slow-settle")
		err = claim.Complete(b.ctx, created(`{"id":1}`))
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.ErrorContains(t, err, "statement timeout")
		unlock()
		require.Equal(t, before, b.records(t))
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":1}`)))
		require.Equal(t, []string{"slow-settle completed token=none status=201 body=8"}, b.records(t))
	})

	t.Run("CancelledContext", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)

		// pgx returns at once and closes the connection, but the server
		// still runs the claim once the key is free, so the claim commits
		// whole or not at all. A committed claim holds the key until its
		// lease ends, although no handler ran.
		req := orderRequest("gone-claim", `{}`)
		release := b.holdClaim(t, req)
		ctx, cancel := context.WithCancel(b.ctx)
		result := make(chan error, 1)
		go func() {
			_, _, err := b.idempotency.Begin(ctx, req)
			result <- err
		}()
		b.waitForBlockedBackend(t)
		cancel()
		err := <-result
		release()
		require.ErrorIs(t, err, context.Canceled)
		b.waitForIdleBackends(t)
		require.Contains(t, [][]string{nil, {"gone-claim in_progress token=set status=0 body=-1"}}, b.records(t))

		// A settle cut off the same way is applied whole or not at all.
		// pgx cannot tell which, so the claim rejects a second settle.
		claim, _, err := b.idempotency.Begin(b.ctx, orderRequest("gone-settle", `{}`))
		require.NoError(t, err)
		_, err = b.admin.Exec(b.ctx, `DELETE FROM idempotency_records WHERE key = 'gone-claim'`)
		require.NoError(t, err)
		before := b.records(t)
		unlock := b.lockRecord(t, "gone-settle")
		ctx, cancel = context.WithCancel(b.ctx)
		go func() { result <- claim.Complete(ctx, created(`{"id":1}`)) }()
		b.waitForBlockedBackend(t)
		cancel()
		err = <-result
		unlock()
		require.ErrorIs(t, err, context.Canceled)
		b.waitForIdleBackends(t)
		require.Contains(t, [][]string{before, {"gone-settle completed token=none status=201 body=8"}}, b.records(t))
		require.ErrorIs(t, claim.Complete(b.ctx, created(`{"id":1}`)), service.ErrClaimSettled)

		// A context that ended before the call sends nothing, so the
		// settle may be called again.
		claim, _, err = b.idempotency.Begin(b.ctx, orderRequest("gone-before", `{}`))
		require.NoError(t, err)
		done, cancelDone := context.WithCancel(b.ctx)
		cancelDone()
		require.ErrorIs(t, claim.Release(done), context.Canceled)
		require.NoError(t, claim.Release(b.ctx))
	})

	t.Run("ExhaustedPool", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, func(config *pgxpool.Config) { config.MaxConns = 1 })
		conn, err := b.pool.Acquire(b.ctx)
		require.NoError(t, err)
		defer conn.Release()

		ctx, cancel := context.WithTimeout(b.ctx, 100*time.Millisecond)
		defer cancel()
		started := time.Now()
		_, _, err = b.idempotency.Begin(ctx, orderRequest("busy", `{}`))

		require.ErrorIs(t, err, service.ErrUnavailable)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "failed to claim idempotency key")
		require.Less(t, time.Since(started), 5*time.Second)
		require.Empty(t, b.records(t))

		_, _, err = b.idempotency.Do(ctx, orderRequest("busy", `{}`), insertOrder)
		require.ErrorIs(t, err, service.ErrUnavailable)
		require.Empty(t, b.records(t))
	})

	t.Run("RecoversAfterAllConnectionsDie", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)

		for i := range 3 {
			claim, _, err := b.idempotency.Begin(b.ctx, orderRequest(fmt.Sprintf("warm-%d", i), `{}`))
			require.NoError(t, err)
			require.NoError(t, claim.Complete(b.ctx, created(`{"id":1}`)))
		}
		_, err := b.admin.Exec(b.ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, faultApplicationName)
		require.NoError(t, err)

		var failures int
		var claim *service.Claim
		for range 10 {
			claim, _, err = b.idempotency.Begin(b.ctx, orderRequest("after-restart", `{}`))
			if err == nil {
				break
			}
			require.ErrorIs(t, err, service.ErrUnavailable)
			failures++
		}
		require.NotNil(t, claim, "Begin never recovered after %d failures", failures)
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":2}`)))
		require.Len(t, b.records(t), 4)
	})
}

// faultServer serves routes of the idempotency middleware on the pool
// under test.
func (b *idempotencyFaults) faultServer(t *testing.T, routes func(m *idempotencyhttp.Middleware, mux *http.ServeMux)) *httpBundle {
	t.Helper()

	middleware, err := idempotencyhttp.New(idempotencyhttp.Config{Idempotency: b.idempotency, Scope: organizationScope})
	require.NoError(t, err)
	mux := http.NewServeMux()
	routes(middleware, mux)
	server := httptest.NewUnstartedServer(mux)
	server.Config.ErrorLog = log.New(io.Discard, "", 0)
	server.Start()
	t.Cleanup(server.Close)
	return &httpBundle{ctx: b.ctx, pool: b.admin, clock: b.clock, idempotency: b.idempotency, middleware: middleware, mux: mux, server: server}
}

func TestIdempotencyHTTPFaults(t *testing.T) {
	t.Parallel()

	t.Run("UnreachableDatabaseAnswers503", func(t *testing.T) {
		t.Parallel()
		idempotency, err := service.NewIdempotency(unreachablePool(t), service.IdempotencyConfig{})
		require.NoError(t, err)
		b := &idempotencyFaults{faultBundle: &faultBundle{ctx: t.Context()}, idempotency: idempotency}
		var calls atomic.Int64
		server := b.faultServer(t, func(m *idempotencyhttp.Middleware, mux *http.ServeMux) {
			lease, err := m.Route()
			require.NoError(t, err)
			atomicRoute, err := m.Route(idempotencyhttp.Atomic())
			require.NoError(t, err)
			mux.Handle("POST /orders", lease(createdHandler(&calls)))
			mux.Handle("POST /transfers", atomicRoute(createdHandler(&calls)))
		})

		for _, path := range []string{"/orders", "/transfers"} {
			res := server.do(t, post(path, "k", `{}`))
			requireProblem(t, res, http.StatusServiceUnavailable, idempotencyhttp.ProblemUnavailable)
			require.Equal(t, "5", res.header.Get("Retry-After"), path)
		}
		require.Zero(t, calls.Load())
	})

	t.Run("ExhaustedPoolAnswers503", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, func(config *pgxpool.Config) { config.MaxConns = 1 })
		var calls atomic.Int64
		server := b.faultServer(t, func(m *idempotencyhttp.Middleware, mux *http.ServeMux) {
			route, err := m.Route()
			require.NoError(t, err)
			// The application bounds each request, as it should when a
			// pool can run out of connections.
			handler := route(createdHandler(&calls))
			mux.Handle("POST /orders", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx, cancel := context.WithTimeout(r.Context(), 200*time.Millisecond)
				defer cancel()
				handler.ServeHTTP(w, r.WithContext(ctx))
			}))
		})
		conn, err := b.pool.Acquire(b.ctx)
		require.NoError(t, err)
		defer conn.Release()

		res := server.do(t, post("/orders", "busy", `{}`))

		requireProblem(t, res, http.StatusServiceUnavailable, idempotencyhttp.ProblemUnavailable)
		require.Zero(t, calls.Load())
		require.Empty(t, b.records(t))
	})

	t.Run("SettleRetriedAfterKill", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		started := make(chan struct{})
		proceed := make(chan struct{})
		var calls atomic.Int64
		server := b.faultServer(t, func(m *idempotencyhttp.Middleware, mux *http.ServeMux) {
			route, err := m.Route()
			require.NoError(t, err)
			handler := createdHandler(&calls)
			mux.Handle("POST /orders", route(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				<-proceed
				handler(w, r)
			})))
		})

		// The handler runs while the test locks the record, so the
		// middleware's Complete waits; the test kills it there.
		result := make(chan response, 1)
		go func() {
			res, _ := server.send(b.ctx, post("/orders", "settle", `{}`))
			result <- res
		}()
		<-started
		unlock := b.lockRecord(t, "settle")
		close(proceed)
		b.terminate(t, b.waitForBlockedBackend(t))
		unlock()
		first := <-result

		require.Equal(t, http.StatusCreated, first.status, "response: %s", first)
		require.Equal(t, []string{"settle completed token=none status=201 body=" + fmt.Sprint(len(first.body))}, b.records(t))
		replay := server.do(t, post("/orders", "settle", `{}`))
		require.True(t, replay.replayed())
		require.Equal(t, first.body, replay.body)
		require.Equal(t, int64(1), calls.Load())
	})

	t.Run("AtomicRouteKilledAnswers503", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		backend := make(chan int32, 1)
		proceed := make(chan struct{})
		var calls atomic.Int64
		server := b.faultServer(t, func(m *idempotencyhttp.Middleware, mux *http.ServeMux) {
			route, err := m.Route(idempotencyhttp.Atomic())
			require.NoError(t, err)
			mux.Handle("POST /orders", route(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tx, _ := idempotencyhttp.Tx(r.Context())
				if _, err := tx.Exec(r.Context(), `INSERT INTO test_orders (item) VALUES ('book')`); err != nil {
					http.Error(w, "insert failed", http.StatusInternalServerError)
					return
				}
				if calls.Add(1) == 1 {
					var pid int32
					if err := tx.QueryRow(r.Context(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
						http.Error(w, "no backend", http.StatusInternalServerError)
						return
					}
					backend <- pid
					<-proceed
				}
				w.WriteHeader(http.StatusCreated)
			})))
		})

		result := make(chan response, 1)
		go func() {
			res, _ := server.send(b.ctx, post("/orders", "atomic-kill", `{}`))
			result <- res
		}()
		b.terminate(t, <-backend)
		close(proceed)
		first := <-result

		requireProblem(t, first, http.StatusServiceUnavailable, idempotencyhttp.ProblemUnavailable)
		require.Empty(t, b.records(t))
		require.Zero(t, b.orderCount(t))
		retry := server.do(t, post("/orders", "atomic-kill", `{}`))
		require.Equal(t, http.StatusCreated, retry.status, "response: %s", retry)
		require.False(t, retry.replayed())
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("RecoversAfterAllConnectionsDie", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotencyFaults(t, nil)
		var calls atomic.Int64
		server := b.faultServer(t, func(m *idempotencyhttp.Middleware, mux *http.ServeMux) {
			route, err := m.Route()
			require.NoError(t, err)
			mux.Handle("POST /orders", route(createdHandler(&calls)))
		})
		for i := range 3 {
			res := server.do(t, post("/orders", fmt.Sprintf("warm-%d", i), `{}`))
			require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
		}
		_, err := b.admin.Exec(b.ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, faultApplicationName)
		require.NoError(t, err)

		var statuses []string
		recovered := false
		for range 10 {
			res := server.do(t, post("/orders", "after-restart", `{}`))
			statuses = append(statuses, fmt.Sprint(res.status))
			if res.status == http.StatusCreated {
				recovered = true
				break
			}
			requireProblem(t, res, http.StatusServiceUnavailable, idempotencyhttp.ProblemUnavailable)
		}
		require.True(t, recovered, "statuses: %s", strings.Join(statuses, " "))
		require.Equal(t, int64(4), calls.Load())
	})
}
