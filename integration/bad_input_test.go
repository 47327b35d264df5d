package integration

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// tenMB is the size of the oversized inputs: far beyond every limit, and
// beyond what net/http reads as headers (1 MB by default).
const tenMB = 10 << 20

// badInputBundle is a database with a Lockout and an Idempotency that use
// the database clock, as in production.
type badInputBundle struct {
	ctx         context.Context
	db          *pgtest.DB
	lockout     *service.Lockout
	idempotency *service.Idempotency
}

func setupBadInput(t *testing.T) *badInputBundle {
	t.Helper()

	db := pgtest.New(t)
	lockout, err := service.NewLockout(db.Pool, service.LockoutConfig{})
	require.NoError(t, err)
	idempotency, err := service.NewIdempotency(db.Pool, service.IdempotencyConfig{})
	require.NoError(t, err)
	_, err = db.Pool.Exec(t.Context(), `CREATE TABLE test_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL)`)
	require.NoError(t, err)
	return &badInputBundle{ctx: t.Context(), db: db, lockout: lockout, idempotency: idempotency}
}

// requireInputError checks that err is an *service.InputError about field.
func requireInputError(t *testing.T, err error, field string) {
	t.Helper()

	var invalid *service.InputError
	require.ErrorAs(t, err, &invalid)
	require.ErrorIs(t, err, service.ErrInvalidInput)
	require.Equal(t, field, invalid.Field, "error: %v", err)
}

func TestBadInputRejected(t *testing.T) {
	t.Parallel()
	b := setupBadInput(t)
	begin := func(email, ip string) func() error {
		return func() error {
			_, err := b.lockout.Begin(b.ctx, service.ChannelPassword, email, ip)
			return err
		}
	}
	claim := func(req service.Request) func() error {
		return func() error {
			_, _, err := b.idempotency.Begin(b.ctx, req)
			return err
		}
	}
	withKey := func(key string) service.Request { return orderRequest(key, `{}`) }
	withRequest := func(change func(*service.Request)) service.Request {
		req := orderRequest("key", `{}`)
		change(&req)
		return req
	}

	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"email with NUL", begin("a\x00b@example.com", "192.0.2.1"), "email"},
		{"email not UTF-8", begin("\xffa@example.com", "192.0.2.1"), "email"},
		{"email of 10 MB", begin(strings.Repeat("a", tenMB)+"@example.com", "192.0.2.1"), "email"},
		{"email empty", begin("", "192.0.2.1"), "email"},
		{"email only spaces", begin(" \t ", "192.0.2.1"), "email"},
		{"email of 321 bytes", begin(strings.Repeat("a", 309)+"@example.com", "192.0.2.1"), "email"},
		{"ip not an address", begin("alice@example.com", "not-an-ip"), "ip"},
		{"ip with port", begin("alice@example.com", "192.0.2.1:80"), "ip"},
		{"ip of 10 MB", begin("alice@example.com", strings.Repeat("1", tenMB)), "ip"},
		{"channel unknown", func() error {
			_, err := b.lockout.Begin(b.ctx, "pin", "alice@example.com", "192.0.2.1")
			return err
		}, "channel"},
		{"unlock email with NUL", func() error {
			_, err := b.lockout.UnlockAccount(b.ctx, "a\x00@example.com")
			return err
		}, "email"},
		{"list locks limit zero", func() error {
			_, err := b.lockout.ListLocks(b.ctx, "", 0)
			return err
		}, "limit"},
		{"list locks forged cursor", func() error {
			_, err := b.lockout.ListLocks(b.ctx, "\x00not a cursor", 10)
			return err
		}, "cursor"},
		{"purge idle batch zero", func() error {
			_, err := b.lockout.PurgeIdle(b.ctx, 48*time.Hour, 0)
			return err
		}, "batch size"},
		{"purge idle negative retention", func() error {
			_, err := b.lockout.PurgeIdle(b.ctx, -time.Hour, 100)
			return err
		}, "retention"},
		{"key with NUL", claim(withKey("a\x00b")), "idempotency key"},
		{"key not UTF-8", claim(withKey("a\xffb")), "idempotency key"},
		{"key of 10 MB", claim(withKey(strings.Repeat("k", tenMB))), "idempotency key"},
		{"key of 256 characters", claim(withKey(strings.Repeat("é", 256))), "idempotency key"},
		{"key empty", claim(withKey("")), "idempotency key"},
		{"route empty", claim(withRequest(func(r *service.Request) { r.Route = "" })), "route"},
		{"route with NUL", claim(withRequest(func(r *service.Request) { r.Route = "/a\x00b" })), "route"},
		{"route of 10 MB", claim(withRequest(func(r *service.Request) { r.Route = "/" + strings.Repeat("r", tenMB) })), "route"},
		{"method empty", claim(withRequest(func(r *service.Request) { r.Method = "" })), "method"},
		{"method with space", claim(withRequest(func(r *service.Request) { r.Method = "PO ST" })), "method"},
		{"no scope", claim(withRequest(func(r *service.Request) { r.OrganizationID = "" })), "scope"},
		{"organization not UTF-8", claim(withRequest(func(r *service.Request) { r.OrganizationID = "org\xff" })), "organization id"},
		{"principal of 10 MB", claim(withRequest(func(r *service.Request) {
			r.OrganizationID = ""
			r.Principal = strings.Repeat("p", tenMB)
		})), "principal"},
		{"client IP not an address", claim(withRequest(func(r *service.Request) {
			r.OrganizationID = ""
			r.ClientIP = "localhost"
		})), "ip"},
		{"lease negative", claim(withRequest(func(r *service.Request) { r.Lease = -time.Second })), "lease"},
		{"lease longer than the record", claim(withRequest(func(r *service.Request) { r.Lease = 25 * time.Hour })), "lease"},
		{"path value without name", claim(withRequest(func(r *service.Request) { r.PathValues = map[string]string{"": "1"} })), "path values"},
		{"Do with key of 10 MB", func() error {
			_, _, err := b.idempotency.Do(b.ctx, withKey(strings.Repeat("k", tenMB)), func(context.Context, pgx.Tx) (service.StoredResponse, error) {
				panic("fn ran for an invalid request")
			})
			return err
		}, "idempotency key"},
		{"purge expired batch zero", func() error {
			_, err := b.idempotency.PurgeExpired(b.ctx, 0)
			return err
		}, "batch size"},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := b.db.RowCounts(t)

			err := c.call()

			requireInputError(t, err, c.field)
			require.Less(t, len(err.Error()), 300, "the error echoes a long input: %.300s", err)
			require.Equal(t, before, b.db.RowCounts(t))
		})
	}
}

