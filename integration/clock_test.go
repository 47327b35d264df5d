package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/dbgen"
	"github.com/pgguard/pgguard/internal/pgtest"
	"github.com/pgguard/pgguard/service"
)

// These tests leave Config.Now nil, as production does, so every decision
// takes the database clock.
func TestDatabaseClock(t *testing.T) {
	t.Parallel()

	t.Run("LockoutDecidesByDatabaseTime", func(t *testing.T) {
		t.Parallel()
		db := pgtest.New(t)
		lockout, err := service.NewLockout(db.Pool, passwordConfig(service.TierPolicy{MaxFailures: 1, LockDuration: time.Hour}))
		require.NoError(t, err)

		attempt, err := lockout.Begin(t.Context(), service.ChannelPassword, "clock@example.com", "192.0.2.1")
		require.NoError(t, err)
		result, err := attempt.Fail(t.Context())
		require.NoError(t, err)

		dbNow, err := dbgen.New(db.Pool).DatabaseNow(t.Context())
		require.NoError(t, err)
		require.WithinDuration(t, dbNow.Add(time.Hour), result.LockedUntil, time.Minute)

		statuses, err := lockout.AccountStatus(t.Context(), "clock@example.com")
		require.NoError(t, err)
		require.Len(t, statuses, 2)
		require.Equal(t, service.TierAccountSource, statuses[1].Tier)
		require.True(t, statuses[1].Locked())

		deleted, err := lockout.PurgeIdle(t.Context(), 24*time.Hour, 100)
		require.NoError(t, err)
		require.Equal(t, int64(0), deleted)
	})

	t.Run("IdempotencyDecidesByDatabaseTime", func(t *testing.T) {
		t.Parallel()
		db := pgtest.New(t)
		idempotency, err := service.NewIdempotency(db.Pool, service.IdempotencyConfig{})
		require.NoError(t, err)

		req := orderRequest("clock-key", "{}")
		claim, _, err := idempotency.Begin(t.Context(), req)
		require.NoError(t, err)
		require.NoError(t, claim.Complete(t.Context(), service.StoredResponse{Status: http.StatusOK, Body: []byte("ok")}))

		record, err := dbgen.New(db.Pool).IdempotencyRecordGet(t.Context(), dbgen.IdempotencyRecordGetParams{
			Scope: "org:org-1",
			Route: "POST /orders",
			Key:   "clock-key",
		})
		require.NoError(t, err)
		require.Equal(t, "completed", record.State)
		require.WithinDuration(t, record.DbNow.Add(24*time.Hour), record.ExpiresAt, time.Minute)
		require.Equal(t, service.Fingerprint("POST", "/orders", []byte("{}")), record.RequestHash)

		deleted, err := idempotency.PurgeExpired(t.Context(), 100)
		require.NoError(t, err)
		require.Equal(t, int64(0), deleted)
	})
}
