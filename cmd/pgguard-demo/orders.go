package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/idempotencyhttp"
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
	case strings.ContainsFunc(*req.Item, unicode.IsControl):
		// Postgres text cannot hold NUL, and no item name needs a control
		// character.
		return "", 0, errors.New(`"item" contains a control character.`)
	case req.Quantity == nil || *req.Quantity < 1 || *req.Quantity > math.MaxInt32:
		return "", 0, fmt.Errorf(`"quantity" must be an integer from 1 to %d.`, math.MaxInt32)
	}
	return *req.Item, int32(*req.Quantity), nil
}

// problemKeyMissing and problemKeyInvalid are the middleware's problems
// for a request without a usable Idempotency-Key, under this API's type
// base. The other idempotency problems are in problem.go.
const (
	problemKeyMissing = problemTypeBase + idempotencyhttp.ProblemKeyMissing
	problemKeyInvalid = problemTypeBase + idempotencyhttp.ProblemKeyInvalid
)

// createOrderRoute returns POST /orders behind the idempotency middleware.
// Keys are scoped by X-Organization-ID, and JSON bodies are compared after
// canonicalization, so a retry that reorders members still replays.
func (s *server) createOrderRoute() (http.Handler, error) {
	middleware, err := idempotencyhttp.New(idempotencyhttp.Config{
		Idempotency:     s.idempotency,
		Scope:           organizationScope,
		ProblemTypeBase: problemTypeBase,
		Logger:          s.logger,
	})
	if err != nil {
		return nil, err
	}
	route, err := middleware.Route(
		idempotencyhttp.JSONBody(),
		idempotencyhttp.MaxRequestBytes(maxBodyBytes),
	)
	if err != nil {
		return nil, err
	}
	return route(http.HandlerFunc(s.handleCreateOrder)), nil
}

// organizationScope scopes idempotency keys by the organization that
// places the order. A request without one, or with the header sent more
// than once, is rejected with 400.
func organizationScope(r *http.Request) (idempotencyhttp.Scope, error) {
	values := r.Header.Values("X-Organization-ID")
	switch {
	case len(values) > 1:
		return idempotencyhttp.Scope{}, fmt.Errorf("The X-Organization-ID header is sent %d times. Send it once.", len(values))
	case len(values) == 0 || values[0] == "":
		return idempotencyhttp.Scope{}, errors.New("The X-Organization-ID header is missing. Send the id of the organization that places the order.")
	}
	return idempotencyhttp.Scope{OrganizationID: values[0]}, nil
}

// handleCreateOrder creates an order. The middleware has already claimed
// the Idempotency-Key, and it stores the 201 for replay. An invalid body
// gets 400, which releases the key, so a corrected retry with the same key
// runs.
func (s *server) handleCreateOrder(w http.ResponseWriter, r *http.Request) {
	organizationID := r.Header.Get("X-Organization-ID")
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeInvalidRequest(w, "The request body could not be read: "+err.Error())
		return
	}
	item, quantity, err := validateCreateOrder(body)
	if err != nil {
		writeInvalidRequest(w, err.Error())
		return
	}

	if err := sleepContext(r.Context(), s.orderDelay); err != nil {
		// The client went away before anything was inserted.
		idempotencyhttp.SetOutcome(r.Context(), idempotencyhttp.OutcomeRelease)
		return
	}

	created, err := s.orders.insert(r.Context(), organizationID, item, quantity)
	if err != nil {
		// NOTE: an error here almost always means nothing was inserted, but
		// a connection lost during COMMIT leaves that unknown. Releasing
		// lets a retry insert again, which the demo accepts.
		s.logger.ErrorContext(r.Context(), "failed to create order", "error", err, "organization_id", organizationID)
		idempotencyhttp.SetOutcome(r.Context(), idempotencyhttp.OutcomeRelease)
		writeInternalError(w)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/orders/"+strconv.FormatInt(created.ID, 10))
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(encodeOrder(created))
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
