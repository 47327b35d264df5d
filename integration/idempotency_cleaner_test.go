package integration

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

func TestIdempotencyCleaner(t *testing.T) {
	t.Parallel()

	t.Run("RunPurgesUntilCanceled", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})
		for _, key := range []string{"a", "b", "c"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
		}
		b.clock.Advance(time.Hour)
		b.claim(t, orderRequest("fresh", "{}"))
		cleaner, err := service.NewIdempotencyCleaner(b.idempotency, service.IdempotencyCleanerConfig{
			Interval:  10 * time.Millisecond,
			BatchSize: 2,
		})
		require.NoError(t, err)

		ctx, cancel := context.WithCancel(b.ctx)
		stopped := make(chan error, 1)
		go func() { stopped <- cleaner.Run(ctx) }()

		require.Eventually(t, func() bool { return b.rowCount(t) == 1 }, 10*time.Second, 10*time.Millisecond)
		cancel()
		require.NoError(t, <-stopped)
		b.requireInFlight(t, orderRequest("fresh", "{}"))
	})

	t.Run("PurgeOncePausesBetweenBatches", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{RecordTTL: time.Hour})
		for _, key := range []string{"a", "b", "c", "d", "e"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
		}
		b.clock.Advance(time.Hour)
		cleaner, err := service.NewIdempotencyCleaner(b.idempotency, service.IdempotencyCleanerConfig{BatchSize: 2})
		require.NoError(t, err)
		require.Equal(t, 10*time.Millisecond, cleaner.Config().BatchPause)

		deleted, err := cleaner.PurgeOnce(b.ctx)
		require.NoError(t, err)
		require.Equal(t, int64(5), deleted)
		require.Zero(t, b.rowCount(t))

		// A context that ends during a pause stops the pass there.
		for _, key := range []string{"f", "g", "h"} {
			require.NoError(t, b.claim(t, orderRequest(key, "{}")).Complete(b.ctx, created("{}")))
		}
		b.clock.Advance(time.Hour)
		slow, err := service.NewIdempotencyCleaner(b.idempotency, service.IdempotencyCleanerConfig{
			Interval:   2 * time.Hour,
			BatchSize:  2,
			BatchPause: time.Hour,
		})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(b.ctx, 200*time.Millisecond)
		defer cancel()
		deleted, err = slow.PurgeOnce(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, service.ErrUnavailable, "the database did nothing wrong")
		require.Equal(t, int64(2), deleted)
		require.Equal(t, 1, b.rowCount(t))
	})

	t.Run("ConfigValidation", func(t *testing.T) {
		t.Parallel()
		b := setupIdempotency(t, service.IdempotencyConfig{})

		cases := map[string]service.IdempotencyCleanerConfig{
			"Interval":   {Interval: -time.Second},
			"BatchSize":  {BatchSize: -1},
			"BatchPause": {BatchPause: 2 * time.Minute},
		}
		for field, config := range cases {
			_, err := service.NewIdempotencyCleaner(b.idempotency, config)
			require.ErrorIs(t, err, service.ErrInvalidConfig, field)
			require.ErrorContains(t, err, field)
		}

		_, err := service.NewIdempotencyCleaner(nil, service.IdempotencyCleanerConfig{})
		require.ErrorIs(t, err, service.ErrInvalidConfig)
		require.ErrorContains(t, err, "NewIdempotency")
	})
}

// requireInFlight checks that req's record exists and is in progress.
func (b *idempotencyBundle) requireInFlight(t *testing.T, req service.Request) {
	t.Helper()

	_, _, err := b.idempotency.Begin(b.ctx, req)
	require.ErrorIs(t, err, service.ErrInFlight)
}
