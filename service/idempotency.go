package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/dbgen"
)

// MaxKeyLength is the longest idempotency key accepted, in characters.
const MaxKeyLength = 255

// DefaultReplayHeaders are the response headers stored and replayed when
// IdempotencyConfig.ReplayHeaders is nil. Set-Cookie is never stored.
var DefaultReplayHeaders = []string{"Content-Type", "Content-Encoding", "Location", "ETag", "Content-Language"}

// Values of idempotency_records.state.
const (
	stateInProgress        = "in_progress"
	stateCompleted         = "completed"
	stateResultUnavailable = "result_unavailable"
	stateOutcomeUnknown    = "outcome_unknown"
)

// IdempotencyConfig is the policy of an [Idempotency]. A zero field takes
// its default.
type IdempotencyConfig struct {
	// LeaseDuration is how long a claim holds a key before another request
	// may take it over (see Request.AllowTakeover), unless Request.Lease
	// sets another length. Defaults to 60 seconds. A negative value is a
	// configuration error.
	LeaseDuration time.Duration

	// RecordTTL is how long a record is kept and replayed after it was
	// claimed. Defaults to 24 hours.
	RecordTTL time.Duration

	// ReplayHeaders lists the response headers stored for replay, in any
	// case. Defaults to [DefaultReplayHeaders]. Set-Cookie is dropped even
	// when listed, because a replayed session cookie would leak a session.
	ReplayHeaders []string

	// MaxResponseBytes is the largest response body stored for replay, in
	// bytes. A completed request with a larger body is recorded as "result
	// unavailable" instead: it is never run again for its key, and retries
	// get [ErrResultUnavailable] rather than a truncated body. Defaults to
	// 1 MiB. A negative value is a configuration error.
	MaxResponseBytes int

	// Now, when set, supplies the time of every decision instead of the
	// database clock. Tests use it to move time without sleeping; leave it
	// nil in production.
	Now func() time.Time

	// Logger receives lost claims, responses too large to store and errors.
	// Defaults to discarding them.
	Logger *slog.Logger
}

func (c IdempotencyConfig) withDefaults() IdempotencyConfig {
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 60 * time.Second
	}
	if c.RecordTTL == 0 {
		c.RecordTTL = 24 * time.Hour
	}
	if c.ReplayHeaders == nil {
		c.ReplayHeaders = DefaultReplayHeaders
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c IdempotencyConfig) validate() error {
	switch {
	case c.LeaseDuration < time.Millisecond:
		return invalidConfig("LeaseDuration", "is %s; use a positive duration of at least 1ms", c.LeaseDuration)
	case c.RecordTTL < c.LeaseDuration:
		return invalidConfig("RecordTTL", "is %s, shorter than LeaseDuration %s", c.RecordTTL, c.LeaseDuration)
	case c.MaxResponseBytes < 0:
		return invalidConfig("MaxResponseBytes", "is %d; use a positive number of bytes, or 0 for the default of 1 MiB", c.MaxResponseBytes)
	}
	for _, name := range c.ReplayHeaders {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == ':' || r >= unicode.MaxASCII }) {
			return invalidConfig("ReplayHeaders", "contains %q, which is not a header name", name)
		}
	}
	return nil
}

// Idempotency stores one response per idempotency key, so a retried request
// gets the first response back instead of running twice. Use it in one of
// two ways:
//
//   - Lease mode: [Idempotency.Begin] before the handler runs, then settle
//     the [Claim] with Complete, Release, MarkResultUnavailable or
//     MarkOutcomeUnknown. Works for any side effect.
//   - Atomic mode: [Idempotency.Do] runs the handler in the transaction
//     that claims the key and stores the response. Only for work that
//     lives in the same database.
//
// An Idempotency is safe for concurrent use.
type Idempotency struct {
	queries *dbgen.Queries
	// beginner is db when db can begin transactions, else nil, and then
	// Do returns an error.
	beginner      TxBeginner
	config        IdempotencyConfig
	replayHeaders map[string]bool
}

// NewIdempotency returns an Idempotency that stores its records through db,
// usually a *pgxpool.Pool. [Idempotency.Do] works only when db also
// implements [TxBeginner], as *pgxpool.Pool does. It returns an error
// wrapping [ErrInvalidConfig] when a config field is out of range.
func NewIdempotency(db dbgen.DBTX, config IdempotencyConfig) (*Idempotency, error) {
	config = config.withDefaults()
	if err := config.validate(); err != nil {
		return nil, err
	}

	replayHeaders := make(map[string]bool, len(config.ReplayHeaders))
	for _, name := range config.ReplayHeaders {
		replayHeaders[http.CanonicalHeaderKey(name)] = true
	}
	delete(replayHeaders, "Set-Cookie")

	beginner, _ := db.(TxBeginner)
	return &Idempotency{
		queries:       dbgen.New(db),
		beginner:      beginner,
		config:        config,
		replayHeaders: replayHeaders,
	}, nil
}

