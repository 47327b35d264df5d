package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// Idempotency operations.
const (
	opFirstRequest = "idempotency first request"
	opReplay       = "idempotency replay"
	opInFlight     = "idempotency in-flight conflict"
	opPurge        = "idempotency purge"
)

// storedKeys is how many completed keys the replay workloads cycle through,
// and how many claimed keys the in-flight workloads do.
const storedKeys = 1000

// seedClients is how many keys the seeding creates at a time.
const seedClients = 4

// organizations is how many tenants the keys are spread over.
const organizations = 100

// orderRoute and orderBody make up the request every idempotency workload
// sends: a small JSON order, as an API client would post it.
const orderRoute = "/orders"

var orderBody = []byte(`{"sku":"BOOK-0451","quantity":1,"note":"gift wrap"}`)

// Key prefixes of the idempotency workloads.
const (
	keyPrefixFirst    = "first-"
	keyPrefixReplay   = "replay-"
	keyPrefixInFlight = "in-flight-"
)

func orderRequest(prefix string, key int64) service.Request {
	return service.Request{
		Key:            prefix + strconv.FormatInt(key, 10),
		Method:         http.MethodPost,
		Route:          orderRoute,
		Body:           orderBody,
		OrganizationID: "org-" + strconv.FormatInt(key%organizations, 10),
	}
}

// orderResponse is the response the handler of every first request
// returns: 201 with a Location and a small JSON body.
func orderResponse(key int64) service.StoredResponse {
	id := strconv.FormatInt(key, 10)
	return service.StoredResponse{
		Status: http.StatusCreated,
		Header: http.Header{
			"Content-Type": {"application/json"},
			"Location":     {"/orders/" + id},
		},
		Body: []byte(`{"id":` + id + `,"status":"created","sku":"BOOK-0451","quantity":1}`),
	}
}

// pgguardIdempotencyWorkloads returns the idempotency operations through
// service.Idempotency in lease mode. The handler does no database work, so
// the round trips counted are pgguard's own.
func pgguardIdempotencyWorkloads(idempotency *service.Idempotency) []*workload {
	replay := func(ctx context.Context, key int64) error {
		_, stored, err := idempotency.Begin(ctx, orderRequest(keyPrefixReplay, key%storedKeys))
		if err != nil {
			return err
		}
		if stored == nil || stored.Status != http.StatusCreated {
			return errors.New("Begin of a completed key returned no stored response")
		}
		return nil
	}
	inFlight := func(ctx context.Context, key int64) error {
		_, _, err := idempotency.Begin(ctx, orderRequest(keyPrefixInFlight, key%storedKeys))
		if !errors.Is(err, service.ErrInFlight) {
			return fmt.Errorf("Begin of a claimed key returned %v, expected an *InFlightError", err)
		}
		return nil
	}
	return []*workload{
		firstRequestWorkload(idempotency, keyPrefixFirst),
		{operation: opReplay, design: designPgguard, op: replay},
		{operation: opInFlight, design: designPgguard, op: inFlight},
	}
}

// firstRequestWorkload returns first requests through idempotency: Begin
// claims a new key "<prefix><n>" and Complete stores the handler's
// response.
func firstRequestWorkload(idempotency *service.Idempotency, prefix string) *workload {
	first := func(ctx context.Context, key int64) error {
		claim, _, err := idempotency.Begin(ctx, orderRequest(prefix, key))
		if err != nil {
			return err
		}
		if claim == nil {
			return errors.New("Begin of a new key returned no claim")
		}
		return claim.Complete(ctx, orderResponse(key))
	}
	return &workload{operation: opFirstRequest, design: designPgguard, op: first}
}

