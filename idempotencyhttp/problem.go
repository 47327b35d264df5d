package idempotencyhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// DefaultProblemTypeBase prefixes the problem type URIs unless
// Config.ProblemTypeBase replaces it. Each problem name is a heading of
// docs/idempotency.md, which explains what the problem means and what a
// client should do.
const DefaultProblemTypeBase = "https://github.com/pgguard/pgguard/blob/main/docs/idempotency.md#"

// Problem names. The type URI of a problem is the problem type base
// followed by the name, and clients should branch on it, never on the title
// or detail.
const (
	// ProblemKeyMissing (400): the route requires an Idempotency-Key and the
	// request has none.
	ProblemKeyMissing = "idempotency-key-missing"
	// ProblemKeyInvalid (400): the Idempotency-Key header is malformed.
	ProblemKeyInvalid = "idempotency-key-invalid"
	// ProblemInvalidRequest (400): the scope hook rejected the request, or
	// its body is unreadable. On a JSON route, the body is also rejected
	// when it is not valid JSON or repeats a member name.
	ProblemInvalidRequest = "invalid-request"
	// ProblemRequestTooLarge (413): the body is longer than the route's
	// maximum. Nothing was claimed.
	ProblemRequestTooLarge = "request-too-large"
	// ProblemKeyReused (422): the key was used before for a different
	// request (method, route, path values or body).
	ProblemKeyReused = "idempotency-key-reused"
	// ProblemRequestInFlight (409, with Retry-After): the first request with
	// this key is still running.
	ProblemRequestInFlight = "idempotency-request-in-flight"
	// ProblemOutcomeUnknown (409): an earlier request with this key stopped
	// without a stored response, so it may or may not have taken effect.
	ProblemOutcomeUnknown = "idempotency-outcome-unknown"
	// ProblemResultUnavailable (409): an earlier request with this key
	// completed, but its response was too large to store.
	ProblemResultUnavailable = "idempotency-result-unavailable"
	// ProblemStreamingRefused (500): the handler tried to stream its
	// response; see ErrStreamingRefused.
	ProblemStreamingRefused = "idempotency-streaming-refused"
	// ProblemUnavailable (503, with Retry-After): the database could not be
	// reached or did not respond in time (service.ErrUnavailable). A retry
	// with the same key is safe. The error is logged.
	ProblemUnavailable = "idempotency-unavailable"
	// ProblemInternalError (500): the database failed in another way, or
	// the handler wrote a response that cannot be stored in atomic mode.
	// The error is logged.
	ProblemInternalError = "internal-error"
)

// unavailableRetryAfter is the Retry-After of a ProblemUnavailable
// response: long enough for a pool to replace killed connections, short
// enough not to outlast a brief failover by much.
const unavailableRetryAfter = 5 * time.Second

// problemContentType is the media type of RFC 9457 problem details in JSON.
const problemContentType = "application/problem+json"

// problem is an RFC 9457 problem details object.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// writeProblem sends a problem named name. Problems depend on state that
// changes, such as a running request, so they are never cached.
func (m *Middleware) writeProblem(w http.ResponseWriter, name string, status int, title, detail string) {
	body, err := json.Marshal(problem{
		Type:   m.config.ProblemTypeBase + name,
		Title:  title,
		Status: status,
		Detail: detail,
	})
	if err != nil {
		panic(err) // strings and an int always encode
	}

	header := w.Header()
	header.Set("Content-Type", problemContentType)
	header.Set("Cache-Control", "no-store")
	header.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func (m *Middleware) writeInFlight(w http.ResponseWriter, retryAfter time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	m.writeProblem(w, ProblemRequestInFlight, http.StatusConflict, "Request in progress",
		"A request with this Idempotency-Key is still running. Retry with the same key after the number of seconds in Retry-After to get its response.")
}

func (m *Middleware) writeUnavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(int(unavailableRetryAfter/time.Second)))
	m.writeProblem(w, ProblemUnavailable, http.StatusServiceUnavailable, "Idempotency store unavailable",
		"The server cannot reach the database that stores Idempotency-Keys right now. Retry with the same key after the number of seconds in Retry-After.")
}

func (m *Middleware) writeInternalError(w http.ResponseWriter) {
	m.writeProblem(w, ProblemInternalError, http.StatusInternalServerError, "Internal server error",
		"The server failed to process the Idempotency-Key. The error is in its log. Retry later with the same key.")
}