// Config returns the configuration of s, with the defaults filled in.
func (s *Idempotency) Config() IdempotencyConfig {
	config := s.config
	config.ReplayHeaders = slices.Clone(config.ReplayHeaders)
	return config
}

// Request identifies one idempotent request.
type Request struct {
	// Key is the client's Idempotency-Key: 1 to 255 characters of valid
	// UTF-8 without control characters.
	Key string
	// Method is the HTTP method, for example "POST".
	Method string
	// Route is the route template, for example "/orders" or
	// "/tickets/{id}", not the raw path.
	Route string
	// PathValues are the values of the route's wildcards, for example
	// {"id": "1"} for "/tickets/{id}". Requests that differ in a path value
	// never share a record, so the same key on /tickets/1 and /tickets/2
	// names two requests.
	PathValues map[string]string
	// Body is the exact request body the handler will read.
	Body []byte

	// The tenant scope keys are separated by: OrganizationID when set, else
	// Principal (a user or API client id), else ClientIP. Two scopes never
	// see each other's records. At least one must be set.
	OrganizationID string
	Principal      string
	ClientIP       string

	// AllowTakeover declares the route safe to run again: when an earlier
	// request's lease ran out without a response, this request takes the key
	// over. Without it, such a request gets [ErrOutcomeUnknown] until the
	// record expires.
	AllowTakeover bool

	// Lease is the lease of this request's claim. Zero means
	// IdempotencyConfig.LeaseDuration. A negative lease, or one longer than
	// RecordTTL, is invalid input.
	Lease time.Duration
}

// StoredResponse is a response stored under a key and replayed for retries.
type StoredResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// Claim is the right to run the handler for a key, held until its lease
// ends. Settle it with exactly one of Complete, Release,
// MarkResultUnavailable or MarkOutcomeUnknown. A settle that fails with an
// error matching [ErrUnavailable] may be called again when the database
// certainly did not apply it (nothing was sent, or the server reported an
// error); otherwise the second call returns [ErrClaimSettled], and a claim
// whose settle was lost ends with its lease.
type Claim struct {
	idempotency *Idempotency
	id          int64
	lockToken   uuid.UUID
	// LeaseExpiresAt is when another request may take the key over.
	LeaseExpiresAt time.Time
	settled        atomic.Bool
}

// Begin claims req's key before the handler runs. It returns exactly one of
// a *Claim (run the handler, then settle the claim), a *StoredResponse (the
// key was completed before, so send that response back as is) or an error:
//   - [ErrKeyReused] when the key was used for a different request;
//   - an *InFlightError ([ErrInFlight]) while the first request runs;
//   - [ErrOutcomeUnknown] when the first request lost its lease, or failed
//     after a possible side effect;
//   - [ErrResultUnavailable] when its response was too large to store;
//   - an *InputError ([ErrInvalidInput]) for a bad key, method, route,
//     scope or lease;
//   - an error matching [ErrUnavailable] when the database could not be
//     reached or did not respond in time, after which a retry is safe;
//   - another database error.
//
// A record whose RecordTTL has passed is replaced by a new claim.
func (s *Idempotency) Begin(ctx context.Context, req Request) (*Claim, *StoredResponse, error) {
	params, lockToken, err := s.claimParams(req)
	if err != nil {
		return nil, nil, err
	}

	row, err := s.queries.IdempotencyRecordClaim(ctx, params)
	if err != nil {
		return nil, nil, claimError(err)
	}

	if ownsRecord(row, lockToken) {
		return &Claim{idempotency: s, id: row.ID, lockToken: lockToken, LeaseExpiresAt: *row.LeaseExpiresAt}, nil, nil
	}
	stored, err := s.existingRecord(row, params.RequestHash, req)
	return nil, stored, err
}