// seedIdempotencyKeys completes replay keys 0 to count-1 and claims as many
// in-flight keys through pgguard itself, with leases longer than any run,
// and creates the same keys in the usual design's table.
func seedIdempotencyKeys(ctx context.Context, db *pgxpool.Pool, count int64) error {
	idempotency, err := service.NewIdempotency(db, service.IdempotencyConfig{LeaseDuration: 2 * time.Hour})
	if err != nil {
		return err
	}
	seed := func(key int64) error {
		claim, _, err := idempotency.Begin(ctx, orderRequest(keyPrefixReplay, key))
		if err != nil {
			return fmt.Errorf("failed to claim replay key %d: %w", key, err)
		}
		if err := claim.Complete(ctx, orderResponse(key)); err != nil {
			return fmt.Errorf("failed to complete replay key %d: %w", key, err)
		}
		if _, _, err := idempotency.Begin(ctx, orderRequest(keyPrefixInFlight, key)); err != nil {
			return fmt.Errorf("failed to claim in-flight key %d: %w", key, err)
		}
		return nil
	}

	// Several keys at a time, as several clients would create them.
	var next atomic.Int64
	errs := make([]error, seedClients)
	var wg sync.WaitGroup
	for client := range seedClients {
		wg.Go(func() {
			for key := next.Add(1) - 1; key < count && errs[client] == nil; key = next.Add(1) - 1 {
				errs[client] = seed(key)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return seedUsualIdempotencyKeys(ctx, db, count)
}

// usualIdempotencyWorkloads returns the same operations in the usual
// design: a transaction reads the record with SELECT ... FOR UPDATE,
// decides in Go, inserts a claim when there is none and commits; after the
// handler an UPDATE stores the response.
func usualIdempotencyWorkloads(pool *pgxpool.Pool) []*workload {
	first := func(ctx context.Context, key int64) error {
		req := orderRequest(keyPrefixFirst, key)
		state, err := usualClaim(ctx, pool, req)
		if err != nil {
			return err
		}
		if state != usualStateClaimed {
			return fmt.Errorf("claim of a new key found state %q", state)
		}
		return usualComplete(ctx, pool, req, orderResponse(key))
	}
	replay := func(ctx context.Context, key int64) error {
		state, err := usualClaim(ctx, pool, orderRequest(keyPrefixReplay, key%storedKeys))
		if err != nil {
			return err
		}
		if state != "completed" {
			return fmt.Errorf("claim of a completed key found state %q", state)
		}
		return nil
	}
	inFlight := func(ctx context.Context, key int64) error {
		state, err := usualClaim(ctx, pool, orderRequest(keyPrefixInFlight, key%storedKeys))
		if err != nil {
			return err
		}
		if state != "in_progress" {
			return fmt.Errorf("claim of a claimed key found state %q", state)
		}
		return nil
	}
	return []*workload{
		{operation: opFirstRequest, design: designUsual, op: first},
		{operation: opReplay, design: designUsual, op: replay},
		{operation: opInFlight, design: designUsual, op: inFlight},
	}
}

// usualStateClaimed is the state usualClaim returns after inserting a claim.
const usualStateClaimed = "claimed"

// usualClaim returns the state of req's record, decoding a stored
// response as a replay would, or inserts a claim and returns
// usualStateClaimed.
func usualClaim(ctx context.Context, pool *pgxpool.Pool, req service.Request) (string, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // After Commit it only returns ErrTxClosed.

	scope := "org:" + req.OrganizationID
	route := req.Method + " " + req.Route
	hash := service.Fingerprint(req.Method, req.Route, req.Body)

	var state, storedHash string
	var headers []byte
	err = tx.QueryRow(ctx, `
		SELECT state, request_hash, response_headers
		FROM bench_usual_idempotency
		WHERE scope = $1 AND route = $2 AND key = $3
		FOR UPDATE`,
		scope, route, req.Key,
	).Scan(&state, &storedHash, &headers)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		_, err = tx.Exec(ctx, `
			INSERT INTO bench_usual_idempotency (scope, route, key, request_hash, state, expires_at)
			VALUES ($1, $2, $3, $4, 'in_progress', now() + interval '1 day')`,
			scope, route, req.Key, hash)
		if err != nil {
			return "", err
		}
		state = usualStateClaimed
	case err != nil:
		return "", err
	case storedHash != hash:
		return "", service.ErrKeyReused
	case state == "completed":
		header := http.Header{}
		if err := json.Unmarshal(headers, &header); err != nil {
			return "", err
		}
	}
	return state, tx.Commit(ctx)
}

func usualComplete(ctx context.Context, pool *pgxpool.Pool, req service.Request, response service.StoredResponse) error {
	headers, err := json.Marshal(response.Header)
	if err != nil {
		return err
	}
	_, err = pool.Exec(ctx, `
		UPDATE bench_usual_idempotency
		SET state = 'completed', response_status = $4, response_headers = $5, response_body = $6
		WHERE scope = $1 AND route = $2 AND key = $3`,
		"org:"+req.OrganizationID, req.Method+" "+req.Route, req.Key,
		response.Status, headers, string(response.Body))
	return err
}

// seedUsualIdempotencyKeys creates the usual design's completed replay keys
// and claimed in-flight keys, matching seedIdempotencyKeys.
func seedUsualIdempotencyKeys(ctx context.Context, pool *pgxpool.Pool, count int64) error {
	hash := service.Fingerprint(http.MethodPost, orderRoute, orderBody)
	_, err := pool.Exec(ctx, `
		INSERT INTO bench_usual_idempotency (
			scope, route, key, request_hash, state,
			response_status, response_headers, response_body, expires_at
		)
		SELECT
			'org:org-' || n % $3::bigint, 'POST /orders', p.prefix || n, $2, p.state,
			CASE WHEN p.state = 'completed' THEN 201 END,
			CASE WHEN p.state = 'completed' THEN '{"Content-Type":["application/json"]}'::jsonb END,
			CASE WHEN p.state = 'completed' THEN '{"id":' || n || ',"status":"created"}' END,
			now() + interval '1 day'
		FROM generate_series(0, $1::bigint - 1) n
		CROSS JOIN (VALUES ($4, 'completed'), ($5, 'in_progress')) p (prefix, state)`,
		count, hash, organizations, keyPrefixReplay, keyPrefixInFlight)
	if err != nil {
		return fmt.Errorf("failed to seed the usual design's idempotency keys: %w", err)
	}
	return nil
}
