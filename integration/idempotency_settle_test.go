package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/dbgen"
	"github.com/pgguard/pgguard/service"
)

func TestIdempotencySettleWithoutResponse(t *testing.T) {
	t.Parallel()

	t.Run("OutcomeUnknownNeverRunsAgain", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})
		req := orderRequest("unknown", `{}`)
		req.AllowTakeover = true

		require.NoError(t, b.claim(t, req).MarkOutcomeUnknown(b.ctx))
		// Even a route that may run again, long after the lease, does not.
		b.clock.Advance(time.Hour)

		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrOutcomeUnknown)
		_, _, err = b.idempotency.Begin(b.ctx, orderRequest("unknown", `{"other":true}`))
		require.ErrorIs(t, err, service.ErrKeyReused)
	})

	t.Run("ResultUnavailableNeverRunsAgain", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})
		req := orderRequest("unavailable", `{}`)
		claim := b.claim(t, req)

		require.ErrorIs(t, claim.MarkResultUnavailable(b.ctx, 42), service.ErrInvalidInput)
		require.NoError(t, claim.MarkResultUnavailable(b.ctx, http.StatusOK))
		require.ErrorIs(t, claim.Release(b.ctx), service.ErrClaimSettled)

		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrResultUnavailable)
	})

	t.Run("LostLeaseCannotMarkNewOwner", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})
		req := orderRequest("lost", `{}`)
		req.AllowTakeover = true
		first := b.claim(t, req)
		b.clock.Advance(2 * time.Minute)
		second := b.claim(t, req)

		require.ErrorIs(t, first.MarkOutcomeUnknown(b.ctx), service.ErrLeaseLost)
		require.NoError(t, second.Complete(b.ctx, created(`{"from":"second"}`)))
		require.Equal(t, []byte(`{"from":"second"}`), b.replay(t, req).Body)
	})

	t.Run("CompleteOverLimitMarksUnavailable", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{MaxResponseBytes: 4})
		req := orderRequest("limit", `{}`)

		require.NoError(t, b.claim(t, req).Complete(b.ctx, service.StoredResponse{Status: http.StatusOK, Body: []byte("12345")}))

		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrResultUnavailable)
	})
}

func TestIdempotencyRequestOptions(t *testing.T) {
	t.Parallel()

	t.Run("LeasePerRequest", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})
		req := orderRequest("lease", `{}`)
		req.Lease = 5 * time.Second

		claim := b.claim(t, req)
		require.WithinDuration(t, b.clock.Now().Add(5*time.Second), claim.LeaseExpiresAt, 0)

		for _, lease := range []time.Duration{-time.Second, 2 * time.Hour} {
			req := orderRequest("invalid-lease", `{}`)
			req.Lease = lease
			_, _, err := b.idempotency.Begin(b.ctx, req)
			require.ErrorIs(t, err, service.ErrInvalidInput, "lease %s", lease)
		}
	})

	t.Run("PathValuesSeparateRecords", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})
		ticket := func(id string) service.Request {
			return service.Request{
				Key:            "same",
				Method:         http.MethodPut,
				Route:          "/tickets/{id}",
				PathValues:     map[string]string{"id": id},
				Body:           []byte(`{}`),
				OrganizationID: "org-1",
			}
		}

		require.NoError(t, b.claim(t, ticket("1")).Complete(b.ctx, created("one")))
		require.NoError(t, b.claim(t, ticket("2")).Complete(b.ctx, created("two")))

		require.Equal(t, []byte("one"), b.replay(t, ticket("1")).Body)
		require.Equal(t, []byte("two"), b.replay(t, ticket("2")).Body)
		require.NotEqual(t, ticket("1").Fingerprint(), ticket("2").Fingerprint())
	})

	t.Run("LongPathValuesHashed", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})
		long := make([]byte, 4096)
		for i := range long {
			long[i] = 'a' + byte(i%26)
		}
		req := service.Request{
			Key:            "long",
			Method:         http.MethodGet,
			Route:          "/files/{path...}",
			PathValues:     map[string]string{"path": string(long)},
			OrganizationID: "org-1",
		}

		require.NoError(t, b.claim(t, req).Complete(b.ctx, created("file")))
		require.Equal(t, []byte("file"), b.replay(t, req).Body)
	})
}