// Complete stores the handler's response for replay and ends the claim.
// Only headers listed in ReplayHeaders are stored. A response that cannot
// be stored byte for byte is not stored at all: a body longer than
// MaxResponseBytes, or a replayed header value that is not valid UTF-8 or
// contains a NUL byte (jsonb cannot hold either). The record is then marked
// as in [Claim.MarkResultUnavailable] and Complete returns nil. A status
// outside 100..599 returns an *InputError and leaves the claim unsettled.
// It returns [ErrLeaseLost] when the lease ran out and another request took
// the key over: that request's result is kept and this one is not stored.
func (c *Claim) Complete(ctx context.Context, response StoredResponse) error {
	if err := validateStatus(response.Status); err != nil {
		return err
	}
	if err := c.startSettle(ctx); err != nil {
		return err
	}
	err := c.idempotency.complete(ctx, c.idempotency.queries, c.id, c.lockToken, response)
	c.allowRetry(err)
	return err
}

// MarkResultUnavailable ends the claim of a handler that finished with a
// response it could not store, for example one longer than
// MaxResponseBytes that was sent without buffering it. The key is never
// run again: retries get [ErrResultUnavailable] until the record expires.
// status is the response status, kept for inspection. It returns
// [ErrLeaseLost] like Complete.
func (c *Claim) MarkResultUnavailable(ctx context.Context, status int) error {
	if err := validateStatus(status); err != nil {
		return err
	}
	if err := c.startSettle(ctx); err != nil {
		return err
	}
	err := c.idempotency.markResultUnavailable(ctx, c.idempotency.queries, c.id, c.lockToken, status)
	c.allowRetry(err)
	return err
}

// MarkOutcomeUnknown ends the claim of a handler that failed after it may
// have changed something, for example by panicking. The key is never run
// again: retries get [ErrOutcomeUnknown] until the record expires, so a
// person or a reconciliation job has to find out what happened. It returns
// [ErrLeaseLost] like Complete.
func (c *Claim) MarkOutcomeUnknown(ctx context.Context) error {
	if err := c.startSettle(ctx); err != nil {
		return err
	}
	s := c.idempotency

	updated, err := s.queries.IdempotencyRecordMarkOutcomeUnknown(ctx, dbgen.IdempotencyRecordMarkOutcomeUnknownParams{
		Now:       s.now(),
		ID:        c.id,
		LockToken: uuid.NullUUID{UUID: c.lockToken, Valid: true},
	})
	if err != nil {
		c.allowRetry(err)
		return unavailable("mark the idempotency record's outcome unknown", err)
	}
	if updated == 0 {
		return s.lostClaim(ctx, c.id)
	}
	return nil
}

// Release gives the key up so that a retry runs the handler again. Call it
// when the handler failed before it changed anything. It returns
// [ErrLeaseLost] when another request already took the key over.
func (c *Claim) Release(ctx context.Context) error {
	if err := c.startSettle(ctx); err != nil {
		return err
	}
	s := c.idempotency

	deleted, err := s.queries.IdempotencyRecordRelease(ctx, dbgen.IdempotencyRecordReleaseParams{
		ID:        c.id,
		LockToken: uuid.NullUUID{UUID: c.lockToken, Valid: true},
	})
	if err != nil {
		c.allowRetry(err)
		return unavailable("release idempotency key", err)
	}
	if deleted == 0 {
		return ErrLeaseLost
	}
	return nil
}

// startSettle marks the claim settled, or returns ErrClaimSettled when it
// was already. A ctx that has ended returns its error and leaves the claim
// unsettled, because nothing was sent.
func (c *Claim) startSettle(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pgguard: idempotency claim not settled: %w", err)
	}
	if !c.settled.CompareAndSwap(false, true) {
		return ErrClaimSettled
	}
	return nil
}

// allowRetry lets the caller settle the claim again after err when the
// database certainly did not apply the settle; see [settleNotApplied].
// Otherwise the claim stays settled and, if the settle was lost, ends with
// its lease.
func (c *Claim) allowRetry(err error) {
	if err != nil && settleNotApplied(err) {
		c.settled.Store(false)
	}
}

// PurgeExpired deletes records past their RecordTTL, batchSize rows per
// statement, until none is left, and returns how many it deleted. Each
// batch starts at the last expires_at the previous one deleted, so it does
// not step again over the index entries of deleted rows, which stay until
// vacuum removes them. A batch skips rows that another transaction has
// locked and leaves them for a later purge, so purges never wait for
// requests or for each other. [IdempotencyCleaner] runs it periodically.
func (s *Idempotency) PurgeExpired(ctx context.Context, batchSize int) (int64, error) {
	return s.purgeExpired(ctx, batchSize, 0)
}

