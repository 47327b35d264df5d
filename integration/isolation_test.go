package integration

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

// isolationTenant is one caller of the property test. Kind selects the
// Scope field its requests fill in.
type isolationTenant struct {
	kind string // "org", "principal" or "ip"
	id   string
}

// isolationRequest is what identifies a request's record: the tenant, the
// route with its path and the key.
type isolationRequest struct {
	tenant isolationTenant
	method string
	path   string
	key    string
}

// isolationScope reads the tenant from test headers, the way an
// application reads it from its authentication.
func isolationScope(r *http.Request) (idempotencyhttp.Scope, error) {
	switch r.Header.Get("X-Tenant-Kind") {
	case "org":
		return idempotencyhttp.Scope{OrganizationID: r.Header.Get("X-Tenant-ID")}, nil
	case "principal":
		return idempotencyhttp.Scope{Principal: r.Header.Get("X-Tenant-ID")}, nil
	}
	return idempotencyhttp.Scope{ClientIP: r.Header.Get("X-Tenant-ID")}, nil
}

// TestIdempotencyTenantIsolation sends many concurrent requests from
// tenants whose names collide across scope kinds, with keys from a
// two-letter alphabet and random routes, and checks that every response
// was produced for a request of the same tenant, route, path and key.
func TestIdempotencyTenantIsolation(t *testing.T) {
	t.Parallel()

	var seedBytes [8]byte
	_, _ = rand.Read(seedBytes[:])
	seed := binary.LittleEndian.Uint64(seedBytes[:])
	t.Logf("seed %d", seed)
	random := mathrand.New(mathrand.NewPCG(seed, seed))

	b := setupHTTP(t, service.IdempotencyConfig{})
	middleware, err := idempotencyhttp.New(idempotencyhttp.Config{Idempotency: b.idempotency, Scope: isolationScope})
	require.NoError(t, err)

	// The handler records which request each call served; every response
	// names its call.
	var calls atomic.Int64
	var served sync.Map // call number -> isolationRequest
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		call := calls.Add(1)
		served.Store(call, isolationRequest{
			tenant: isolationTenant{kind: r.Header.Get("X-Tenant-Kind"), id: r.Header.Get("X-Tenant-ID")},
			method: r.Method,
			path:   r.URL.Path,
			key:    r.Header.Get("Idempotency-Key"),
		})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"call":%d}`, call)
	})
	for _, pattern := range []string{"POST /items", "POST /items/{id}", "PUT /items/{id}", "POST /other"} {
		route, err := middleware.Route(idempotencyhttp.JSONBody())
		require.NoError(t, err)
		b.mux.Handle(pattern, route(handler))
	}

	// Names repeat across kinds, and an organization is named like an
	// address, so only the kind keeps some tenants apart.
	tenants := []isolationTenant{
		{"org", "a"}, {"org", "b"}, {"org", "192.0.2.1"},
		{"principal", "a"}, {"principal", "b"},
		{"ip", "192.0.2.1"}, {"ip", "::ffff:192.0.2.2"}, {"ip", "2001:db8::1"},
	}
	routes := []struct{ method, path string }{
		{"POST", "/items"}, {"POST", "/items/1"}, {"POST", "/items/2"}, {"PUT", "/items/1"}, {"POST", "/other"},
	}
	keys := []string{"a", "b", "aa", "ab", "ba", "bb"}
	bodies := []string{`{}`, `{"n":1}`}

	const total = 400
	requests := make([]isolationRequest, total)
	sent := make([]request, total)
	for i := range requests {
		tenant := tenants[random.IntN(len(tenants))]
		route := routes[random.IntN(len(routes))]
		key := keys[random.IntN(len(keys))]
		requests[i] = isolationRequest{tenant: tenant, method: route.method, path: route.path, key: key}
		sent[i] = request{
			method: route.method,
			path:   route.path,
			key:    key,
			body:   bodies[random.IntN(len(bodies))],
			header: http.Header{"X-Tenant-Kind": {tenant.kind}, "X-Tenant-ID": {tenant.id}},
		}
	}

	// Eight clients send the requests in order, so duplicates overlap.
	responses := make([]response, total)
	errs := make([]error, total)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < total; i = int(next.Add(1) - 1) {
				responses[i], errs[i] = b.send(b.ctx, sent[i])
			}
		})
	}
	wg.Wait()

	var created int
	for i, res := range responses {
		require.NoError(t, errs[i])
		switch res.status {
		case http.StatusCreated:
			created++
		case http.StatusConflict:
			requireProblem(t, res, http.StatusConflict, idempotencyhttp.ProblemRequestInFlight)
			continue
		case http.StatusUnprocessableEntity:
			requireProblem(t, res, http.StatusUnprocessableEntity, idempotencyhttp.ProblemKeyReused)
			continue
		default:
			t.Fatalf("request %d %+v: unexpected response %s", i, requests[i], res)
		}

		var body struct{ Call int64 }
		require.NoError(t, json.Unmarshal(res.body, &body), "request %d: %s", i, res)
		servedFor, ok := served.Load(body.Call)
		require.True(t, ok, "request %d got call %d, which never ran", i, body.Call)
		require.Equal(t, requests[i], servedFor, "request %d got the response of call %d", i, body.Call)
	}
	require.Positive(t, created)
	t.Logf("%d requests, %d handler calls, %d created or replayed", total, calls.Load(), created)
}