func TestBadConfigRejected(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	idempotency, err := service.NewIdempotency(db.Pool, service.IdempotencyConfig{})
	require.NoError(t, err)
	middleware, err := idempotencyhttp.New(idempotencyhttp.Config{Idempotency: idempotency})
	require.NoError(t, err)
	lockoutConfig := func(policy service.ChannelPolicy) service.LockoutConfig {
		return service.LockoutConfig{Channels: map[service.Channel]service.ChannelPolicy{service.ChannelPassword: policy}}
	}
	newLockout := func(config service.LockoutConfig) func() error {
		return func() error {
			_, err := service.NewLockout(db.Pool, config)
			return err
		}
	}
	newIdempotency := func(config service.IdempotencyConfig) func() error {
		return func() error {
			_, err := service.NewIdempotency(db.Pool, config)
			return err
		}
	}
	route := func(option idempotencyhttp.RouteOption) func() error {
		return func() error {
			_, err := middleware.Route(option)
			return err
		}
	}

	cases := []struct {
		name  string
		build func() error
		field string
	}{
		{"negative threshold", newLockout(lockoutConfig(service.ChannelPolicy{AccountSource: service.TierPolicy{MaxFailures: -1}})), "Channels[password].AccountSource.MaxFailures"},
		{"negative lock duration", newLockout(lockoutConfig(service.ChannelPolicy{Account: service.TierPolicy{LockDuration: -time.Second}})), "Channels[password].Account.LockDuration"},
		{"negative failure window", newLockout(lockoutConfig(service.ChannelPolicy{Source: service.TierPolicy{FailureWindow: -time.Second}})), "Channels[password].Source.FailureWindow"},
		{"negative hard lock threshold", newLockout(lockoutConfig(service.ChannelPolicy{HardLockAfter: -5})), "Channels[password].HardLockAfter"},
		{"negative attempt timeout", newLockout(service.LockoutConfig{AttemptTimeout: -time.Second}), "AttemptTimeout"},
		{"negative known source window", newLockout(service.LockoutConfig{KnownSourceWindow: -time.Hour}), "KnownSourceWindow"},
		{"IPv6 prefix of 129 bits", newLockout(service.LockoutConfig{IPv6PrefixLen: 129}), "IPv6PrefixLen"},
		{"negative lease", newIdempotency(service.IdempotencyConfig{LeaseDuration: -time.Second}), "LeaseDuration"},
		{"negative record TTL", newIdempotency(service.IdempotencyConfig{RecordTTL: -time.Hour}), "RecordTTL"},
		{"negative response limit", newIdempotency(service.IdempotencyConfig{MaxResponseBytes: -1}), "MaxResponseBytes"},
		{"route lease zero", route(idempotencyhttp.Lease(0)), "Lease"},
		{"route lease negative", route(idempotencyhttp.Lease(-time.Second)), "Lease"},
		{"route request limit zero", route(idempotencyhttp.MaxRequestBytes(0)), "MaxRequestBytes"},
		{"route zero option", route(idempotencyhttp.RouteOption{}), "RouteOption"},
		{"cleaner negative interval", func() error {
			_, err := service.NewIdempotencyCleaner(idempotency, service.IdempotencyCleanerConfig{Interval: -time.Second})
			return err
		}, "Interval"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.build()
			require.ErrorIs(t, err, service.ErrInvalidConfig)
			require.ErrorContains(t, err, c.field)
		})
	}

	// A zero field is not an error: it takes the documented default.
	defaults, err := service.NewIdempotency(db.Pool, service.IdempotencyConfig{LeaseDuration: 0, MaxResponseBytes: 0})
	require.NoError(t, err)
	require.Equal(t, time.Minute, defaults.Config().LeaseDuration)
	require.Equal(t, 1<<20, defaults.Config().MaxResponseBytes)
}