// purgeExpired is PurgeExpired with a pause after each full batch.
func (s *Idempotency) purgeExpired(ctx context.Context, batchSize int, pause time.Duration) (int64, error) {
	if batchSize < 1 {
		return 0, invalidInput("batch size", fmt.Sprintf("%d; use a positive number of rows, for example 1000", batchSize))
	}

	var after *time.Time
	// stopped is the context's error when it ended during a pause; the
	// database is not at fault then, so the error is not ErrUnavailable.
	var stopped error
	total, err := deleteInBatches(batchSize, func() (int64, error) {
		if after != nil && pause > 0 {
			wait := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				wait.Stop()
				stopped = ctx.Err()
				return 0, stopped
			case <-wait.C:
			}
		}
		row, err := s.queries.IdempotencyRecordDeleteExpired(ctx, dbgen.IdempotencyRecordDeleteExpiredParams{
			Now:     s.now(),
			After:   after,
			MaxRows: int32(min(batchSize, 1<<31-1)),
		})
		if err != nil {
			return 0, err
		}
		after = &row.LastExpiresAt
		return row.Deleted, nil
	})
	if stopped != nil {
		return total, fmt.Errorf("pgguard: stopped purging expired idempotency records between batches: %w", stopped)
	}
	if err != nil {
		return total, unavailable("purge expired idempotency records", err)
	}
	return total, nil
}

// deleteInBatches calls deleteBatch, which deletes at most batchSize rows,
// until a call deletes fewer, and returns the rows deleted in all, also
// when a call fails.
func deleteInBatches(batchSize int, deleteBatch func() (int64, error)) (int64, error) {
	var total int64
	for {
		deleted, err := deleteBatch()
		total += deleted
		if err != nil || deleted < int64(batchSize) {
			return total, err
		}
	}
}

// ValidateKey checks an idempotency key: 1 to [MaxKeyLength] characters of
// valid UTF-8 without control characters. The error never echoes the key.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return invalidInput("idempotency key", "empty; send a unique value such as a UUID in the Idempotency-Key header")
	case len(key) > 4*MaxKeyLength || utf8.RuneCountInString(key) > MaxKeyLength:
		return invalidInput("idempotency key", fmt.Sprintf("longer than %d characters", MaxKeyLength))
	case !utf8.ValidString(key):
		return invalidInput("idempotency key", "not valid UTF-8")
	case strings.IndexFunc(key, unicode.IsControl) >= 0:
		return invalidInput("idempotency key", "contains a control character")
	}
	return nil
}

// claimParams validates req and returns the arguments of the claim query
// and the new lock token they contain. The query takes the token as text,
// because pgx encodes a uuid.UUID argument through a failed binary encode
// of its string form, which builds an error value on every call.
func (s *Idempotency) claimParams(req Request) (dbgen.IdempotencyRecordClaimParams, uuid.UUID, error) {
	scope, err := requestScope(req)
	if err != nil {
		return dbgen.IdempotencyRecordClaimParams{}, uuid.UUID{}, err
	}
	route, err := recordRoute(req)
	if err != nil {
		return dbgen.IdempotencyRecordClaimParams{}, uuid.UUID{}, err
	}
	if err := ValidateKey(req.Key); err != nil {
		return dbgen.IdempotencyRecordClaimParams{}, uuid.UUID{}, err
	}
	lease, err := s.requestLease(req)
	if err != nil {
		return dbgen.IdempotencyRecordClaimParams{}, uuid.UUID{}, err
	}

	token, err := uuid.NewRandom()
	if err != nil {
		return dbgen.IdempotencyRecordClaimParams{}, uuid.UUID{}, fmt.Errorf("pgguard: failed to generate a lock token: %w", err)
	}
	params := dbgen.IdempotencyRecordClaimParams{
		Now:           s.now(),
		Scope:         scope.key,
		Route:         route,
		Key:           req.Key,
		RequestHash:   req.Fingerprint(),
		LockToken:     token.String(),
		LeaseMs:       lease.Milliseconds(),
		TtlMs:         s.config.RecordTTL.Milliseconds(),
		AllowTakeover: req.AllowTakeover,
		Ip:            scope.ip,
	}
	if req.OrganizationID != "" {
		params.OrganizationID = &req.OrganizationID
	}
	return params, token, nil
}

