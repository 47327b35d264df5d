package integration

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/dbgen"
	"github.com/pgguard/pgguard/service"
)

// doResult is what one Idempotency.Do call returned.
type doResult struct {
	response service.StoredResponse
	replayed bool
	err      error
}

// setupAtomic returns an idempotency bundle with a test_orders table that
// Do's functions write to.
func setupAtomic(t *testing.T, config service.IdempotencyConfig) *idempotencyBundle {
	t.Helper()

	b := setupIdempotency(t, config)
	_, err := b.pool.Exec(b.ctx, `CREATE TABLE test_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL)`)
	require.NoError(t, err)
	return b
}

func (b *idempotencyBundle) orderCount(t *testing.T) int {
	t.Helper()

	var count int
	require.NoError(t, b.pool.QueryRow(b.ctx, `SELECT count(*) FROM test_orders`).Scan(&count))
	return count
}

// waitForLockWaiter waits until a session of the test database waits for a
// lock, which is how a concurrent Do waits for the first transaction.
func (b *idempotencyBundle) waitForLockWaiter(t *testing.T) {
	t.Helper()

	require.Eventually(t, func() bool {
		var waiting int
		err := b.pool.QueryRow(b.ctx, `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`,
		).Scan(&waiting)
		return err == nil && waiting > 0
	}, 10*time.Second, 10*time.Millisecond, "the second Do never waited for the first")
}