func TestBadResponseStoredOrRejected(t *testing.T) {
	t.Parallel()

	t.Run("StatusOutsideRange", func(t *testing.T) {
		t.Parallel()
		b := setupBadInput(t)
		req := orderRequest("status", `{}`)
		claim, _, err := b.idempotency.Begin(b.ctx, req)
		require.NoError(t, err)
		before := b.db.RowCounts(t)

		for _, status := range []int{-1, 0, 99, 600, 1000} {
			requireInputError(t, claim.Complete(b.ctx, service.StoredResponse{Status: status}), "response status")
			requireInputError(t, claim.MarkResultUnavailable(b.ctx, status), "response status")
		}

		// Nothing was stored and the claim can still be settled.
		require.Equal(t, before, b.db.RowCounts(t))
		_, _, err = b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrInFlight)
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":1}`)))
	})

	t.Run("DoStatusOutsideRangeRollsBack", func(t *testing.T) {
		t.Parallel()
		b := setupBadInput(t)
		before := b.db.RowCounts(t)

		_, _, err := b.idempotency.Do(b.ctx, orderRequest("do-status", `{}`), func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			if _, err := tx.Exec(ctx, `INSERT INTO test_orders (item) VALUES ('book')`); err != nil {
				return service.StoredResponse{}, err
			}
			return service.StoredResponse{Status: 1000}, nil
		})

		requireInputError(t, err, "response status")
		require.Equal(t, before, b.db.RowCounts(t))
	})

	t.Run("BodyNotUTF8StoredLosslessly", func(t *testing.T) {
		t.Parallel()
		b := setupBadInput(t)
		bodies := map[string][]byte{
			"invalid UTF-8": {'o', 'k', 0xff, 0xfe},
			"NUL":           {'a', 0x00, 'b'},
			"Latin-1":       []byte("caf\xe9"),
			"empty":         {},
		}
		for name, body := range bodies {
			req := orderRequest("body "+name, `{}`)
			claim, _, err := b.idempotency.Begin(b.ctx, req)
			require.NoError(t, err)
			require.NoError(t, claim.Complete(b.ctx, service.StoredResponse{Status: http.StatusOK, Body: body}), name)

			_, stored, err := b.idempotency.Begin(b.ctx, req)
			require.NoError(t, err)
			require.Equal(t, body, stored.Body, name)
		}
	})

	t.Run("UnstorableHeaderMarksResultUnavailable", func(t *testing.T) {
		t.Parallel()
		b := setupBadInput(t)
		values := map[string]string{
			"NUL":           "a\x00b",
			"invalid UTF-8": "caf\xe9",
		}
		for name, value := range values {
			req := orderRequest("header "+name, `{}`)
			claim, _, err := b.idempotency.Begin(b.ctx, req)
			require.NoError(t, err)
			response := created(`{"id":1}`)
			response.Header.Set("ETag", value)

			require.NoError(t, claim.Complete(b.ctx, response), name)
			_, _, err = b.idempotency.Begin(b.ctx, req)
			require.ErrorIs(t, err, service.ErrResultUnavailable, name)
		}

		// A header that is not replayed is never looked at.
		req := orderRequest("header not replayed", `{}`)
		claim, _, err := b.idempotency.Begin(b.ctx, req)
		require.NoError(t, err)
		response := created(`{"id":1}`)
		response.Header.Set("X-Trace", "a\x00b")
		require.NoError(t, claim.Complete(b.ctx, response))
		_, stored, err := b.idempotency.Begin(b.ctx, req)
		require.NoError(t, err)
		require.Equal(t, []byte(`{"id":1}`), stored.Body)
	})
}