func (s *Idempotency) requestLease(req Request) (time.Duration, error) {
	switch {
	case req.Lease == 0:
		return s.config.LeaseDuration, nil
	case req.Lease < time.Millisecond:
		return 0, invalidInput("lease", fmt.Sprintf("%s; use a positive duration of at least 1ms, or 0 for LeaseDuration", req.Lease))
	case req.Lease > s.config.RecordTTL:
		return 0, invalidInput("lease", fmt.Sprintf("%s is longer than RecordTTL %s", req.Lease, s.config.RecordTTL))
	}
	return req.Lease, nil
}

// ownsRecord reports whether the claim query gave the record to the caller
// that sent lockToken.
func ownsRecord(row dbgen.IdempotencyRecordClaimRow, lockToken uuid.UUID) bool {
	return row.LockToken.Valid && row.LockToken.UUID == lockToken
}

// existingRecord returns what req gets for a record that another request
// owns or settled: its stored response or the error that explains why it
// has none. fingerprint is req.Fingerprint(), computed once by the caller.
func (s *Idempotency) existingRecord(row dbgen.IdempotencyRecordClaimRow, fingerprint string, req Request) (*StoredResponse, error) {
	if !fingerprintMatches(row.RequestHash, fingerprint, req) {
		return nil, ErrKeyReused
	}

	switch row.State {
	case stateCompleted:
		return storedResponse(row)
	case stateResultUnavailable:
		return nil, ErrResultUnavailable
	case stateOutcomeUnknown:
		return nil, ErrOutcomeUnknown
	}
	if row.LeaseExpiresAt != nil && row.LeaseExpiresAt.After(row.DbNow) {
		return nil, &InFlightError{RetryAfter: inFlightRetryAfter(row.LeaseExpiresAt.Sub(row.DbNow))}
	}
	return nil, ErrOutcomeUnknown
}

// complete stores response through queries, which may run in a
// transaction, for the record id owned by lockToken.
func (s *Idempotency) complete(ctx context.Context, queries *dbgen.Queries, id int64, lockToken uuid.UUID, response StoredResponse) error {
	if len(response.Body) > s.config.MaxResponseBytes {
		s.config.Logger.LogAttrs(ctx, slog.LevelWarn, "pgguard: idempotent response too large to store; retries get result unavailable",
			slog.Int64("idempotency_record_id", id),
			slog.Int("body_bytes", len(response.Body)),
			slog.Int("max_response_bytes", s.config.MaxResponseBytes))
		return s.markResultUnavailable(ctx, queries, id, lockToken, response.Status)
	}

	header := http.Header{}
	for name, values := range response.Header {
		name = http.CanonicalHeaderKey(name)
		if !s.replayHeaders[name] {
			continue
		}
		if slices.ContainsFunc(values, unstorableHeaderValue) {
			s.config.Logger.LogAttrs(ctx, slog.LevelWarn, "pgguard: idempotent response has a header value that cannot be stored; retries get result unavailable",
				slog.Int64("idempotency_record_id", id),
				slog.String("header", name))
			return s.markResultUnavailable(ctx, queries, id, lockToken, response.Status)
		}
		header[name] = values
	}
	headerJSON, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("pgguard: failed to encode response headers: %w", err)
	}

	params := dbgen.IdempotencyRecordCompleteParams{
		Now:             s.now(),
		ID:              id,
		LockToken:       uuid.NullUUID{UUID: lockToken, Valid: true},
		ResponseStatus:  ptr(int32(response.Status)),
		ResponseHeaders: headerJSON,
	}
	// Text keeps the common case readable in SQL; bytes that Postgres text
	// cannot hold (invalid UTF-8, NUL) go to the bytea column unchanged.
	if utf8.Valid(response.Body) && bytes.IndexByte(response.Body, 0) < 0 {
		params.ResponseBodyJson = ptr(string(response.Body))
	} else {
		params.ResponseBody = response.Body
	}

	updated, err := queries.IdempotencyRecordComplete(ctx, params)
	if err != nil {
		return unavailable("store idempotent response", err)
	}
	if updated == 0 {
		return s.lostClaim(ctx, id)
	}
	return nil
}

func (s *Idempotency) markResultUnavailable(ctx context.Context, queries *dbgen.Queries, id int64, lockToken uuid.UUID, status int) error {
	updated, err := queries.IdempotencyRecordMarkResultUnavailable(ctx, dbgen.IdempotencyRecordMarkResultUnavailableParams{
		Now:            s.now(),
		ID:             id,
		LockToken:      uuid.NullUUID{UUID: lockToken, Valid: true},
		ResponseStatus: ptr(int32(status)),
	})
	if err != nil {
		return unavailable("mark the idempotency record's result unavailable", err)
	}
	if updated == 0 {
		return s.lostClaim(ctx, id)
	}
	return nil
}

