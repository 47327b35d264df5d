package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
)

// TxBeginner starts a database transaction. *pgxpool.Pool and *pgx.Conn
// implement it, and so does pgx.Tx, whose Begin starts a savepoint.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Do runs fn at most once per key, in one transaction that also claims the
// key and stores fn's response: the claim, fn's writes through tx and the
// stored response commit together or not at all. Use it when all the
// request's side effects live in this database; [Idempotency.Begin] is for
// everything else.
//
// It returns fn's response with replayed false, or a stored response with
// replayed true:
//   - A new key runs fn. When fn returns an error, the transaction rolls
//     back, nothing is stored, and Do returns that error unchanged, so a
//     retry runs fn again. A panic in fn rolls back too.
//   - A concurrent request with the same key waits until the first
//     transaction ends, because the claim waits on the unique index. After
//     a commit it returns the stored response; after a rollback it runs fn
//     itself. Bound the wait with ctx.
//   - A completed key returns its stored response; otherwise Do returns the
//     errors of Begin.
//
// A response that [Claim.Complete] would not store, such as one longer
// than MaxResponseBytes, commits fn's writes but is not stored. A status
// outside 100..599 returns an *InputError and rolls back.
//
// When one of Do's own statements fails because the database is
// unavailable, Do returns an error matching [ErrUnavailable] (fn's errors
// stay unchanged). A retry with the same key is safe: the transaction
// either rolled back, so the retry runs fn again, or, when the connection
// was lost during COMMIT, it may have committed, so the retry replays fn's
// response.
//
// Do expects the database's default READ COMMITTED isolation. Under
// REPEATABLE READ or SERIALIZABLE, a concurrent duplicate fails with a
// serialization error, which Do returns as an *InFlightError. NewIdempotency's db must implement [TxBeginner], or Do
// returns an error wrapping [ErrInvalidConfig].
func (s *Idempotency) Do(
	ctx context.Context,
	req Request,
	fn func(ctx context.Context, tx pgx.Tx) (StoredResponse, error),
) (response StoredResponse, replayed bool, err error) {
	if s.beginner == nil {
		return StoredResponse{}, false, fmt.Errorf("%w: Do needs a database that can begin transactions, such as *pgxpool.Pool", ErrInvalidConfig)
	}
	params, lockToken, err := s.claimParams(req)
	if err != nil {
		return StoredResponse{}, false, err
	}

	tx, err := s.beginner.Begin(ctx)
	if err != nil {
		return StoredResponse{}, false, unavailable("begin the idempotent transaction", err)
	}
	// After a commit Rollback returns pgx.ErrTxClosed and does nothing.
	defer s.rollback(ctx, tx)
	queries := s.queries.WithTx(tx)

	row, err := queries.IdempotencyRecordClaim(ctx, params)
	if err != nil {
		return StoredResponse{}, false, claimError(err)
	}
	if !ownsRecord(row, lockToken) {
		// The claim may have locked the record; the deferred rollback
		// releases it.
		stored, err := s.existingRecord(row, params.RequestHash, req)
		if err != nil {
			return StoredResponse{}, false, err
		}
		return *stored, true, nil
	}

	response, err = fn(ctx, tx)
	if err != nil {
		return StoredResponse{}, false, err
	}
	if err := validateStatus(response.Status); err != nil {
		return StoredResponse{}, false, err
	}
	if err := s.complete(ctx, queries, row.ID, lockToken, response); err != nil {
		return StoredResponse{}, false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return StoredResponse{}, false, unavailable("commit the idempotent transaction", err)
	}
	return response, false, nil
}

// rollback ends tx unless it was committed. A failed rollback closes the
// connection, so there is nothing to do but log it.
func (s *Idempotency) rollback(ctx context.Context, tx pgx.Tx) {
	err := tx.Rollback(context.WithoutCancel(ctx))
	if err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		s.config.Logger.LogAttrs(ctx, slog.LevelWarn, "pgguard: failed to roll back the idempotent transaction",
			slog.Any("error", err))
	}
}
