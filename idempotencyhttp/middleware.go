package idempotencyhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/service"
)

// settleTimeout bounds the statements that settle a claim after the
// handler returned. They run even when the client has gone, because an
// unsettled claim blocks its key until the lease ends.
const settleTimeout = 10 * time.Second

// settleAttempts is how many times the middleware tries to settle a claim
// while the database is unavailable, as after a killed connection. It
// tries again only when the database certainly did not apply the earlier
// try; see [service.Claim].
const settleAttempts = 3

// settleRetryPause is the pause before the second try to settle a claim;
// each later try waits twice as long as the one before.
const settleRetryPause = 50 * time.Millisecond

// Config is the configuration of a [Middleware]. A zero field takes its
// default, except Idempotency, which is required.
type Config struct {
	// Idempotency stores the records. Required.
	Idempotency *service.Idempotency

	// Scope returns the tenant of a request: its organization, else its
	// principal (user or API client). A tenant's keys are invisible to
	// every other tenant.
	// When Scope is nil or returns a Scope with all fields empty, the
	// request is anonymous and is scoped by the address of the TCP peer
	// (Request.RemoteAddr), so two anonymous clients never share a key. To
	// scope anonymous requests by another address, for example one that a
	// trusted proxy forwards, set Scope.ClientIP. An error is sent to the
	// client as a 400 invalid-request problem whose detail is the error
	// text, so it must not contain secrets.
	Scope func(r *http.Request) (Scope, error)

	// ProblemTypeBase prefixes the type URI of every problem the
	// middleware sends, followed by the problem's name such as
	// "idempotency-key-reused". Defaults to [DefaultProblemTypeBase].
	ProblemTypeBase string

	// Logger receives one record per decision at debug level, and
	// streaming refusals, panics, lost claims and database errors at warn
	// or error level. Keys and bodies are never logged. Defaults to
	// discarding everything.
	Logger *slog.Logger
}

// Scope is the tenant of a request. The first non-empty field wins.
type Scope struct {
	OrganizationID string
	Principal      string
	// ClientIP scopes an anonymous request by an IPv4 or IPv6 address.
	ClientIP string
}

// Middleware makes routes idempotent. Build it once with [New] and wrap
// each route with [Middleware.Route]. It is safe for concurrent use.
type Middleware struct {
	config           Config
	idempotency      *service.Idempotency
	recordTTL        time.Duration
	maxResponseBytes int
}

// New returns a Middleware. It returns an error wrapping
// [service.ErrInvalidConfig] when Idempotency is nil.
func New(config Config) (*Middleware, error) {
	if config.Idempotency == nil {
		return nil, fmt.Errorf("%w: Idempotency is nil; pass the *service.Idempotency that stores the records", service.ErrInvalidConfig)
	}
	if config.ProblemTypeBase == "" {
		config.ProblemTypeBase = DefaultProblemTypeBase
	}
	if config.Logger == nil {
		config.Logger = slog.New(slog.DiscardHandler)
	}

	idempotencyConfig := config.Idempotency.Config()
	return &Middleware{
		config:           config,
		idempotency:      config.Idempotency,
		recordTTL:        idempotencyConfig.RecordTTL,
		maxResponseBytes: idempotencyConfig.MaxResponseBytes,
	}, nil
}

// Route returns the middleware of one route, configured by options. It
// returns an error wrapping [service.ErrInvalidConfig] when an option is
// out of range, for example a Lease of zero or longer than the
// Idempotency's RecordTTL.
func (m *Middleware) Route(options ...RouteOption) (func(http.Handler) http.Handler, error) {
	settings := defaultRouteSettings()
	for _, option := range options {
		if option.apply == nil {
			return nil, fmt.Errorf("%w: a RouteOption is the zero value; build options with this package's functions such as Lease", service.ErrInvalidConfig)
		}
		if err := option.apply(&settings); err != nil {
			return nil, err
		}
	}
	if settings.lease > m.recordTTL {
		return nil, fmt.Errorf("%w: Lease is %s, longer than the Idempotency's RecordTTL %s", service.ErrInvalidConfig, settings.lease, m.recordTTL)
	}

	return func(next http.Handler) http.Handler {
		return &routeHandler{middleware: m, settings: settings, next: next}
	}, nil
}

