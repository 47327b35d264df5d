package integration

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

type idempotencyBundle struct {
	ctx         context.Context
	pool        *pgxpool.Pool
	clock       *testClock
	idempotency *service.Idempotency
}

func setupIdempotency(t *testing.T, config service.IdempotencyConfig) *idempotencyBundle {
	t.Helper()

	db := pgtest.New(t)
	clock := newTestClock()
	config.Now = clock.Now
	idempotency, err := service.NewIdempotency(db.Pool, config)
	require.NoError(t, err)

	return &idempotencyBundle{ctx: t.Context(), pool: db.Pool, clock: clock, idempotency: idempotency}
}

func (b *idempotencyBundle) claim(t *testing.T, req service.Request) *service.Claim {
	t.Helper()

	claim, stored, err := b.idempotency.Begin(b.ctx, req)
	require.NoError(t, err)
	require.Nil(t, stored)
	require.NotNil(t, claim)
	return claim
}

func (b *idempotencyBundle) replay(t *testing.T, req service.Request) *service.StoredResponse {
	t.Helper()

	claim, stored, err := b.idempotency.Begin(b.ctx, req)
	require.NoError(t, err)
	require.Nil(t, claim)
	require.NotNil(t, stored)
	return stored
}

func (b *idempotencyBundle) rowCount(t *testing.T) int {
	t.Helper()

	var count int
	require.NoError(t, b.pool.QueryRow(b.ctx, "SELECT count(*) FROM idempotency_records").Scan(&count))
	return count
}

func orderRequest(key, body string) service.Request {
	return service.Request{
		Key:            key,
		Method:         http.MethodPost,
		Route:          "/orders",
		Body:           []byte(body),
		OrganizationID: "org-1",
	}
}