// A record stored by an earlier release, with a v1 fingerprint, still
// replays for the same request, so an upgrade does not turn retries into
// "key reused".
func TestIdempotencyV1FingerprintStillMatches(t *testing.T) {
	t.Parallel()
	b := setupIdempotency(t, service.IdempotencyConfig{})
	queries := dbgen.New(b.pool)
	req := orderRequest("old", `{"item":"book"}`)
	token := uuid.New()
	now := b.clock.Now()

	v1 := v1Fingerprint(req.Method, req.Route, req.Body)
	row, err := queries.IdempotencyRecordClaim(b.ctx, dbgen.IdempotencyRecordClaimParams{
		Now:         &now,
		Scope:       "org:org-1",
		Route:       "POST /orders",
		Key:         "old",
		RequestHash: v1,
		LockToken:   token.String(),
		LeaseMs:     60000,
		TtlMs:       86400000,
	})
	require.NoError(t, err)
	status := int32(http.StatusCreated)
	body := `{"id":1}`
	_, err = queries.IdempotencyRecordComplete(b.ctx, dbgen.IdempotencyRecordCompleteParams{
		Now:              &now,
		ID:               row.ID,
		LockToken:        uuid.NullUUID{UUID: token, Valid: true},
		ResponseStatus:   &status,
		ResponseHeaders:  []byte(`{}`),
		ResponseBodyJson: &body,
	})
	require.NoError(t, err)

	require.Equal(t, []byte(body), b.replay(t, req).Body)
	_, _, err = b.idempotency.Begin(b.ctx, orderRequest("old", `{"item":"pen"}`))
	require.ErrorIs(t, err, service.ErrKeyReused)
}

// The claim query returns a record it cannot take over from a plain
// select and calls the plpgsql function only to claim a key. Postgres
// counts function calls per transaction when track_functions is on.
func TestIdempotencyClaimQueryCallsFunctionOnlyToClaim(t *testing.T) {
	t.Parallel()
	b := setupIdempotency(t, service.IdempotencyConfig{})
	req := orderRequest("counted", `{"item":"book"}`)
	require.NoError(t, b.claim(t, req).Complete(b.ctx, created("done")))

	tx, err := b.pool.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(b.ctx) //nolint:errcheck // The transaction only reads statistics and claims a key that the rollback removes.
	_, err = tx.Exec(b.ctx, `SET LOCAL track_functions = 'pl'`)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" && os.Getenv("CI") == "" { // insufficient_privilege
		// CI runs as a superuser, so there the test fails instead.
		t.Skip("setting track_functions needs a superuser; run the tests as one to count the calls")
	}
	require.NoError(t, err)

	queries := dbgen.New(tx)
	now := b.clock.Now()
	params := dbgen.IdempotencyRecordClaimParams{
		Now:         &now,
		Scope:       "org:org-1",
		Route:       "POST /orders",
		Key:         req.Key,
		RequestHash: req.Fingerprint(),
		LockToken:   uuid.NewString(),
		LeaseMs:     60000,
		TtlMs:       86400000,
	}
	calls := func() int64 {
		t.Helper()
		var n *int64
		require.NoError(t, tx.QueryRow(b.ctx,
			`SELECT pg_stat_get_xact_function_calls('idempotency_record_claim'::regproc)`).Scan(&n))
		if n == nil {
			return 0
		}
		return *n
	}

	row, err := queries.IdempotencyRecordClaim(b.ctx, params)
	require.NoError(t, err)
	require.Equal(t, "completed", row.State)
	require.Equal(t, int64(0), calls())

	params.Key = "new"
	row, err = queries.IdempotencyRecordClaim(b.ctx, params)
	require.NoError(t, err)
	require.Equal(t, "in_progress", row.State)
	require.Equal(t, params.LockToken, row.LockToken.UUID.String())
	require.Equal(t, int64(1), calls())
}

// v1Fingerprint computes a fingerprint the way pgguard's first release
// did: "v1:" and the hex SHA-256 of method, NUL, route, NUL, body.
func v1Fingerprint(method, route string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(method + "\x00" + route + "\x00"))
	h.Write(body)
	return "v1:" + hex.EncodeToString(h.Sum(nil))
}