// routeHandler is one idempotent route.
type routeHandler struct {
	middleware *Middleware
	settings   routeSettings
	next       http.Handler
}

func (h *routeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := h.middleware

	key, found, err := ParseKey(r.Header)
	if err != nil {
		m.writeProblem(w, ProblemKeyInvalid, http.StatusBadRequest, "Invalid Idempotency-Key", inputDetail(err))
		m.logDecision(r, "rejected", ProblemKeyInvalid)
		return
	}
	if !found {
		if h.settings.keyOptional {
			h.next.ServeHTTP(w, r)
			return
		}
		m.writeProblem(w, ProblemKeyMissing, http.StatusBadRequest, "Idempotency-Key missing",
			"This operation requires an Idempotency-Key header. Send a unique value, such as a UUID, and reuse it only to retry the same request.")
		m.logDecision(r, "rejected", ProblemKeyMissing)
		return
	}

	req, ok := h.request(w, r, key)
	if !ok {
		return
	}
	if h.settings.atomic {
		h.serveAtomic(w, r, req)
		return
	}
	h.serveLease(w, r, req)
}

// request builds the service request: scope, body, route and path values.
// On failure it sends the problem and returns false.
func (h *routeHandler) request(w http.ResponseWriter, r *http.Request, key string) (service.Request, bool) {
	m := h.middleware

	scope, err := m.scope(r)
	if err != nil {
		m.writeProblem(w, ProblemInvalidRequest, http.StatusBadRequest, "Invalid request", err.Error())
		m.logDecision(r, "rejected", ProblemInvalidRequest)
		return service.Request{}, false
	}

	body, err := readBody(w, r, h.settings.maxRequestBytes)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		m.writeProblem(w, ProblemRequestTooLarge, http.StatusRequestEntityTooLarge, "Request body too large",
			fmt.Sprintf("The request body is larger than the maximum of %d bytes.", tooLarge.Limit))
		m.logDecision(r, "rejected", ProblemRequestTooLarge)
		return service.Request{}, false
	case err != nil:
		m.writeProblem(w, ProblemInvalidRequest, http.StatusBadRequest, "Invalid request", "The request body could not be read: "+err.Error())
		m.logDecision(r, "rejected", ProblemInvalidRequest)
		return service.Request{}, false
	}

	if h.settings.jsonBody && len(body) > 0 {
		body, err = service.CanonicalJSON(body)
		if err != nil {
			m.writeProblem(w, ProblemInvalidRequest, http.StatusBadRequest, "Invalid request", inputDetail(err))
			m.logDecision(r, "rejected", ProblemInvalidRequest)
			return service.Request{}, false
		}
	}

	route, pathValues := routeOf(r)
	return service.Request{
		Key:            key,
		Method:         r.Method,
		Route:          route,
		PathValues:     pathValues,
		Body:           body,
		OrganizationID: scope.OrganizationID,
		Principal:      scope.Principal,
		ClientIP:       scope.ClientIP,
		AllowTakeover:  h.settings.allowRerun,
		Lease:          h.settings.lease,
	}, true
}