func created(body string) service.StoredResponse {
	return service.StoredResponse{
		Status: http.StatusCreated,
		Header: http.Header{
			"Content-Type": {"application/vnd.example+json"},
			"Location":     {"/orders/42"},
			"Etag":         {`"v1"`},
			"Set-Cookie":   {"session=secret"},
			"X-Request-Id": {"abc"},
		},
		Body: []byte(body),
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()

	t.Run("ReplaysStoredResponse", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		req := orderRequest("key-1", `{"item":"book","quantity":1}`)
		claim := b.claim(t, req)
		require.WithinDuration(t, b.clock.Now().Add(time.Minute), claim.LeaseExpiresAt, 0)
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":42}`)))
		require.ErrorIs(t, claim.Complete(b.ctx, created(`{"id":42}`)), service.ErrClaimSettled)

		stored := b.replay(t, req)
		require.Equal(t, http.StatusCreated, stored.Status)
		require.Equal(t, []byte(`{"id":42}`), stored.Body)
		require.Equal(t, http.Header{
			"Content-Type": {"application/vnd.example+json"},
			"Location":     {"/orders/42"},
			"Etag":         {`"v1"`},
		}, stored.Header)
	})

	t.Run("StoresBinaryBodyLosslessly", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		body := []byte{0x00, 0xff, 0xfe, 'o', 'k', 0x00}
		req := orderRequest("key-bin", "{}")
		require.NoError(t, b.claim(t, req).Complete(b.ctx, service.StoredResponse{Status: 200, Body: body}))

		require.Equal(t, body, b.replay(t, req).Body)
	})

	t.Run("RejectsReusedKeyWithOtherBody", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		require.NoError(t, b.claim(t, orderRequest("key-2", `{"amount":100}`)).Complete(b.ctx, created(`{"id":1}`)))

		_, _, err := b.idempotency.Begin(b.ctx, orderRequest("key-2", `{"amount":999}`))
		require.ErrorIs(t, err, service.ErrKeyReused)
		require.Equal(t, []byte(`{"id":1}`), b.replay(t, orderRequest("key-2", `{"amount":100}`)).Body)
	})

	t.Run("InFlightUntilLeaseEnds", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		req := orderRequest("key-3", "{}")
		b.claim(t, req)
		b.clock.Advance(45 * time.Second)

		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrInFlight)
		var inFlight *service.InFlightError
		require.ErrorAs(t, err, &inFlight)
		require.Equal(t, 15*time.Second, inFlight.RetryAfter)

		_, _, err = b.idempotency.Begin(b.ctx, orderRequest("key-3", `{"other":true}`))
		require.ErrorIs(t, err, service.ErrKeyReused)
	})

	t.Run("ExpiredLeaseTakenOverOnlyWhenAllowed", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		req := orderRequest("key-4", "{}")
		b.claim(t, req)
		b.clock.Advance(time.Minute)

		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrOutcomeUnknown)

		req.AllowTakeover = true
		b.claim(t, req)
	})

	t.Run("LostLeaseCannotOverwriteNewOwner", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		req := orderRequest("key-5", "{}")
		req.AllowTakeover = true
		first := b.claim(t, req)
		b.clock.Advance(2 * time.Minute)
		second := b.claim(t, req)

		require.ErrorIs(t, first.Complete(b.ctx, created(`{"from":"first"}`)), service.ErrLeaseLost)
		require.NoError(t, second.Complete(b.ctx, created(`{"from":"second"}`)))
		require.Equal(t, []byte(`{"from":"second"}`), b.replay(t, req).Body)
	})

	t.Run("ReleaseLetsRetryRun", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		req := orderRequest("key-6", `{"quantity":0}`)
		require.NoError(t, b.claim(t, req).Release(b.ctx))
		require.Equal(t, 0, b.rowCount(t))

		corrected := orderRequest("key-6", `{"quantity":1}`)
		require.NoError(t, b.claim(t, corrected).Complete(b.ctx, created(`{"id":6}`)))
	})

	t.Run("ExpiredRecordReplacedByNewClaim", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})

		req := orderRequest("key-7", "{}")
		require.NoError(t, b.claim(t, req).Complete(b.ctx, created(`{"id":7}`)))
		b.clock.Advance(time.Hour + time.Second)

		claim := b.claim(t, orderRequest("key-7", `{"different":true}`))
		require.NoError(t, claim.Complete(b.ctx, created(`{"id":8}`)))
		require.Equal(t, 1, b.rowCount(t))
	})

	t.Run("ScopesAreIndependent", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		requests := []service.Request{
			{Key: "same", Method: "POST", Route: "/orders", Body: []byte("{}"), OrganizationID: "org-a"},
			{Key: "same", Method: "POST", Route: "/orders", Body: []byte("{}"), OrganizationID: "org-b"},
			{Key: "same", Method: "POST", Route: "/refunds", Body: []byte("{}"), OrganizationID: "org-a"},
			{Key: "same", Method: "PUT", Route: "/orders", Body: []byte("{}"), OrganizationID: "org-a"},
			{Key: "same", Method: "POST", Route: "/orders", Body: []byte("{}"), Principal: "user-1"},
			{Key: "same", Method: "POST", Route: "/orders", Body: []byte("{}"), ClientIP: "192.0.2.1"},
			{Key: "same", Method: "POST", Route: "/orders", Body: []byte("{}"), ClientIP: "192.0.2.2"},
		}
		for i, req := range requests {
			response := service.StoredResponse{Status: 200, Body: []byte{byte('a' + i)}}
			require.NoError(t, b.claim(t, req).Complete(b.ctx, response))
		}
		for i, req := range requests {
			require.Equal(t, []byte{byte('a' + i)}, b.replay(t, req).Body)
		}
		require.Equal(t, len(requests), b.rowCount(t))
	})

	t.Run("InvalidInputStoresNothing", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		valid := orderRequest("key", "{}")
		cases := map[string]func(*service.Request){
			"empty key":         func(r *service.Request) { r.Key = "" },
			"long key":          func(r *service.Request) { r.Key = string(make([]rune, 256)) },
			"control in key":    func(r *service.Request) { r.Key = "a\nb" },
			"invalid utf-8 key": func(r *service.Request) { r.Key = "a\xffb" },
			"empty route":       func(r *service.Request) { r.Route = "" },
			"empty method":      func(r *service.Request) { r.Method = "" },
			"no scope":          func(r *service.Request) { r.OrganizationID = "" },
			"bad client ip":     func(r *service.Request) { r.OrganizationID, r.ClientIP = "", "nope" },
		}
		for name, mutate := range cases {
			req := valid
			mutate(&req)
			_, _, err := b.idempotency.Begin(b.ctx, req)
			require.ErrorIs(t, err, service.ErrInvalidInput, name)
		}
		require.Equal(t, 0, b.rowCount(t))

		claim := b.claim(t, valid)
		require.ErrorIs(t, claim.Complete(b.ctx, service.StoredResponse{Status: 600}), service.ErrInvalidInput)
		require.NoError(t, claim.Complete(b.ctx, service.StoredResponse{Status: 204}))
	})

	t.Run("PurgeExpiredInBatches", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})

		for _, key := range []string{"a", "b", "c", "d", "e"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
		}
		b.clock.Advance(time.Hour)
		b.claim(t, orderRequest("fresh", "{}"))

		deleted, err := b.idempotency.PurgeExpired(b.ctx, 2)
		require.NoError(t, err)
		require.Equal(t, int64(5), deleted)
		require.Equal(t, 1, b.rowCount(t))
	})

	// Each batch starts at the last expires_at the previous one deleted.
	// Batches end between records that expire at different times, and
	// every expired record is deleted while the live one stays.
	t.Run("PurgeExpiredContinuesAcrossBatches", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})

		for _, key := range []string{"a", "b", "c", "d", "e", "f", "g"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
			b.clock.Advance(time.Minute)
		}
		b.clock.Advance(time.Hour)
		b.claim(t, orderRequest("fresh", "{}"))

		deleted, err := b.idempotency.PurgeExpired(b.ctx, 3)
		require.NoError(t, err)
		require.Equal(t, int64(7), deleted)
		require.Equal(t, 1, b.rowCount(t))
		b.requireInFlight(t, orderRequest("fresh", "{}"))
	})

	// A record that a transaction holds locked is skipped, so the purge
	// does not wait for it, and the next purge deletes it.
	t.Run("PurgeExpiredLeavesLockedRecordForNextPurge", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})

		for _, key := range []string{"a", "b", "c", "d", "e"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
			b.clock.Advance(time.Minute)
		}
		b.clock.Advance(time.Hour)

		tx, err := b.pool.Begin(b.ctx)
		require.NoError(t, err)
		defer tx.Rollback(b.ctx) //nolint:errcheck // After Commit it only returns ErrTxClosed.
		_, err = tx.Exec(b.ctx, `SELECT 1 FROM idempotency_records WHERE key = 'b' FOR UPDATE`)
		require.NoError(t, err)

		deleted, err := b.idempotency.PurgeExpired(b.ctx, 2)
		require.NoError(t, err)
		require.Equal(t, int64(4), deleted)
		require.Equal(t, 1, b.rowCount(t))

		require.NoError(t, tx.Commit(b.ctx))
		deleted, err = b.idempotency.PurgeExpired(b.ctx, 2)
		require.NoError(t, err)
		require.Equal(t, int64(1), deleted)
		require.Equal(t, 0, b.rowCount(t))
	})
}

func TestIdempotencyConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	b := setupIdempotency(t, service.IdempotencyConfig{})

	type outcome struct {
		claim *service.Claim
		err   error
	}
	req := orderRequest("dup", `{"item":"book"}`)
	outcomes := make(chan outcome, 100)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			claim, _, err := b.idempotency.Begin(b.ctx, req)
			outcomes <- outcome{claim: claim, err: err}
		})
	}
	wg.Wait()
	close(outcomes)

	var claims []*service.Claim
	for o := range outcomes {
		if o.claim != nil {
			claims = append(claims, o.claim)
			continue
		}
		require.True(t, errors.Is(o.err, service.ErrInFlight), "unexpected outcome: %v", o.err)
	}
	require.Len(t, claims, 1)
	require.NoError(t, claims[0].Complete(b.ctx, created(`{"id":1}`)))
	require.Equal(t, 1, b.rowCount(t))
}

func TestIdempotencyConfigValidation(t *testing.T) {
	t.Parallel()

	cases := map[string]service.IdempotencyConfig{
		"LeaseDuration": {LeaseDuration: -time.Second},
		"RecordTTL":     {LeaseDuration: time.Hour, RecordTTL: time.Minute},
		"ReplayHeaders": {ReplayHeaders: []string{"Bad Header"}},
	}
	for field, config := range cases {
		_, err := service.NewIdempotency(nil, config)
		require.ErrorIs(t, err, service.ErrInvalidConfig, field)
		require.ErrorContains(t, err, field)
	}
}