func TestBadJSONBody(t *testing.T) {
	t.Parallel()
	deep := func(levels int) string { return strings.Repeat("[", levels) + strings.Repeat("]", levels) }

	// 10000 levels is the limit, the same as encoding/json's.
	canonical, err := service.CanonicalJSON([]byte(deep(10000)))
	require.NoError(t, err)
	require.Equal(t, deep(10000), string(canonical))

	rejected := map[string]string{
		"10001 levels":             deep(10001),
		"ends early":               `{"item":"book","quantity":`,
		"ends inside a string":     `{"item":"bo`,
		"not UTF-8":                "{\"item\":\"caf\xe9\"}",
		"repeated member":          `{"secret-member":1,"secret-member":2}`,
		"data after the value":     `{} {}`,
		"10 MB of opening":         strings.Repeat("[", tenMB),
		"NUL outside a string":     "{\"a\":1}\x00",
		"control inside a string":  "[\"a\x01b\"]",
		"surrogate in UTF-8 bytes": "[\"\xed\xa0\x80\"]",
	}
	for name, body := range rejected {
		_, err := service.CanonicalJSON([]byte(body))
		requireInputError(t, err, "JSON body")
		require.NotContains(t, err.Error(), "secret-member", name)
	}
}

func TestBadInputThroughMiddleware(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, service.IdempotencyConfig{})
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE test_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL)`)
	require.NoError(t, err)
	var calls atomic.Int64
	b.handle(t, "POST /json", createdHandler(&calls), idempotencyhttp.JSONBody())
	b.handle(t, "POST /status", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(600)
	})
	insertThen600 := func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		tx, _ := idempotencyhttp.Tx(r.Context())
		if _, err := tx.Exec(r.Context(), `INSERT INTO test_orders (item) VALUES ('book')`); err != nil {
			http.Error(w, "insert failed", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(600)
	}
	b.handle(t, "POST /atomic-status", insertThen600, idempotencyhttp.Atomic())
	storeAll := idempotencyhttp.Classify(func(idempotencyhttp.Attempt) idempotencyhttp.Outcome { return idempotencyhttp.OutcomeStore })
	b.handle(t, "POST /atomic-status-stored", insertThen600, idempotencyhttp.Atomic(), storeAll)
	b.handle(t, "POST /binary", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write([]byte{0x00, 0xff, 'o', 'k', 0xfe})
	})
	b.handle(t, "POST /latin1-etag", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("ETag", "\"caf\xe9\"")
		w.WriteHeader(http.StatusCreated)
	})
	deep := func(levels int) string { return strings.Repeat("[", levels) + strings.Repeat("]", levels) }
	repeated := request{method: http.MethodPost, path: "/json", body: `{}`, organization: "org-1", header: http.Header{}}
	for range 1000 {
		repeated.header.Add("Idempotency-Key", "same")
	}

	rejected := []struct {
		name    string
		req     request
		status  int
		problem string
	}{
		{"JSON nested 10001 levels", post("/json", "deep", deep(10001)), http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest},
		{"JSON ending early", post("/json", "short", `{"item":`), http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest},
		{"JSON not UTF-8", post("/json", "latin1", "{\"item\":\"caf\xe9\"}"), http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest},
		{"key sent 1000 times", repeated, http.StatusBadRequest, idempotencyhttp.ProblemKeyInvalid},
		{"key not ASCII", post("/json", "caf\xe9", `{}`), http.StatusBadRequest, idempotencyhttp.ProblemKeyInvalid},
		{"key of 256 characters", post("/json", strings.Repeat("k", 256), `{}`), http.StatusBadRequest, idempotencyhttp.ProblemKeyInvalid},
		{"body of 10 MB", post("/json", "huge", strings.Repeat(" ", tenMB)), http.StatusRequestEntityTooLarge, idempotencyhttp.ProblemRequestTooLarge},
		{"organization not UTF-8", request{method: http.MethodPost, path: "/json", key: "k", body: `{}`, organization: "org\xff"}, http.StatusBadRequest, idempotencyhttp.ProblemInvalidRequest},
	}
	for _, c := range rejected {
		t.Run(c.name, func(t *testing.T) {
			before := b.rowCount(t)
			res := b.do(t, c.req)
			requireProblem(t, res, c.status, c.problem)
			require.Equal(t, before, b.rowCount(t))
		})
	}
	require.Zero(t, calls.Load())

	t.Run("JSON nested 10000 levels", func(t *testing.T) {
		res := b.do(t, post("/json", "deep-ok", deep(10000)))
		require.Equal(t, http.StatusCreated, res.status, "response: %s", res)
		require.Equal(t, "completed", b.record(t, "deep-ok").state)
	})

	t.Run("status outside range in lease mode", func(t *testing.T) {
		res := b.do(t, post("/status", "status", `{}`))
		require.Equal(t, 600, res.status)
		require.Equal(t, "outcome_unknown", b.record(t, "status").state)
		requireProblem(t, b.do(t, post("/status", "status", `{}`)), http.StatusConflict, idempotencyhttp.ProblemOutcomeUnknown)
	})

	t.Run("status outside range in atomic mode", func(t *testing.T) {
		var orders int
		before := b.rowCount(t)

		// The default classifier rolls every status from 500 up back, so
		// the handler's response is sent and nothing is stored.
		res := b.do(t, post("/atomic-status", "atomic-status", `{}`))
		require.Equal(t, 600, res.status)
		require.Equal(t, before, b.rowCount(t))
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM test_orders`).Scan(&orders))
		require.Zero(t, orders)

		// A classifier that stores it gets a rollback and a 500 instead,
		// because a record cannot hold the status.
		res = b.do(t, post("/atomic-status-stored", "atomic-status-stored", `{}`))
		requireProblem(t, res, http.StatusInternalServerError, idempotencyhttp.ProblemInternalError)
		require.Equal(t, before, b.rowCount(t))
		require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM test_orders`).Scan(&orders))
		require.Zero(t, orders)
	})

	t.Run("binary body stored losslessly", func(t *testing.T) {
		first := b.do(t, post("/binary", "binary", `{}`))
		replay := b.do(t, post("/binary", "binary", `{}`))
		require.Equal(t, []byte{0x00, 0xff, 'o', 'k', 0xfe}, first.body)
		require.True(t, replay.replayed())
		require.Equal(t, first.body, replay.body)
		require.Equal(t, first.body, b.record(t, "binary").body)
	})

	t.Run("header not UTF-8 not stored", func(t *testing.T) {
		first := b.do(t, post("/latin1-etag", "etag", `{}`))
		require.Equal(t, http.StatusCreated, first.status)
		require.Equal(t, "result_unavailable", b.record(t, "etag").state)
		requireProblem(t, b.do(t, post("/latin1-etag", "etag", `{}`)), http.StatusConflict, idempotencyhttp.ProblemResultUnavailable)
	})
}

func TestParseKeyBadHeaders(t *testing.T) {
	t.Parallel()

	repeated := make([]string, 1000)
	for i := range repeated {
		repeated[i] = "same"
	}
	cases := map[string][]string{
		"sent 1000 times": repeated,
		"10 MB bare":      {strings.Repeat("k", tenMB)},
		"10 MB quoted":    {`"` + strings.Repeat("k", tenMB) + `"`},
		"NUL":             {"a\x00b"},
		"not UTF-8":       {"a\xffb"},
	}
	for name, values := range cases {
		_, found, err := idempotencyhttp.ParseKey(http.Header{idempotencyhttp.HeaderName: values})
		require.True(t, found, name)
		requireInputError(t, err, "Idempotency-Key header")
		require.False(t, errors.Is(err, service.ErrUnavailable), name)
	}
}