// serveLease claims the key, runs the handler and settles the claim
// according to the classifier.
func (h *routeHandler) serveLease(w http.ResponseWriter, r *http.Request, req service.Request) {
	m := h.middleware

	claim, stored, err := m.idempotency.Begin(r.Context(), req)
	if err != nil {
		m.writeClaimError(w, r, err)
		return
	}
	if stored != nil {
		writeReplay(w, *stored)
		m.logDecision(r, "replayed", "")
		return
	}

	state := &requestState{}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	rec := newRecorder(w, m.maxResponseBytes, true, cancel)
	panicValue, panicked := serveRecovering(h.next, rec, handlerRequest(r, ctx, state, req.Body))

	settleCtx, cancelSettle := context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
	defer cancelSettle()

	if rec.refused != nil {
		// The claim is released so a corrected retry can run, unless the
		// handler declared with SetOutcome that it changed something.
		outcome := OutcomeRelease
		if explicit := Outcome(state.outcome.Load()); explicit == OutcomeStore || explicit == OutcomeUnknown {
			outcome = OutcomeUnknown
		}
		m.settle(settleCtx, r, claim, outcome, rec)
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: handler on an idempotent route tried to stream; refused",
			routeAttrs(r, slog.Any("error", rec.refused))...)
		if panicked {
			panic(panicValue)
		}
		if !rec.sent {
			m.writeStreamingRefused(w)
		}
		return
	}

	outcome := state.decide(h.settings.classify, Attempt{
		Status:   rec.statusCode(),
		Wrote:    rec.wrote(),
		Panicked: panicked,
		Canceled: r.Context().Err() != nil,
	})
	switch {
	case panicked && outcome == OutcomeStore:
		// A panic leaves no response to store.
		outcome = OutcomeUnknown
	case outcome == OutcomeStore && !storableStatus(rec.statusCode()):
		// net/http sends statuses up to 999, but only 100..599 are HTTP
		// statuses that a record can hold. The handler may have changed
		// something, so its key must not run again.
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: handler on an idempotent route wrote a status outside 100..599, which cannot be stored; outcome unknown",
			routeAttrs(r, slog.Int("status", rec.statusCode()))...)
		outcome = OutcomeUnknown
	}
	m.settle(settleCtx, r, claim, outcome, rec)

	if panicked {
		m.config.Logger.LogAttrs(r.Context(), slog.LevelWarn, "pgguard: handler on an idempotent route panicked",
			routeAttrs(r, slog.String("outcome", outcome.String()))...)
		panic(panicValue)
	}
	rec.finish()
	m.logDecision(r, "executed", "", slog.String("outcome", outcome.String()), slog.Int("status", rec.statusCode()))
}

// settle ends claim with outcome before the response is sent, so a client
// that retries after reading the response finds it stored. While the
// database is unavailable it tries up to settleAttempts times. A settle
// that still fails is logged and the handler's response is sent anyway:
// the claim then ends with its lease.
func (m *Middleware) settle(ctx context.Context, r *http.Request, claim *service.Claim, outcome Outcome, rec *recorder) {
	var settleOnce func() error
	switch {
	case outcome == OutcomeRelease:
		settleOnce = func() error { return claim.Release(ctx) }
	case outcome == OutcomeUnknown:
		settleOnce = func() error { return claim.MarkOutcomeUnknown(ctx) }
	case rec.overflowed:
		// The body went to the client without being buffered whole.
		m.config.Logger.LogAttrs(r.Context(), slog.LevelWarn, "pgguard: idempotent response too large to store; retries get result unavailable",
			routeAttrs(r, slog.Int("max_response_bytes", m.maxResponseBytes))...)
		settleOnce = func() error { return claim.MarkResultUnavailable(ctx, rec.statusCode()) }
	default:
		response := rec.response()
		settleOnce = func() error { return claim.Complete(ctx, response) }
	}

	err := settleOnce()
	pause := settleRetryPause
	for attempt := 2; attempt <= settleAttempts && errors.Is(err, service.ErrUnavailable); attempt++ {
		m.config.Logger.LogAttrs(r.Context(), slog.LevelWarn, "pgguard: failed to settle idempotency claim; trying again",
			routeAttrs(r, slog.String("outcome", outcome.String()), slog.Int("attempt", attempt), slog.Any("error", err))...)
		if !sleepContext(ctx, pause) {
			break
		}
		pause *= 2

		retryErr := settleOnce()
		if errors.Is(retryErr, service.ErrClaimSettled) {
			// The database may have applied the earlier try, so the
			// claim rejects another; its error stands.
			break
		}
		err = retryErr
	}

	switch {
	case errors.Is(err, service.ErrLeaseLost):
		m.config.Logger.LogAttrs(r.Context(), slog.LevelWarn, "pgguard: idempotency lease lost before the handler finished; its result is not stored",
			routeAttrs(r, slog.String("outcome", outcome.String()))...)
	case err != nil:
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: failed to settle idempotency claim",
			routeAttrs(r, slog.String("outcome", outcome.String()), slog.Any("error", err))...)
	}
}

