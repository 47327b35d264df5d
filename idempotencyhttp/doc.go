// Package idempotencyhttp is net/http middleware that makes a route
// idempotent with the Idempotency-Key request header, on top of
// [service.Idempotency].
//
// Build one [Middleware] per application and one handler wrapper per route:
//
//	m, err := idempotencyhttp.New(idempotencyhttp.Config{Idempotency: idempotency})
//	orders, err := m.Route(idempotencyhttp.JSONBody())
//	mux.Handle("POST /orders", orders(createOrder))
//
// For each request with a key, the middleware reads the body (at most 1 MiB
// by default) and claims the key. A new key runs the handler and stores
// its response. A key that an earlier request with the same scope, route,
// path values and body completed replays the stored response. Every
// rejection is an RFC 9457 problem details response
// (application/problem+json) with a stable type and Cache-Control:
// no-store. See docs/idempotency.md for the problem types, the key grammar
// and a comparison with other implementations.
//
// Routes registered on [http.ServeMux] are identified by their pattern
// (Request.Pattern) and path values. With other routers, whose requests have
// no pattern, the route is the escaped request path.
package idempotencyhttp
