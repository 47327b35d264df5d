package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/pgguard/pgguard/dbgen"
)

// MaxKeyLength is the longest idempotency key accepted, in characters.
const MaxKeyLength = 255

// fingerprintVersion prefixes every stored request hash, so a later change
// of the fingerprint can tell old hashes from new ones.
const fingerprintVersion = "v1"

// DefaultReplayHeaders are the response headers stored and replayed when
// IdempotencyConfig.ReplayHeaders is nil. Set-Cookie is never stored.
var DefaultReplayHeaders = []string{"Content-Type", "Location", "ETag", "Content-Language"}

// IdempotencyConfig is the policy of an [Idempotency]. A zero field takes
// its default.
type IdempotencyConfig struct {
	// LeaseDuration is how long a claim holds a key before another request
	// may take it over (see Request.AllowTakeover). Defaults to 60 seconds.
	// A negative value is a configuration error.
	LeaseDuration time.Duration

	// RecordTTL is how long a record is kept and replayed after it was
	// claimed. Defaults to 24 hours.
	RecordTTL time.Duration

	// ReplayHeaders lists the response headers stored for replay, in any
	// case. Defaults to [DefaultReplayHeaders]. Set-Cookie is dropped even
	// when listed, because a replayed session cookie would leak a session.
	ReplayHeaders []string

	// Now, when set, supplies the time of every decision instead of the
	// database clock. Tests use it to move time without sleeping; leave it
	// nil in production.
	Now func() time.Time

	// Logger receives lost claims and errors. Defaults to discarding them.
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
	}
	for _, name := range c.ReplayHeaders {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == ':' || r >= unicode.MaxASCII }) {
			return invalidConfig("ReplayHeaders", "contains %q, which is not a header name", name)
		}
	}
	return nil
}

// Idempotency stores one response per idempotency key, so a retried request
// gets the first response back instead of running twice. Use it in two
// steps: [Idempotency.Begin] before the handler runs, then [Claim.Complete]
// with the response, or [Claim.Release] if the handler failed before it
// changed anything.
type Idempotency struct {
	queries       *dbgen.Queries
	config        IdempotencyConfig
	replayHeaders map[string]bool
}

// NewIdempotency returns an Idempotency that stores its records through db,
// usually a *pgxpool.Pool. It returns an error wrapping [ErrInvalidConfig]
// when a config field is out of range.
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

	return &Idempotency{queries: dbgen.New(db), config: config, replayHeaders: replayHeaders}, nil
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
}

// StoredResponse is a response stored under a key and replayed for retries.
type StoredResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// Claim is the right to run the handler for a key, held until its lease
// ends. Settle it with exactly one of Complete or Release.
type Claim struct {
	idempotency *Idempotency
	id          int64
	lockToken   uuid.UUID
	// LeaseExpiresAt is when another request may take the key over.
	LeaseExpiresAt time.Time
	settled        atomic.Bool
}

// Begin claims req's key before the handler runs. It returns exactly one of:
//   - a *Claim: run the handler, then Complete or Release the claim;
//   - a *StoredResponse: the key was completed before, send it back as is;
//   - an error: [ErrKeyReused] when the key was used for a different
//     request, an *InFlightError ([ErrInFlight]) while the first request
//     runs, [ErrOutcomeUnknown] when it lost its lease, an *InputError
//     ([ErrInvalidInput]) for a bad key, method, route or scope, or a
//     database error.
//
// A record whose RecordTTL has passed is replaced by a new claim.
func (s *Idempotency) Begin(ctx context.Context, req Request) (*Claim, *StoredResponse, error) {
	scope, err := requestScope(req)
	if err != nil {
		return nil, nil, err
	}
	route, err := requestRoute(req)
	if err != nil {
		return nil, nil, err
	}
	if err := ValidateKey(req.Key); err != nil {
		return nil, nil, err
	}

	token, err := uuid.NewRandom()
	if err != nil {
		return nil, nil, fmt.Errorf("pgguard: failed to generate a lock token: %w", err)
	}
	params := dbgen.IdempotencyRecordClaimParams{
		Now:           s.now(),
		Scope:         scope.key,
		Route:         route,
		Key:           req.Key,
		RequestHash:   Fingerprint(req.Method, req.Route, req.Body),
		LockToken:     token,
		LeaseMs:       s.config.LeaseDuration.Milliseconds(),
		TtlMs:         s.config.RecordTTL.Milliseconds(),
		AllowTakeover: req.AllowTakeover,
		Ip:            scope.ip,
	}
	if req.OrganizationID != "" {
		params.OrganizationID = &req.OrganizationID
	}

	row, err := s.queries.IdempotencyRecordClaim(ctx, params)
	if err != nil {
		return nil, nil, fmt.Errorf("pgguard: failed to claim idempotency key: %w", err)
	}

	if row.LockToken.Valid && row.LockToken.UUID == token {
		return &Claim{idempotency: s, id: row.ID, lockToken: token, LeaseExpiresAt: *row.LeaseExpiresAt}, nil, nil
	}
	if row.RequestHash != params.RequestHash {
		return nil, nil, ErrKeyReused
	}
	if row.State == "completed" {
		stored, err := storedResponse(row)
		if err != nil {
			return nil, nil, err
		}
		return nil, stored, nil
	}
	if row.LeaseExpiresAt != nil && row.LeaseExpiresAt.After(row.DbNow) {
		return nil, nil, &InFlightError{RetryAfter: retryAfter(row.LeaseExpiresAt.Sub(row.DbNow))}
	}
	return nil, nil, ErrOutcomeUnknown
}

