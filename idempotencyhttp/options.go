package idempotencyhttp

import (
	"fmt"
	"time"

	"github.com/pgguard/pgguard/service"
)

// DefaultMaxRequestBytes is the longest request body a route accepts unless
// [MaxRequestBytes] sets another limit: 1 MiB.
const DefaultMaxRequestBytes = 1 << 20

// RouteOption adjusts one route of a [Middleware]. A route without options
// requires a key, fingerprints the raw body, uses lease mode with the
// Idempotency's LeaseDuration, accepts bodies up to 1 MiB and classifies
// with [DefaultClassify].
type RouteOption struct {
	apply func(*routeSettings) error
}

type routeSettings struct {
	keyOptional     bool
	allowRerun      bool
	jsonBody        bool
	atomic          bool
	lease           time.Duration
	maxRequestBytes int64
	classify        func(Attempt) Outcome
}

func defaultRouteSettings() routeSettings {
	return routeSettings{maxRequestBytes: DefaultMaxRequestBytes, classify: DefaultClassify}
}

// KeyOptional lets requests without an Idempotency-Key through to the
// handler untouched: no body limit, no claim, nothing stored. Without it a
// keyless request gets a 400 idempotency-key-missing problem.
func KeyOptional() RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		s.keyOptional = true
		return nil
	}}
}

// AllowRerun declares the handler safe to run again when an earlier request
// with the same key lost its lease without a response, for example because
// its process crashed: the next request takes the key over and runs.
// Without it, such requests get a 409 idempotency-outcome-unknown problem
// until the record expires.
func AllowRerun() RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		s.allowRerun = true
		return nil
	}}
}

// JSONBody fingerprints the canonical form of a JSON body (see
// [service.CanonicalJSON]), so retries that differ only in whitespace or
// member order replay, while number literals are compared exactly. The
// handler reads the canonical form, the bytes that were fingerprinted. A
// body that is not valid JSON, or that repeats a member name, gets a 400
// invalid-request problem before any claim. An empty body stays empty.
func JSONBody() RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		s.jsonBody = true
		return nil
	}}
}

// Atomic runs the handler in the transaction that claims the key and stores
// the response, through [service.Idempotency.Do]. The handler gets the
// transaction from [Tx] and must make its writes through it. A concurrent
// duplicate waits for that transaction and then replays its response,
// instead of getting a 409. The response is buffered whole until the
// commit, because no response may be sent for work that can still roll
// back. Use it only when all the handler's side effects live in the
// Idempotency's database.
func Atomic() RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		s.atomic = true
		return nil
	}}
}

// Lease sets how long a claim holds the key before requests may take it
// over or get "outcome unknown". Without this option the route uses the
// Idempotency's LeaseDuration, 60 seconds by default. A lease of zero or
// less is a configuration error.
func Lease(d time.Duration) RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		if d <= 0 {
			return fmt.Errorf("%w: Lease is %s; use a positive duration such as 30s", service.ErrInvalidConfig, d)
		}
		s.lease = d
		return nil
	}}
}

// MaxRequestBytes sets the longest request body, in bytes. A longer body
// gets a 413 request-too-large problem before any claim. Without this
// option the limit is [DefaultMaxRequestBytes]. A limit of zero or less is
// a configuration error.
func MaxRequestBytes(n int64) RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		if n <= 0 {
			return fmt.Errorf("%w: MaxRequestBytes is %d; use a positive number of bytes", service.ErrInvalidConfig, n)
		}
		s.maxRequestBytes = n
		return nil
	}}
}

// Classify replaces [DefaultClassify] as the function that decides, after
// the handler returns, whether the response is stored, the key released,
// or the key kept with an unknown outcome. A handler can still override it
// per request with [SetOutcome].
func Classify(classify func(Attempt) Outcome) RouteOption {
	return RouteOption{apply: func(s *routeSettings) error {
		if classify == nil {
			return fmt.Errorf("%w: Classify got a nil function", service.ErrInvalidConfig)
		}
		s.classify = classify
		return nil
	}}
}
