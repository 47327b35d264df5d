package service

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors. Match them with errors.Is; the typed errors below carry
// the details and match the corresponding sentinel.
var (
	// ErrLocked means the key may not attempt a login now. The error is a
	// *LockedError with the time to wait.
	ErrLocked = errors.New("pgguard: too many failed attempts")

	// ErrInvalidInput means an argument was rejected before anything was
	// stored. The error is an *InputError naming the argument.
	ErrInvalidInput = errors.New("pgguard: invalid input")

	// ErrInvalidConfig means a Config field is out of range.
	ErrInvalidConfig = errors.New("pgguard: invalid configuration")

	// ErrUnavailable means the database could not be reached or did not
	// respond in time. The operation may be retried. A login refused this
	// way should get a 503 response; see LockoutConfig.FailOpen.
	ErrUnavailable = errors.New("pgguard: database unavailable")

	// ErrAlreadySettled means Succeed or Fail was called a second time on
	// the same attempt.
	ErrAlreadySettled = errors.New("pgguard: attempt already settled")

	// ErrInFlight means another request with the same key still holds the
	// claim. The error is an *InFlightError with the time to wait.
	ErrInFlight = errors.New("pgguard: a request with this idempotency key is in progress")

	// ErrKeyReused means the key was used before with a different request:
	// another method, route or body.
	ErrKeyReused = errors.New("pgguard: idempotency key reused with a different request")

	// ErrOutcomeUnknown means an earlier request with this key lost its lease
	// without storing a response, and the route is not declared safe to run
	// again, so pgguard cannot tell whether it took effect.
	ErrOutcomeUnknown = errors.New("pgguard: outcome of an earlier request with this idempotency key is unknown")

	// ErrLeaseLost means a claim can no longer be completed or released:
	// its lease expired and another request took the key over, or the
	// record was purged.
	ErrLeaseLost = errors.New("pgguard: idempotency claim lost")

	// ErrClaimSettled means Complete or Release was called a second time on
	// the same claim.
	ErrClaimSettled = errors.New("pgguard: idempotency claim already completed or released")
)

// LockedError reports an attempt rejected by [Lockout.Begin]. Nothing was
// counted for it.
type LockedError struct {
	// Tier names the counter that rejected the attempt. Log it, but do not
	// send it to the client, because the response should not reveal which
	// limit was reached.
	Tier Tier
	// RetryAfter is how long until the key may try again, by the database
	// clock, rounded up to whole seconds and at least one second.
	RetryAfter time.Duration
	// Until is when the lock ends, by the database clock. It is the zero
	// time for a hard lock, which only an explicit unlock ends.
	Until time.Time
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("pgguard: too many failed attempts, retry after %s", e.RetryAfter)
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// InFlightError reports a key whose first request is still running.
type InFlightError struct {
	// RetryAfter is the time left on the running request's lease, rounded
	// down to whole seconds, so it never ends after the lease, but at least
	// one second.
	RetryAfter time.Duration
}

func (e *InFlightError) Error() string {
	return fmt.Sprintf("pgguard: a request with this idempotency key is in progress, retry after %s", e.RetryAfter)
}

// Is makes errors.Is(err, ErrInFlight) true.
func (e *InFlightError) Is(target error) bool { return target == ErrInFlight }

// InputError reports an argument rejected before anything was stored. The
// message names the argument and the problem but never echoes a secret.
type InputError struct {
	// Field names the argument, for example "email" or "idempotency key".
	Field string
	// Problem says what is wrong and how to fix it.
	Problem string
}

func (e *InputError) Error() string {
	return fmt.Sprintf("pgguard: invalid %s: %s", e.Field, e.Problem)
}

// Is makes errors.Is(err, ErrInvalidInput) true.
func (e *InputError) Is(target error) bool { return target == ErrInvalidInput }

// unavailable wraps a database error in ErrUnavailable when it comes from
// the connection rather than from the statement: the server cannot be
// reached, is shutting down, has no free connection, or cancelled the
// statement for a timeout. Other errors are returned as they are.
func unavailable(action string, err error) error {
	if isUnavailable(err) {
		return fmt.Errorf("%w: failed to %s: %w", ErrUnavailable, action, err)
	}
	return fmt.Errorf("pgguard: failed to %s: %w", action, err)
}

func isUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			pgErr.Code == "57P01", // admin_shutdown
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now
			pgErr.Code == "53300", // too_many_connections
			pgErr.Code == "57014": // query_canceled, as by statement_timeout
			return true
		}
		return false
	}

	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) ||
		errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		pgconn.Timeout(err) ||
		pgconn.SafeToRetry(err)
}

// settleNotApplied reports whether a failed settle statement certainly
// changed nothing, so that calling it again cannot apply it twice: pgx sent
// nothing, or the server reported an error, which rolled the statement back.
// After a connection lost mid-call the outcome is unknown.
func settleNotApplied(err error) bool {
	var pgErr *pgconn.PgError
	return pgconn.SafeToRetry(err) || errors.As(err, &pgErr)
}

func invalidInput(field, problem string) error {
	return &InputError{Field: field, Problem: problem}
}

func invalidConfig(field string, format string, args ...any) error {
	return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
}

// retryAfter rounds a wait up to whole seconds, the unit of the HTTP
// Retry-After header, so a client that waits that long is never early.
func retryAfter(d time.Duration) time.Duration {
	if d < time.Second {
		return time.Second
	}
	rounded := d.Truncate(time.Second)
	if rounded < d {
		rounded += time.Second
	}
	return rounded
}