// Complete stores the handler's response for replay and ends the claim.
// Only headers listed in ReplayHeaders are stored. It returns [ErrLeaseLost]
// when the lease ran out and another request took the key over: that
// request's result stands and this one is not stored.
func (c *Claim) Complete(ctx context.Context, response StoredResponse) error {
	if response.Status < 100 || response.Status > 599 {
		return invalidInput("response status", fmt.Sprintf("%d is outside 100..599", response.Status))
	}
	if !c.settled.CompareAndSwap(false, true) {
		return ErrClaimSettled
	}
	s := c.idempotency

	header := http.Header{}
	for name, values := range response.Header {
		if s.replayHeaders[http.CanonicalHeaderKey(name)] {
			header[http.CanonicalHeaderKey(name)] = values
		}
	}
	headerJSON, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("pgguard: failed to encode response headers: %w", err)
	}

	params := dbgen.IdempotencyRecordCompleteParams{
		Now:             s.now(),
		ID:              c.id,
		LockToken:       uuid.NullUUID{UUID: c.lockToken, Valid: true},
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

	updated, err := s.queries.IdempotencyRecordComplete(ctx, params)
	if err != nil {
		return fmt.Errorf("pgguard: failed to store idempotent response: %w", err)
	}
	if updated == 0 {
		s.config.Logger.LogAttrs(ctx, slog.LevelWarn, "pgguard: idempotency claim lost before completion",
			slog.Int64("idempotency_record_id", c.id))
		return ErrLeaseLost
	}
	return nil
}

// Release gives the key up so that a retry runs the handler again. Call it
// when the handler failed before it changed anything. It returns
// [ErrLeaseLost] when another request already took the key over.
func (c *Claim) Release(ctx context.Context) error {
	if !c.settled.CompareAndSwap(false, true) {
		return ErrClaimSettled
	}
	s := c.idempotency

	deleted, err := s.queries.IdempotencyRecordRelease(ctx, dbgen.IdempotencyRecordReleaseParams{
		ID:        c.id,
		LockToken: uuid.NullUUID{UUID: c.lockToken, Valid: true},
	})
	if err != nil {
		return fmt.Errorf("pgguard: failed to release idempotency key: %w", err)
	}
	if deleted == 0 {
		return ErrLeaseLost
	}
	return nil
}

// PurgeExpired deletes records past their RecordTTL, batchSize rows per
// statement, until none is left, and returns how many it deleted.
func (s *Idempotency) PurgeExpired(ctx context.Context, batchSize int) (int64, error) {
	if batchSize < 1 {
		return 0, invalidInput("batch size", fmt.Sprintf("%d; use a positive number of rows, for example 1000", batchSize))
	}

	var total int64
	for {
		deleted, err := s.queries.IdempotencyRecordDeleteExpired(ctx, dbgen.IdempotencyRecordDeleteExpiredParams{
			Now:     s.now(),
			MaxRows: int32(batchSize),
		})
		total += deleted
		if err != nil {
			return total, fmt.Errorf("pgguard: failed to purge expired idempotency records: %w", err)
		}
		if deleted < int64(batchSize) {
			return total, nil
		}
	}
}

// Fingerprint returns the versioned SHA-256 fingerprint of a request:
// "v1:" and the hex digest of the method, the route template and the exact
// body bytes. Method and route cannot contain NUL, so NUL separators keep
// the fields apart.
func Fingerprint(method, route string, body []byte) string {
	hash := sha256.New()
	hash.Write([]byte(method))
	hash.Write([]byte{0})
	hash.Write([]byte(route))
	hash.Write([]byte{0})
	hash.Write(body)
	return fingerprintVersion + ":" + hex.EncodeToString(hash.Sum(nil))
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

func requestRoute(req Request) (string, error) {
	if req.Method == "" || strings.ContainsFunc(req.Method, func(r rune) bool { return r <= ' ' || r >= unicode.MaxASCII }) {
		return "", invalidInput("method", fmt.Sprintf("%q is not an HTTP method", req.Method))
	}
	if err := validateLabel("route", req.Route); err != nil {
		return "", err
	}
	return req.Method + " " + req.Route, nil
}

func validateLabel(field, value string) error {
	switch {
	case value == "":
		return invalidInput(field, "empty")
	case len(value) > 1024:
		return invalidInput(field, fmt.Sprintf("%d bytes is longer than the maximum of 1024", len(value)))
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
		if err := json.Unmarshal(row.ResponseHeaders, &stored.Header); err != nil {
			return nil, fmt.Errorf("pgguard: stored response headers of record %d are not valid: %w", row.ID, err)
		}
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