// lostClaim logs a settle that matched no record and returns ErrLeaseLost.
func (s *Idempotency) lostClaim(ctx context.Context, id int64) error {
	s.config.Logger.LogAttrs(ctx, slog.LevelWarn, "pgguard: idempotency claim lost before completion",
		slog.Int64("idempotency_record_id", id))
	return ErrLeaseLost
}

// claimError wraps a failed claim query. A serialization failure means that
// the claim ran in a REPEATABLE READ or SERIALIZABLE transaction while
// another request committed the same key. A retry sees that request's
// result, so the caller gets an *InFlightError.
func claimError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "40001" { // serialization_failure
		return &InFlightError{RetryAfter: time.Second}
	}
	return unavailable("claim idempotency key", err)
}

// inFlightRetryAfter rounds the time left on a lease down to whole seconds,
// so a client that waits Retry-After seconds never waits past the lease. It
// returns at least one second, the smallest useful HTTP Retry-After, so
// with less than a second left the wait ends up to a second after the
// lease.
func inFlightRetryAfter(left time.Duration) time.Duration {
	if left < time.Second {
		return time.Second
	}
	return left.Truncate(time.Second)
}

// unstorableHeaderValue reports whether a header value would not survive
// the jsonb column of stored headers: jsonb rejects the escape \u0000, and
// encoding/json replaces invalid UTF-8 with U+FFFD.
func unstorableHeaderValue(value string) bool {
	return !utf8.ValidString(value) || strings.IndexByte(value, 0) >= 0
}

func validateStatus(status int) error {
	if status < 100 || status > 599 {
		return invalidInput("response status", fmt.Sprintf("%d is outside 100..599", status))
	}
	return nil
}

type scope struct {
	key string
	ip  *netip.Prefix
}

func requestScope(req Request) (scope, error) {
	switch {
	case req.OrganizationID != "":
		if err := validateLabel("organization id", req.OrganizationID); err != nil {
			return scope{}, err
		}
		return scope{key: "org:" + req.OrganizationID}, nil
	case req.Principal != "":
		if err := validateLabel("principal", req.Principal); err != nil {
			return scope{}, err
		}
		return scope{key: "principal:" + req.Principal}, nil
	case req.ClientIP != "":
		// Anonymous callers are scoped by their exact address, not a
		// network, so two callers never share records.
		source, err := NormalizeSource(req.ClientIP, 128)
		if err != nil {
			return scope{}, err
		}
		return scope{key: "ip:" + source.Addr().String(), ip: source}, nil
	}
	return scope{}, invalidInput("scope", "none given; set OrganizationID, Principal or ClientIP so keys of different callers stay apart")
}

func validateLabel(field, value string) error {
	// Scope, route and key share one unique index entry, which Postgres
	// limits to about 2700 bytes: 255 + 1024 + 4 * 255 bytes stays below.
	limit := 255
	if field == "route" {
		limit = 1024
	}
	switch {
	case value == "":
		return invalidInput(field, "empty")
	case len(value) > limit:
		return invalidInput(field, fmt.Sprintf("%d bytes is longer than the maximum of %d", len(value), limit))
	case !utf8.ValidString(value):
		return invalidInput(field, "not valid UTF-8")
	case strings.IndexFunc(value, unicode.IsControl) >= 0:
		return invalidInput(field, "contains a control character")
	}
	return nil
}

func storedResponse(row dbgen.IdempotencyRecordClaimRow) (*StoredResponse, error) {
	stored := &StoredResponse{Header: http.Header{}}
	if row.ResponseStatus != nil {
		stored.Status = int(*row.ResponseStatus)
	}
	if len(row.ResponseHeaders) > 0 {
		header, err := decodeStoredHeaders(row.ResponseHeaders)
		if err != nil {
			return nil, fmt.Errorf("pgguard: stored response headers of record %d are not valid: %w", row.ID, err)
		}
		stored.Header = header
	}
	switch {
	case row.ResponseBodyJson != nil:
		stored.Body = []byte(*row.ResponseBodyJson)
	case row.ResponseBody != nil:
		stored.Body = row.ResponseBody
	default:
		stored.Body = []byte{}
	}
	return stored, nil
}

func (s *Idempotency) now() *time.Time {
	if s.config.Now == nil {
		return nil
	}
	t := s.config.Now()
	return &t
}

func ptr[T any](v T) *T { return &v }