// errRolledBack makes Do roll back after a handler whose outcome is not
// OutcomeStore.
var errRolledBack = errors.New("pgguard: idempotent transaction rolled back by the route's outcome")

// serveAtomic runs the handler inside Idempotency.Do.
func (h *routeHandler) serveAtomic(w http.ResponseWriter, r *http.Request, req service.Request) {
	m := h.middleware

	// rec is set once the handler runs; Do calls the function at most once.
	var rec *recorder
	var outcome Outcome
	stored, replayed, err := m.idempotency.Do(r.Context(), req, func(ctx context.Context, tx pgx.Tx) (service.StoredResponse, error) {
		state := &requestState{tx: tx}
		handlerCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		rec = newRecorder(w, m.maxResponseBytes, false, cancel)

		// A panic propagates through Do, which rolls back.
		h.next.ServeHTTP(rec, handlerRequest(r, handlerCtx, state, req.Body))
		if rec.refused != nil {
			return service.StoredResponse{}, rec.refused
		}

		outcome = state.decide(h.settings.classify, Attempt{
			Status:   rec.statusCode(),
			Wrote:    rec.wrote(),
			Canceled: r.Context().Err() != nil,
			Atomic:   true,
		})
		if outcome != OutcomeStore {
			return service.StoredResponse{}, errRolledBack
		}
		return rec.response(), nil
	})

	switch {
	case err == nil && replayed:
		writeReplay(w, stored)
		m.logDecision(r, "replayed", "")
	case err == nil || errors.Is(err, errRolledBack):
		rec.finish()
		m.logDecision(r, "executed", "", slog.String("outcome", outcome.String()), slog.Int("status", rec.statusCode()))
	case errors.Is(err, ErrStreamingRefused):
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: handler on an idempotent route tried to stream; transaction rolled back",
			routeAttrs(r, slog.Any("error", err))...)
		m.writeStreamingRefused(w)
	case rec != nil && errors.Is(err, service.ErrInvalidInput):
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: handler on an idempotent route wrote a status outside 100..599, which cannot be stored; transaction rolled back",
			routeAttrs(r, slog.Int("status", rec.statusCode()))...)
		m.writeInternalError(w)
	case rec != nil:
		// The handler ran, but storing its response or the commit failed,
		// so its writes were rolled back (or, when the connection was lost
		// during COMMIT, maybe committed with the response) and its
		// response must not be sent. A retry with the same key either
		// runs again or replays.
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: failed to commit idempotent transaction",
			routeAttrs(r, slog.Any("error", err))...)
		if errors.Is(err, service.ErrUnavailable) {
			m.writeUnavailable(w)
			return
		}
		m.writeInternalError(w)
	default:
		m.writeClaimError(w, r, err)
	}
}

// writeClaimError sends the problem for an error of Begin or Do.
func (m *Middleware) writeClaimError(w http.ResponseWriter, r *http.Request, err error) {
	var inFlight *service.InFlightError
	var invalid *service.InputError
	name := ""
	switch {
	case errors.Is(err, service.ErrKeyReused):
		name = ProblemKeyReused
		m.writeProblem(w, name, http.StatusUnprocessableEntity, "Idempotency-Key reused",
			"This Idempotency-Key was used for a different request: another method, route, path or body. Use a new key for a new request.")
	case errors.As(err, &inFlight):
		name = ProblemRequestInFlight
		m.writeInFlight(w, inFlight.RetryAfter)
	case errors.Is(err, service.ErrOutcomeUnknown):
		name = ProblemOutcomeUnknown
		m.writeProblem(w, name, http.StatusConflict, "Outcome of the earlier request unknown",
			"An earlier request with this Idempotency-Key stopped before it stored a response, so it may or may not have taken effect. Check its effect before you retry with a new key.")
	case errors.Is(err, service.ErrResultUnavailable):
		name = ProblemResultUnavailable
		m.writeProblem(w, name, http.StatusConflict, "Result of the earlier request unavailable",
			"An earlier request with this Idempotency-Key completed, but its response was too large to store, so it cannot be sent again. Do not retry with a new key unless you meant to repeat the request.")
	case errors.As(err, &invalid):
		name = ProblemInvalidRequest
		m.writeProblem(w, name, http.StatusBadRequest, "Invalid request", inputDetail(err))
	case errors.Is(err, service.ErrUnavailable):
		name = ProblemUnavailable
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: failed to claim idempotency key; database unavailable",
			routeAttrs(r, slog.Any("error", err))...)
		m.writeUnavailable(w)
	default:
		name = ProblemInternalError
		m.config.Logger.LogAttrs(r.Context(), slog.LevelError, "pgguard: failed to claim idempotency key",
			routeAttrs(r, slog.Any("error", err))...)
		m.writeInternalError(w)
	}
	m.logDecision(r, "rejected", name)
}