// insertOrder is a Do function that inserts an order and answers 201.
func insertOrder(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO test_orders (item) VALUES ('book')`); err != nil {
		return service.StoredResponse{}, err
	}
	return service.StoredResponse{Status: http.StatusCreated, Body: []byte(`{"created":true}`)}, nil
}

func TestIdempotencyDo(t *testing.T) {
	t.Parallel()

	t.Run("CommitsWritesAndResponseTogether", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		req := orderRequest("atomic", `{"item":"book"}`)

		response, replayed, err := b.idempotency.Do(b.ctx, req, insertOrder)
		require.NoError(t, err)
		require.False(t, replayed)
		require.Equal(t, http.StatusCreated, response.Status)

		var calls atomic.Int64
		again, replayed, err := b.idempotency.Do(b.ctx, req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			calls.Add(1)
			return insertOrder(ctx, tx)
		})
		require.NoError(t, err)
		require.True(t, replayed)
		require.Equal(t, []byte(`{"created":true}`), again.Body)
		require.Zero(t, calls.Load())
		require.Equal(t, 1, b.orderCount(t))
		require.Equal(t, 1, b.rowCount(t))
	})

	t.Run("ErrorRollsEverythingBack", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		req := orderRequest("atomic", `{"item":"book"}`)
		errPayment := errors.New("payment declined")

		_, _, err := b.idempotency.Do(b.ctx, req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
			if _, err := insertOrder(ctx, tx); err != nil {
				return service.StoredResponse{}, err
			}
			return service.StoredResponse{}, errPayment
		})

		require.ErrorIs(t, err, errPayment)
		require.Equal(t, 0, b.orderCount(t))
		require.Equal(t, 0, b.rowCount(t))

		_, replayed, err := b.idempotency.Do(b.ctx, req, insertOrder)
		require.NoError(t, err)
		require.False(t, replayed, "a retry after a rollback runs again")
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("PanicRollsEverythingBack", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})

		require.PanicsWithValue(t, "handler bug", func() {
			_, _, _ = b.idempotency.Do(b.ctx, orderRequest("atomic", `{}`), func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
				if _, err := insertOrder(ctx, tx); err != nil {
					return service.StoredResponse{}, err
				}
				panic("handler bug")
			})
		})

		require.Equal(t, 0, b.orderCount(t))
		require.Equal(t, 0, b.rowCount(t))
	})

	t.Run("ConcurrentDuplicateWaitsThenReplays", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		req := orderRequest("atomic", `{"item":"book"}`)
		firstStarted := make(chan struct{})
		releaseFirst := make(chan struct{})

		firstDone := make(chan doResult, 1)
		go func() {
			response, replayed, err := b.idempotency.Do(b.ctx, req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
				close(firstStarted)
				<-releaseFirst
				return insertOrder(ctx, tx)
			})
			firstDone <- doResult{response, replayed, err}
		}()
		<-firstStarted

		var secondCalls atomic.Int64
		secondDone := make(chan doResult, 1)
		go func() {
			response, replayed, err := b.idempotency.Do(b.ctx, req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
				secondCalls.Add(1)
				return insertOrder(ctx, tx)
			})
			secondDone <- doResult{response, replayed, err}
		}()
		b.waitForLockWaiter(t)
		close(releaseFirst)

		first := <-firstDone
		second := <-secondDone
		require.NoError(t, first.err)
		require.False(t, first.replayed)
		require.NoError(t, second.err)
		require.True(t, second.replayed)
		require.Equal(t, first.response.Body, second.response.Body)
		require.Zero(t, secondCalls.Load())
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("WaiterRunsAfterFirstRollsBack", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		req := orderRequest("atomic", `{"item":"book"}`)
		errFirst := errors.New("first attempt failed")
		firstStarted := make(chan struct{})
		releaseFirst := make(chan struct{})

		firstDone := make(chan doResult, 1)
		go func() {
			_, _, err := b.idempotency.Do(b.ctx, req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
				if _, err := insertOrder(ctx, tx); err != nil {
					return service.StoredResponse{}, err
				}
				close(firstStarted)
				<-releaseFirst
				return service.StoredResponse{}, errFirst
			})
			firstDone <- doResult{err: err}
		}()
		<-firstStarted

		secondDone := make(chan doResult, 1)
		go func() {
			response, replayed, err := b.idempotency.Do(b.ctx, req, insertOrder)
			secondDone <- doResult{response, replayed, err}
		}()
		b.waitForLockWaiter(t)
		close(releaseFirst)

		require.ErrorIs(t, (<-firstDone).err, errFirst)
		second := <-secondDone
		require.NoError(t, second.err)
		require.False(t, second.replayed)
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("LeaseClaimIsInFlight", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		req := orderRequest("mixed", `{}`)
		b.claim(t, req)

		_, _, err := b.idempotency.Do(b.ctx, req, insertOrder)

		require.ErrorIs(t, err, service.ErrInFlight)
		require.Equal(t, 0, b.orderCount(t))
	})

	t.Run("ReusedKeyRejected", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		_, _, err := b.idempotency.Do(b.ctx, orderRequest("reused", `{"amount":100}`), insertOrder)
		require.NoError(t, err)

		_, _, err = b.idempotency.Do(b.ctx, orderRequest("reused", `{"amount":999}`), insertOrder)

		require.ErrorIs(t, err, service.ErrKeyReused)
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("LargeResponseCommitsWithoutStoringIt", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{MaxResponseBytes: 8})
		req := orderRequest("large", `{}`)

		response, _, err := b.idempotency.Do(b.ctx, req, insertOrder)
		require.NoError(t, err)
		require.Equal(t, []byte(`{"created":true}`), response.Body)

		_, _, err = b.idempotency.Do(b.ctx, req, insertOrder)
		require.ErrorIs(t, err, service.ErrResultUnavailable)
		require.Equal(t, 1, b.orderCount(t))
	})

	t.Run("NeedsTxBeginner", func(t *testing.T) {
		t.Parallel()
		b := setupAtomic(t, service.IdempotencyConfig{})
		// Only the DBTX methods, so the pool's Begin is hidden.
		var db dbgen.DBTX = struct{ dbgen.DBTX }{b.pool}
		idempotency, err := service.NewIdempotency(db, service.IdempotencyConfig{})
		require.NoError(t, err)

		_, _, err = idempotency.Do(b.ctx, orderRequest("k", `{}`), insertOrder)

		require.ErrorIs(t, err, service.ErrInvalidConfig)
	})
}
