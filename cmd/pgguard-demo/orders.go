package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// maxItemLength is the longest item name accepted, in characters.
const maxItemLength = 200

// order is a row of the demo's orders table and the JSON body of its
// responses.
type order struct {
	ID             int64  `json:"id"`
	Item           string `json:"item"`
	Quantity       int32  `json:"quantity"`
	OrganizationID string `json:"organization_id"`
}

// orderStore reads and writes the orders table.
type orderStore struct {
	pool *pgxpool.Pool
}

func (s *orderStore) insert(ctx context.Context, organizationID, item string, quantity int32) (order, error) {
	o := order{Item: item, Quantity: quantity, OrganizationID: organizationID}
	err := s.pool.QueryRow(ctx,
		`INSERT INTO orders (organization_id, item, quantity) VALUES ($1, $2, $3) RETURNING id`,
		organizationID, item, quantity,
	).Scan(&o.ID)
	if err != nil {
		return order{}, fmt.Errorf("failed to insert order: %w", err)
	}
	return o, nil
}

// get returns the order with id if it belongs to organizationID, and
// found false otherwise, so one organization cannot read another's orders.
func (s *orderStore) get(ctx context.Context, organizationID string, id int64) (o order, found bool, err error) {
	err = s.pool.QueryRow(ctx,
		`SELECT id, organization_id, item, quantity FROM orders WHERE id = $1 AND organization_id = $2`,
		id, organizationID,
	).Scan(&o.ID, &o.OrganizationID, &o.Item, &o.Quantity)
	if errors.Is(err, pgx.ErrNoRows) {
		return order{}, false, nil
	}
	if err != nil {
		return order{}, false, fmt.Errorf("failed to read order %d: %w", id, err)
	}
	return o, true, nil
}

