package idempotencyhttp

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Outcome is the action the middleware takes on a claimed key after the
// handler returns.
type Outcome int

const (
	// OutcomeStore stores the response and replays it to every retry. In
	// atomic mode it commits the handler's transaction.
	OutcomeStore Outcome = iota + 1

	// OutcomeRelease deletes the claim, so a retry with the same key runs
	// the handler again. Use it when the handler changed nothing, for
	// example when it rejected invalid input. In atomic mode it rolls the
	// handler's transaction back.
	OutcomeRelease

	// OutcomeUnknown keeps the key without a response: retries get a 409
	// "outcome unknown" problem and never run the handler again, until the
	// record expires. Use it when the handler failed after it may have
	// changed something. In atomic mode, where a rollback undoes every
	// change, it rolls back like OutcomeRelease.
	OutcomeUnknown
)

func (o Outcome) String() string {
	switch o {
	case OutcomeStore:
		return "store"
	case OutcomeRelease:
		return "release"
	case OutcomeUnknown:
		return "unknown"
	}
	return "invalid"
}

// Attempt describes how a handler ended, for a classifier that chooses its
// [Outcome].
type Attempt struct {
	// Status is the status the handler wrote, or 200 when it wrote none.
	Status int
	// Wrote is false when the handler returned without calling WriteHeader
	// or Write.
	Wrote bool
	// Panicked is true when the handler panicked. The middleware re-panics
	// with the same value after it settled the key. Atomic mode never
	// classifies a panic: the transaction rolls back.
	Panicked bool
	// Canceled is true when the request's context ended before the handler
	// returned, usually because the client disconnected.
	Canceled bool
	// Atomic is true on a route in atomic mode.
	Atomic bool
}

// DefaultClassify is the classifier of routes without [Classify]:
//
//	handler ended with                      lease mode       atomic mode
//	a panic                                 OutcomeUnknown   (rolls back)
//	no response, request context ended      OutcomeUnknown   OutcomeRelease
//	2xx or 3xx                              OutcomeStore     OutcomeStore
//	4xx                                     OutcomeRelease   OutcomeRelease
//	5xx                                     OutcomeStore     OutcomeRelease
//
// A 4xx is taken to mean that the handler rejected the request before it
// changed anything, so a corrected retry may reuse the key. A 5xx in lease
// mode may come after a side effect, so it is stored and replayed, as
// Stripe does with its 500 responses. A handler can override the choice
// with [SetOutcome].
func DefaultClassify(a Attempt) Outcome {
	switch {
	case a.Panicked:
		return OutcomeUnknown
	case !a.Wrote && a.Canceled:
		if a.Atomic {
			return OutcomeRelease
		}
		return OutcomeUnknown
	case a.Status < 400:
		return OutcomeStore
	case a.Status < 500 || a.Atomic:
		return OutcomeRelease
	}
	return OutcomeStore
}

// SetOutcome overrides the route's classifier for the current request,
// for example OutcomeRelease before a 503 sent before any side effect.
// Call it from the handler with the request's context; the last call wins.
// Outside an idempotent request it does nothing.
func SetOutcome(ctx context.Context, outcome Outcome) {
	if state, ok := ctx.Value(requestStateKey{}).(*requestState); ok {
		state.outcome.Store(int32(outcome))
	}
}

// Tx returns the transaction of a request on a route in atomic mode, and
// false elsewhere. The handler's writes through it commit together with
// the stored response, or not at all.
func Tx(ctx context.Context) (pgx.Tx, bool) {
	state, ok := ctx.Value(requestStateKey{}).(*requestState)
	if !ok || state.tx == nil {
		return nil, false
	}
	return state.tx, true
}

type requestStateKey struct{}

// requestState is the state that the middleware and the handler share
// through the request context.
type requestState struct {
	// outcome is set by SetOutcome; zero means the classifier decides. It
	// is atomic because a handler may call SetOutcome from a goroutine.
	outcome atomic.Int32
	// tx is the transaction in atomic mode, else nil.
	tx pgx.Tx
}

// decide returns the outcome of an attempt: the handler's SetOutcome when
// it called it with a valid outcome, else the classifier's.
func (s *requestState) decide(classify func(Attempt) Outcome, attempt Attempt) Outcome {
	if outcome := Outcome(s.outcome.Load()); outcome >= OutcomeStore && outcome <= OutcomeUnknown {
		return outcome
	}
	if outcome := classify(attempt); outcome >= OutcomeStore && outcome <= OutcomeUnknown {
		return outcome
	}
	// An invalid outcome from a custom classifier keeps the key, the
	// choice that never runs a request twice.
	return OutcomeUnknown
}