func (m *Middleware) writeStreamingRefused(w http.ResponseWriter) {
	m.writeProblem(w, ProblemStreamingRefused, http.StatusInternalServerError, "Streaming not supported",
		"The server tried to stream the response of an idempotent request, which cannot be stored. Nothing was stored for this Idempotency-Key. The error is in the server's log.")
}

// scope returns the tenant of r, falling back to the TCP peer address.
func (m *Middleware) scope(r *http.Request) (Scope, error) {
	var scope Scope
	if m.config.Scope != nil {
		var err error
		scope, err = m.config.Scope(r)
		if err != nil {
			return Scope{}, err
		}
	}
	if scope == (Scope{}) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil || host == "" {
			return Scope{}, errors.New("The request has no organization, principal or client address to scope its Idempotency-Key by.")
		}
		scope.ClientIP = host
	}
	return scope, nil
}

func (m *Middleware) logDecision(r *http.Request, decision, problemName string, attrs ...slog.Attr) {
	attrs = append(attrs, slog.String("decision", decision))
	if problemName != "" {
		attrs = append(attrs, slog.String("problem", problemName))
	}
	m.config.Logger.LogAttrs(r.Context(), slog.LevelDebug, "pgguard: idempotent request", routeAttrs(r, attrs...)...)
}

// routeAttrs returns attrs after the method and pattern of r.
func routeAttrs(r *http.Request, attrs ...slog.Attr) []slog.Attr {
	return append([]slog.Attr{slog.String("method", r.Method), slog.String("pattern", r.Pattern)}, attrs...)
}

// readBody reads the whole body, at most limit bytes. A longer body
// returns an *http.MaxBytesError.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return []byte{}, nil
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

// handlerRequest returns the request the handler gets: r with ctx, the
// request state, and body, the bytes that were fingerprinted.
func handlerRequest(r *http.Request, ctx context.Context, state *requestState, body []byte) *http.Request {
	inner := r.WithContext(context.WithValue(ctx, requestStateKey{}, state))
	inner.Body = io.NopCloser(bytes.NewReader(body))
	inner.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	inner.ContentLength = int64(len(body))
	inner.TransferEncoding = nil
	if r.Header.Get("Content-Length") != "" {
		inner.Header = r.Header.Clone()
		inner.Header.Set("Content-Length", strconv.Itoa(len(body)))
	}
	return inner
}

// serveRecovering runs next and returns the value of its panic, if any.
func serveRecovering(next http.Handler, w http.ResponseWriter, r *http.Request) (panicValue any, panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicValue, panicked = v, true
		}
	}()
	next.ServeHTTP(w, r)
	return nil, false
}

// storableStatus reports whether a record can hold status.
func storableStatus(status int) bool {
	return status >= 100 && status <= 599
}

// sleepContext waits for d and returns true, or returns false as soon as
// ctx ends.
func sleepContext(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// writeReplay sends a stored response marked Idempotent-Replayed: true.
func writeReplay(w http.ResponseWriter, stored service.StoredResponse) {
	header := w.Header()
	for name, values := range stored.Header {
		header[name] = slices.Clone(values)
	}
	header.Set("Idempotent-Replayed", "true")
	w.WriteHeader(stored.Status)
	_, _ = w.Write(stored.Body)
}

// inputDetail turns an *service.InputError into a problem detail.
func inputDetail(err error) string {
	var invalid *service.InputError
	if errors.As(err, &invalid) {
		return fmt.Sprintf("Invalid %s: %s.", invalid.Field, invalid.Problem)
	}
	return err.Error()
}