func (s *orderStore) countByOrganization(ctx context.Context, organizationID string) (int, error) {
	var count int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE organization_id = $1`, organizationID).Scan(&count)
	if err != nil {
		return 0, fmt.Errorf("failed to count the orders of organization %q: %w", organizationID, err)
	}
	return count, nil
}

type createOrderRequest struct {
	Item     *string `json:"item"`
	Quantity *int64  `json:"quantity"`
}

// validateCreateOrder decodes and checks a POST /orders body. The error
// message is meant for the client.
func validateCreateOrder(body []byte) (item string, quantity int32, err error) {
	var req createOrderRequest
	if err := decodeJSON(body, &req); err != nil {
		return "", 0, fmt.Errorf("The body is not a valid order: %v.", err)
	}
	switch {
	case req.Item == nil || *req.Item == "":
		return "", 0, errors.New(`"item" must be a non-empty string.`)
	case utf8.RuneCountInString(*req.Item) > maxItemLength:
		return "", 0, fmt.Errorf(`"item" is longer than the maximum of %d characters.`, maxItemLength)
	case req.Quantity == nil || *req.Quantity < 1 || *req.Quantity > math.MaxInt32:
		return "", 0, fmt.Errorf(`"quantity" must be an integer from 1 to %d.`, math.MaxInt32)
	}
	return *req.Item, int32(*req.Quantity), nil
}

// handleCreateOrder creates an order at most once per Idempotency-Key.
//
// The key is claimed before the body is validated, because a key reused
// with another body must get 422 even when that body is invalid. An invalid
// body releases the claim, so a corrected retry with the same key runs.
func (s *server) handleCreateOrder(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		writeInvalidRequest(w, "The Idempotency-Key header is missing. Send a unique value, such as a UUID, and reuse it only to retry this request.")
		return
	}
	organizationID := r.Header.Get("X-Organization-ID")
	if organizationID == "" {
		writeInvalidRequest(w, "The X-Organization-ID header is missing. Send the id of the organization that places the order.")
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}

	claim, stored, err := s.idempotency.Begin(r.Context(), service.Request{
		Key:            key,
		Method:         r.Method,
		Route:          routePath(r.Pattern),
		Body:           body,
		OrganizationID: organizationID,
	})
	if err != nil {
		s.writeIdempotencyError(w, r, err)
		return
	}
	if stored != nil {
		writeStoredResponse(w, stored)
		return
	}

	// From here on the claim must be settled even if the client hangs up,
	// or the key stays blocked until its lease runs out.
	settleCtx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
	defer cancel()

	item, quantity, err := validateCreateOrder(body)
	if err != nil {
		s.releaseClaim(settleCtx, claim)
		writeInvalidRequest(w, err.Error())
		return
	}

	if err := sleepContext(r.Context(), s.orderDelay); err != nil {
		s.releaseClaim(settleCtx, claim)
		return
	}

	created, err := s.orders.insert(r.Context(), organizationID, item, quantity)
	if err != nil {
		// NOTE: an error here almost always means nothing was inserted, but
		// a connection lost during COMMIT leaves that unknown. Releasing
		// lets a retry insert again, which the demo accepts.
		s.logger.ErrorContext(r.Context(), "failed to create order", "error", err, "organization_id", organizationID)
		s.releaseClaim(settleCtx, claim)
		writeInternalError(w)
		return
	}

	response := service.StoredResponse{
		Status: http.StatusCreated,
		Header: http.Header{
			"Content-Type": {"application/json"},
			"Location":     {"/orders/" + strconv.FormatInt(created.ID, 10)},
		},
		Body: encodeOrder(created),
	}
	if err := claim.Complete(settleCtx, response); err != nil {
		// The order exists, so this client still gets its 201. Retries
		// with this key get 409 until the record expires, because the key
		// has no stored response to replay.
		s.logger.ErrorContext(settleCtx, "failed to store the response for the idempotency key",
			"error", err, "order_id", created.ID, "organization_id", organizationID)
	}
	writeResponse(w, response)
}

// writeIdempotencyError maps an error of Idempotency.Begin to a response.
func (s *server) writeIdempotencyError(w http.ResponseWriter, r *http.Request, err error) {
	var inFlight *service.InFlightError
	var invalid *service.InputError
	switch {
	case errors.Is(err, service.ErrKeyReused):
		writeProblem(w, problem{
			Type:   problemKeyReused,
			Title:  "Idempotency key reused",
			Status: http.StatusUnprocessableEntity,
			Detail: "This Idempotency-Key was used for a request with a different body. Use a new key for a new request.",
		})
	case errors.As(err, &inFlight):
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(inFlight.RetryAfter)))
		writeProblem(w, problem{
			Type:   problemRequestInFlight,
			Title:  "Request in progress",
			Status: http.StatusConflict,
			Detail: "A request with this Idempotency-Key is still running. Retry after the number of seconds in the Retry-After header to get its response.",
		})
	case errors.Is(err, service.ErrOutcomeUnknown):
		writeProblem(w, problem{
			Type:   problemOutcomeUnknown,
			Title:  "Outcome of the earlier request unknown",
			Status: http.StatusConflict,
			Detail: "An earlier request with this Idempotency-Key stopped before it stored a response, so it may or may not have created the order. Check the organization's orders before you retry with a new key.",
		})
	case errors.As(err, &invalid):
		writeInvalidRequest(w, fmt.Sprintf("Invalid %s: %s.", invalid.Field, invalid.Problem))
	default:
		s.logger.ErrorContext(r.Context(), "failed to claim idempotency key", "error", err)
		writeInternalError(w)
	}
}

func (s *server) releaseClaim(ctx context.Context, claim *service.Claim) {
	if err := claim.Release(ctx); err != nil {
		// The key stays blocked until its lease runs out. Nothing else is
		// affected, because the order was not created.
		s.logger.ErrorContext(ctx, "failed to release idempotency key", "error", err, "lease_expires_at", claim.LeaseExpiresAt)
	}
}

// writeStoredResponse replays a stored response byte for byte and marks it
// with Idempotent-Replayed: true.
func writeStoredResponse(w http.ResponseWriter, stored *service.StoredResponse) {
	w.Header().Set("Idempotent-Replayed", "true")
	writeResponse(w, *stored)
}

func writeResponse(w http.ResponseWriter, response service.StoredResponse) {
	header := w.Header()
	for name, values := range response.Header {
		header[name] = values
	}
	w.WriteHeader(response.Status)
	_, _ = w.Write(response.Body)
}

// handleGetOrder returns an order of the organization in X-Organization-ID.
func (s *server) handleGetOrder(w http.ResponseWriter, r *http.Request) {
	organizationID := r.Header.Get("X-Organization-ID")
	if organizationID == "" {
		writeInvalidRequest(w, "The X-Organization-ID header is missing. Send the id of the organization that owns the order.")
		return
	}

	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	found := false
	var o order
	if err == nil {
		o, found, err = s.orders.get(r.Context(), organizationID, id)
		if err != nil {
			s.logger.ErrorContext(r.Context(), "failed to read order", "error", err, "order_id", id)
			writeInternalError(w)
			return
		}
	}
	if !found {
		writeProblem(w, problem{
			Type:   problemOrderNotFound,
			Title:  "Order not found",
			Status: http.StatusNotFound,
			Detail: "No order with this id belongs to the organization in X-Organization-ID.",
		})
		return
	}

	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(encodeOrder(o))
}

// encodeOrder returns the JSON body of an order response, ending in a
// newline like the other response bodies.
func encodeOrder(o order) []byte {
	body, err := json.Marshal(o)
	if err != nil {
		panic(err) // strings and integers always encode
	}
	return append(body, '\n')
}

// sleepContext waits for d or until ctx ends, whichever comes first, and
// returns ctx's error in the second case.
func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
