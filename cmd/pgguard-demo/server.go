package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/service"
)

// maxBodyBytes caps every request body. A larger body gets 413.
const maxBodyBytes = 1 << 20

// serverConfig is everything the API needs besides its database.
type serverConfig struct {
	Lockout service.LockoutConfig
	// Password is the policy of the account-and-source counter of password
	// logins, which the command-line flags set; newServer puts it into
	// Lockout. Its zero fields take the library defaults.
	Password service.TierPolicy
	// TrustedProxies are the reverse proxies whose X-Forwarded-For header
	// names the client.
	TrustedProxies []netip.Prefix
	Idempotency    service.IdempotencyConfig
	// Accounts are the users that can log in, with plain-text passwords
	// that newServer hashes.
	Accounts []credential
	// BcryptCost is the cost of the password hashes and of the dummy hash
	// compared for unknown emails. Zero means bcrypt.DefaultCost.
	BcryptCost int
	// OrderDelay is slept inside POST /orders after the idempotency key is
	// claimed and before the order is inserted, so that concurrent retries
	// visibly overlap.
	OrderDelay time.Duration
}

// server is the demo API: POST /login guarded by a Lockout and POST /orders
// guarded by an Idempotency, both stored in one Postgres database.
type server struct {
	logger      *slog.Logger
	lockout     *service.Lockout
	sources     service.SourceResolver
	idempotency *service.Idempotency
	accounts    *accountStore
	orders      *orderStore
	orderDelay  time.Duration
	mux         *http.ServeMux
}

// newServer builds the API on pool, which must contain pgguard's tables and the
// demo's orders table. It hashes the account passwords, which takes about
// as long as one login per account.
func newServer(pool *pgxpool.Pool, config serverConfig, logger *slog.Logger) (*server, error) {
	config.Lockout.Logger = logger
	config.Lockout.Channels = map[service.Channel]service.ChannelPolicy{
		service.ChannelPassword: {AccountSource: config.Password},
	}
	lockout, err := service.NewLockout(pool, config.Lockout)
	if err != nil {
		return nil, fmt.Errorf("invalid lockout policy: %w", err)
	}
	config.Idempotency.Logger = logger
	idempotency, err := service.NewIdempotency(pool, config.Idempotency)
	if err != nil {
		return nil, fmt.Errorf("invalid idempotency policy: %w", err)
	}
	accounts, err := newAccountStore(config.Accounts, config.BcryptCost)
	if err != nil {
		return nil, err
	}

	s := &server{
		logger:      logger,
		lockout:     lockout,
		sources:     service.SourceResolver{TrustedProxies: config.TrustedProxies},
		idempotency: idempotency,
		accounts:    accounts,
		orders:      &orderStore{pool: pool},
		orderDelay:  config.OrderDelay,
		mux:         http.NewServeMux(),
	}
	s.mux.HandleFunc("POST /login", s.handleLogin)
	createOrder, err := s.createOrderRoute()
	if err != nil {
		return nil, fmt.Errorf("invalid idempotency route: %w", err)
	}
	s.mux.Handle("POST /orders", createOrder)
	s.mux.HandleFunc("GET /orders/{id}", s.handleGetOrder)
	return s, nil
}

// ServeHTTP routes the request and logs it. Requests that match no route
// get problem details instead of ServeMux's plain-text 404 and 405.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	recorder := &statusRecorder{ResponseWriter: w}

	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.handleUnrouted(recorder, r)
	} else {
		s.mux.ServeHTTP(recorder, r)
	}

	s.logger.LogAttrs(r.Context(), slog.LevelInfo, "request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", recorder.status()),
		slog.Duration("duration", time.Since(started)),
		slog.String("remote_addr", r.RemoteAddr),
	)
}

// handleUnrouted responds to a request that no pattern matches: 405 with the
// Allow header when the path exists for another method, else 404.
func (s *server) handleUnrouted(w http.ResponseWriter, r *http.Request) {
	// ServeMux.Handler returns the handler ServeMux itself would run. Running
	// it into a discarding writer yields its status and Allow header.
	fallback, _ := s.mux.Handler(r)
	probe := &headerProbe{header: http.Header{}}
	fallback.ServeHTTP(probe, r)

	if probe.code == http.StatusMethodNotAllowed {
		allow := probe.header.Get("Allow")
		w.Header().Set("Allow", allow)
		writeProblem(w, problem{
			Type:   problemMethodNotAllowed,
			Title:  "Method not allowed",
			Status: http.StatusMethodNotAllowed,
			Detail: fmt.Sprintf("%s is not supported on %s; use %s.", r.Method, r.URL.Path, allow),
		})
		return
	}
	writeProblem(w, problem{
		Type:   problemNotFound,
		Title:  "Not found",
		Status: http.StatusNotFound,
		Detail: fmt.Sprintf("No endpoint at %s. The endpoints are POST /login, POST /orders and GET /orders/{id}.", r.URL.Path),
	})
}

// readBody reads the whole request body, at most maxBodyBytes. On failure
// it writes the error response (413 or 400) and returns false.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeProblem(w, problem{
			Type:   problemRequestTooLarge,
			Title:  "Request body too large",
			Status: http.StatusRequestEntityTooLarge,
			Detail: fmt.Sprintf("The request body is larger than the maximum of %d bytes.", tooLarge.Limit),
		})
		return nil, false
	case err != nil:
		writeInvalidRequest(w, "The request body could not be read: "+err.Error())
		return nil, false
	}
	return body, true
}

// statusRecorder remembers the status code written through it, for the
// request log.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// headerProbe is a ResponseWriter that keeps the header and status and
// discards the body.
type headerProbe struct {
	header http.Header
	code   int
}

func (p *headerProbe) Header() http.Header { return p.header }

func (p *headerProbe) WriteHeader(code int) {
	if p.code == 0 {
		p.code = code
	}
}

func (p *headerProbe) Write(b []byte) (int, error) {
	if p.code == 0 {
		p.code = http.StatusOK
	}
	return len(b), nil
}
