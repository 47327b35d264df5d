package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgguard/pgguard/internal/pgfind"
	"github.com/pgguard/pgguard/service"
)

// scenarioTimeout bounds a whole scenario run, server search excluded. The
// script itself takes a few seconds, most of it waiting for the lock.
const scenarioTimeout = 2 * time.Minute

// concurrentDuplicates is how many identical POST /orders requests the
// scenario sends at once.
const concurrentDuplicates = 10

// unknownEmail is an address that has no account in the scenario.
const unknownEmail = "nobody@example.com"

// scenarioConfig is the server policy of the scenario: short enough that a
// lock ends within seconds, and an order delay long enough that concurrent
// duplicates overlap.
func scenarioConfig() serverConfig {
	return serverConfig{
		Password: service.TierPolicy{
			MaxFailures:     3,
			LockDuration:    2 * time.Second,
			MaxLockDuration: 10 * time.Second,
			FailureWindow:   time.Minute,
		},
		Idempotency: service.IdempotencyConfig{LeaseDuration: 10 * time.Second},
		Accounts:    []credential{{Email: demoEmail, Password: demoPassword}},
		OrderDelay:  300 * time.Millisecond,
	}
}

// runScenarioCommand is the -scenario mode: it finds Postgres, creates a
// new database, plays the scenario against it and drops it again. It
// returns the exit status.
func runScenarioCommand(ctx context.Context, stdout, stderr io.Writer) int {
	// The server logs only warnings and errors, so the transcript on stdout
	// stays readable.
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// When the reader of the transcript goes away, as with "| head", writes
	// fail instead of killing the process, so the database is still dropped.
	signal.Ignore(syscall.SIGPIPE)

	findCtx, cancel := context.WithTimeout(ctx, findTimeout)
	server, err := pgfind.Find(findCtx, databaseURLEnvVar)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "pgguard-demo: the scenario needs a PostgreSQL server and found none.\n%v\n", err)
		return 1
	}
	defer func() {
		if err := server.Close(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintf(stderr, "pgguard-demo: failed to stop the Postgres container: %v\n", err)
		}
	}()

	databaseName := "pgguard_demo_" + strings.ToLower(rand.Text()[:10])
	if err := server.CreateDatabase(ctx, databaseName, ""); err != nil {
		fmt.Fprintf(stderr, "pgguard-demo: %v\n", err)
		return 1
	}
	databaseURL := server.DatabaseURL(databaseName)
	fmt.Fprintf(stdout, "pgguard demo scenario\n")
	fmt.Fprintf(stdout, "  Postgres: %s, found by pgfind method %q\n", server.Source, server.Method)
	fmt.Fprintf(stdout, "  Database: %s (new)\n", databaseName)

	ctx, cancel = context.WithTimeout(ctx, scenarioTimeout)
	defer cancel()
	err = migrateDatabase(ctx, databaseURL, logger)
	if err == nil {
		err = playScenarioOnDatabase(ctx, stdout, databaseURL, logger)
	}

	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "\npgguard-demo: scenario failed: %v\n", err)
		if server.Method == pgfind.MethodContainer {
			fmt.Fprintf(stderr, "The database %s was in a container that is removed on exit, so it cannot be kept.\n", databaseName)
		} else {
			fmt.Fprintf(stderr, "The database %s is kept for inspection: %s\n", databaseName, pgfind.RedactURL(databaseURL))
		}
		return 1
	}

	// An interrupted run has nothing worth inspecting, so it is dropped too.
	dropCtx, cancelDrop := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelDrop()
	if dropErr := server.DropDatabase(dropCtx, databaseName); dropErr != nil {
		fmt.Fprintf(stderr, "pgguard-demo: %v\n", dropErr)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "\npgguard-demo: scenario interrupted: %v\nDropped database %s.\n", err, databaseName)
		return 1
	}
	fmt.Fprintf(stdout, "Dropped database %s.\n", databaseName)
	return 0
}

// playScenarioOnDatabase plays the scenario against the migrated database
// at databaseURL.
func playScenarioOnDatabase(ctx context.Context, out io.Writer, databaseURL string, logger *slog.Logger) error {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("failed to open a connection pool: %w", err)
	}
	defer pool.Close()
	return playScenario(ctx, out, pool, logger)
}

// playScenario starts the API on a free loopback port with the scenario's
// policy, drives it over HTTP, writes a transcript to out and returns an
// error describing the first response that differs from the script. The
// database behind pool must be migrated and must have no orders or lockout
// counters of the scenario's organizations and emails.
func playScenario(ctx context.Context, out io.Writer, pool *pgxpool.Pool, logger *slog.Logger) error {
	config := scenarioConfig()
	handler, err := newServer(pool, config, logger)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("failed to listen on a loopback port: %w", err)
	}

	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- serve(serveCtx, listener, handler, logger) }()
	defer func() {
		stopServing()
		<-served
	}()

	baseURL := "http://" + listener.Addr().String()
	fmt.Fprintf(out, "  API:      %s\n", baseURL)
	fmt.Fprintf(out, "  Policy:   lock after %d failed logins for %s; idempotency lease %s; order delay %s\n",
		config.Password.MaxFailures, config.Password.LockDuration, config.Idempotency.LeaseDuration, config.OrderDelay)

	s := &scenario{
		out:     out,
		baseURL: baseURL,
		client: &http.Client{
			Timeout: 30 * time.Second,
			// No proxy: the scenario talks only to its own loopback server.
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: concurrentDuplicates},
		},
		orders:         handler.orders,
		maxFailures:    config.Password.MaxFailures,
		maxLockTime:    config.Password.MaxLockDuration,
		organizationID: "acme-" + strings.ToLower(rand.Text()[:6]),
	}
	defer s.client.CloseIdleConnections()

	steps := []struct {
		title string
		run   func(context.Context) error
	}{
		{fmt.Sprintf("Wrong passwords get 401 up to the threshold of %d", config.Password.MaxFailures), s.failLogins},
		{"The next attempt is locked out with 429 and Retry-After", s.loginLocked},
		{"The correct password is rejected too while the lock lasts", s.correctPasswordLocked},
		{"An unknown email gets the same responses as a real account", s.unknownEmailIdentical},
		{"After the lock ends, the correct password logs in", s.loginAfterLock},
		{"POST /orders creates an order", s.createOrder},
		{"A retry with the same key and body replays the stored response", s.replayOrder},
		{"The same key with a different body is rejected", s.reuseKey},
		{"An invalid body releases the key, so a corrected retry runs", s.invalidThenCorrected},
		{fmt.Sprintf("Concurrent duplicates (%d at once) create exactly one order", concurrentDuplicates), s.concurrentDuplicates},
		{"A request without Idempotency-Key is rejected", s.missingKey},
	}
	for i, step := range steps {
		fmt.Fprintf(out, "\n%d. %s\n", i+1, step.title)
		if err := step.run(ctx); err != nil {
			fmt.Fprintf(out, "   FAILED: %v\n", err)
			return fmt.Errorf("step %d (%s): %w", i+1, step.title, err)
		}
	}
	fmt.Fprintf(out, "\nAll %d steps passed.\n", len(steps))
	return nil
}

// scenario is the state shared by the steps: the client, and responses
// that later steps compare against.
type scenario struct {
	out            io.Writer
	baseURL        string
	client         *http.Client
	orders         *orderStore
	maxFailures    int
	maxLockTime    time.Duration
	organizationID string

	// Responses for demo@example.com, compared with those for an unknown
	// email.
	wrongPassword exchange
	locked        exchange

	// The first POST /orders and its request.
	created    exchange
	createdKey string
}

// exchange is one HTTP response, fully read.
type exchange struct {
	status int
	header http.Header
	body   []byte
}

// request describes one HTTP request of the scenario.
type request struct {
	method string
	path   string
	// header is sent as is. With nil, only Content-Type is sent.
	header map[string]string
	body   string
}

// send sends req and reads the whole response. It writes neither request
// nor response to the transcript.
func (s *scenario) send(ctx context.Context, req request) (exchange, error) {
	var body io.Reader
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	httpRequest, err := http.NewRequestWithContext(ctx, req.method, s.baseURL+req.path, body)
	if err != nil {
		return exchange{}, err
	}
	if req.body != "" {
		httpRequest.Header.Set("Content-Type", "application/json")
	}
	for name, value := range req.header {
		httpRequest.Header.Set(name, value)
	}

	response, err := s.client.Do(httpRequest)
	if err != nil {
		return exchange{}, fmt.Errorf("%s %s failed: %w", req.method, req.path, err)
	}
	defer response.Body.Close()
	responseBody, err := io.ReadAll(response.Body)
	if err != nil {
		return exchange{}, fmt.Errorf("%s %s: failed to read the response body: %w", req.method, req.path, err)
	}
	return exchange{status: response.StatusCode, header: response.Header, body: responseBody}, nil
}

// do sends req and writes both to the transcript.
func (s *scenario) do(ctx context.Context, req request) (exchange, error) {
	fmt.Fprintf(s.out, "   > %s\n", describeRequest(req))
	ex, err := s.send(ctx, req)
	if err != nil {
		return exchange{}, err
	}
	fmt.Fprintf(s.out, "   < %s\n", describeResponse(ex))
	return ex, nil
}

func (s *scenario) note(format string, args ...any) {
	fmt.Fprintf(s.out, "   "+format+"\n", args...)
}

func loginRequestFor(email, password string) request {
	body, err := json.Marshal(map[string]string{"email": email, "password": password})
	if err != nil {
		panic(err) // strings always encode
	}
	return request{method: http.MethodPost, path: "/login", body: string(body)}
}

func (s *scenario) orderRequest(key, body string) request {
	return request{
		method: http.MethodPost,
		path:   "/orders",
		header: map[string]string{"Idempotency-Key": key, "X-Organization-ID": s.organizationID},
		body:   body,
	}
}

func (s *scenario) failLogins(ctx context.Context) error {
	for i := 1; i <= s.maxFailures; i++ {
		ex, err := s.do(ctx, loginRequestFor(demoEmail, fmt.Sprintf("wrong password %d", i)))
		if err != nil {
			return err
		}
		if err := expectProblem(ex, http.StatusUnauthorized, problemLoginFailed); err != nil {
			return err
		}
		if i > 1 && !sameResponse(ex, s.wrongPassword) {
			return fmt.Errorf("failure %d differs from failure 1; every 401 must be the same", i)
		}
		s.wrongPassword = ex
	}
	return nil
}

func (s *scenario) loginLocked(ctx context.Context) error {
	ex, err := s.do(ctx, loginRequestFor(demoEmail, fmt.Sprintf("wrong password %d", s.maxFailures+1)))
	if err != nil {
		return err
	}
	if err := expectProblem(ex, http.StatusTooManyRequests, problemLoginLocked); err != nil {
		return err
	}
	if _, err := retryAfter(ex); err != nil {
		return err
	}
	s.locked = ex
	return nil
}

func (s *scenario) correctPasswordLocked(ctx context.Context) error {
	ex, err := s.do(ctx, loginRequestFor(demoEmail, demoPassword))
	if err != nil {
		return err
	}
	if err := expectProblem(ex, http.StatusTooManyRequests, problemLoginLocked); err != nil {
		return err
	}
	if !bytes.Equal(ex.body, s.locked.body) {
		return fmt.Errorf("the 429 body differs from the one for a wrong password: %s", ex.body)
	}
	return nil
}

func (s *scenario) unknownEmailIdentical(ctx context.Context) error {
	for i := 1; i <= s.maxFailures; i++ {
		ex, err := s.do(ctx, loginRequestFor(unknownEmail, fmt.Sprintf("wrong password %d", i)))
		if err != nil {
			return err
		}
		if err := expectProblem(ex, http.StatusUnauthorized, problemLoginFailed); err != nil {
			return err
		}
		if !sameResponse(ex, s.wrongPassword) {
			return fmt.Errorf("the 401 for an unknown email differs from the 401 for a wrong password:\n%s\nversus\n%s",
				describeResponse(ex), describeResponse(s.wrongPassword))
		}
	}

	ex, err := s.do(ctx, loginRequestFor(unknownEmail, fmt.Sprintf("wrong password %d", s.maxFailures+1)))
	if err != nil {
		return err
	}
	if err := expectProblem(ex, http.StatusTooManyRequests, problemLoginLocked); err != nil {
		return err
	}
	if !sameResponse(ex, s.locked) {
		return fmt.Errorf("the 429 for an unknown email differs from the 429 for a real account:\n%s\nversus\n%s",
			describeResponse(ex), describeResponse(s.locked))
	}
	s.note("ok: status, Content-Type, Retry-After and body equal those for %s", demoEmail)
	return nil
}

// loginAfterLock polls with the correct password, sleeping each time for
// the Retry-After the server sent, until the login succeeds. A 429 counts
// nothing, so polling does not extend the lock.
func (s *scenario) loginAfterLock(ctx context.Context) error {
	deadline := time.Now().Add(s.maxLockTime + 10*time.Second)
	for {
		ex, err := s.do(ctx, loginRequestFor(demoEmail, demoPassword))
		if err != nil {
			return err
		}
		if ex.status == http.StatusOK {
			if got := strings.TrimSpace(string(ex.body)); got != `{"status":"ok"}` {
				return fmt.Errorf(`expected the body {"status":"ok"}, got %s`, got)
			}
			return nil
		}
		if err := expectProblem(ex, http.StatusTooManyRequests, problemLoginLocked); err != nil {
			return err
		}

		wait, err := retryAfter(ex)
		if err != nil {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("still locked; Retry-After %s would end after the longest possible lock of %s", wait, s.maxLockTime)
		}
		s.note("waiting %s, the Retry-After of the response", wait)
		if err := sleepContext(ctx, wait); err != nil {
			return err
		}
	}
}

func (s *scenario) createOrder(ctx context.Context) error {
	s.createdKey = "order-" + strings.ToLower(rand.Text()[:8])
	ex, err := s.do(ctx, s.orderRequest(s.createdKey, `{"item":"widget","quantity":2}`))
	if err != nil {
		return err
	}
	created, err := expectCreatedOrder(ex, s.organizationID, "widget", 2)
	if err != nil {
		return err
	}
	if ex.header.Get("Idempotent-Replayed") != "" {
		return errors.New("the first request with a key is marked Idempotent-Replayed")
	}
	s.created = ex

	location := ex.header.Get("Location")
	fetched, err := s.do(ctx, request{
		method: http.MethodGet,
		path:   location,
		header: map[string]string{"X-Organization-ID": s.organizationID},
	})
	if err != nil {
		return err
	}
	if fetched.status != http.StatusOK {
		return fmt.Errorf("GET %s: expected status 200, got %s", location, describeResponse(fetched))
	}
	var got order
	if err := json.Unmarshal(fetched.body, &got); err != nil {
		return fmt.Errorf("GET %s: the body is not an order: %w", location, err)
	}
	if got != created {
		return fmt.Errorf("GET %s returned %+v, expected the created order %+v", location, got, created)
	}
	return nil
}

func (s *scenario) replayOrder(ctx context.Context) error {
	ex, err := s.do(ctx, s.orderRequest(s.createdKey, `{"item":"widget","quantity":2}`))
	if err != nil {
		return err
	}
	return expectReplayOf(ex, s.created)
}

func (s *scenario) reuseKey(ctx context.Context) error {
	ex, err := s.do(ctx, s.orderRequest(s.createdKey, `{"item":"widget","quantity":3}`))
	if err != nil {
		return err
	}
	return expectProblem(ex, http.StatusUnprocessableEntity, problemKeyReused)
}

func (s *scenario) invalidThenCorrected(ctx context.Context) error {
	key := "order-" + strings.ToLower(rand.Text()[:8])
	ex, err := s.do(ctx, s.orderRequest(key, `{"item":"gadget","quantity":0}`))
	if err != nil {
		return err
	}
	if err := expectProblem(ex, http.StatusBadRequest, problemInvalidRequest); err != nil {
		return err
	}

	ex, err = s.do(ctx, s.orderRequest(key, `{"item":"gadget","quantity":1}`))
	if err != nil {
		return err
	}
	_, err = expectCreatedOrder(ex, s.organizationID, "gadget", 1)
	return err
}

// concurrentDuplicates sends the same new request from many goroutines at
// once. The server's order delay keeps the first one running while the
// others arrive, so they get 409 with Retry-After, or the stored 201 if
// they arrive after it completed. Exactly one order may be inserted.
func (s *scenario) concurrentDuplicates(ctx context.Context) error {
	organizationID := "duplicates-" + strings.ToLower(rand.Text()[:6])
	req := s.orderRequest("order-"+strings.ToLower(rand.Text()[:8]), `{"item":"sprocket","quantity":5}`)
	req.header["X-Organization-ID"] = organizationID
	fmt.Fprintf(s.out, "   > %d at once: %s\n", concurrentDuplicates, describeRequest(req))

	responses := make([]exchange, concurrentDuplicates)
	errs := make([]error, concurrentDuplicates)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrentDuplicates {
		wg.Go(func() {
			<-start
			responses[i], errs[i] = s.send(ctx, req)
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	tally := map[string]int{}
	var fresh []exchange
	var replayed []exchange
	for _, ex := range responses {
		tally[describeResponse(ex)]++
		switch {
		case ex.status == http.StatusCreated && ex.header.Get("Idempotent-Replayed") == "true":
			replayed = append(replayed, ex)
		case ex.status == http.StatusCreated:
			fresh = append(fresh, ex)
		default:
			if err := expectProblem(ex, http.StatusConflict, problemRequestInFlight); err != nil {
				return err
			}
			if _, err := retryAfter(ex); err != nil {
				return err
			}
		}
	}
	for _, description := range slices.Sorted(maps.Keys(tally)) {
		fmt.Fprintf(s.out, "   < %d × %s\n", tally[description], description)
	}

	if len(fresh) != 1 {
		return fmt.Errorf("expected exactly one 201 that is not a replay, got %d", len(fresh))
	}
	if _, err := expectCreatedOrder(fresh[0], organizationID, "sprocket", 5); err != nil {
		return err
	}
	for _, ex := range replayed {
		if err := expectReplayOf(ex, fresh[0]); err != nil {
			return err
		}
	}

	count, err := s.orders.countByOrganization(ctx, organizationID)
	if err != nil {
		return err
	}
	s.note("orders of %s in the database: %d", organizationID, count)
	if count != 1 {
		return fmt.Errorf("expected exactly 1 order for organization %s, found %d", organizationID, count)
	}

	ex, err := s.do(ctx, req)
	if err != nil {
		return err
	}
	return expectReplayOf(ex, fresh[0])
}

func (s *scenario) missingKey(ctx context.Context) error {
	req := s.orderRequest("", `{"item":"widget","quantity":1}`)
	delete(req.header, "Idempotency-Key")
	ex, err := s.do(ctx, req)
	if err != nil {
		return err
	}
	return expectProblem(ex, http.StatusBadRequest, problemKeyMissing)
}

// expectProblem checks that ex is a problem details response with the
// status and type, sent with Cache-Control: no-store.
func expectProblem(ex exchange, status int, problemType string) error {
	if ex.status != status {
		return fmt.Errorf("expected status %d, got %s", status, describeResponse(ex))
	}
	if got := ex.header.Get("Content-Type"); got != problemContentType {
		return fmt.Errorf("expected Content-Type %s, got %q", problemContentType, got)
	}
	if got := ex.header.Get("Cache-Control"); got != "no-store" {
		return fmt.Errorf("expected Cache-Control no-store, got %q", got)
	}
	var p problem
	if err := json.Unmarshal(ex.body, &p); err != nil {
		return fmt.Errorf("the problem details are not valid JSON: %w", err)
	}
	if p.Type != problemType {
		return fmt.Errorf("expected problem type %s, got %s", problemType, p.Type)
	}
	if p.Status != status {
		return fmt.Errorf("the problem details say status %d, the response %d", p.Status, status)
	}
	return nil
}

// expectCreatedOrder checks a 201 response to POST /orders and returns the
// order in its body.
func expectCreatedOrder(ex exchange, organizationID, item string, quantity int32) (order, error) {
	if ex.status != http.StatusCreated {
		return order{}, fmt.Errorf("expected status 201, got %s", describeResponse(ex))
	}
	if got := ex.header.Get("Content-Type"); got != "application/json" {
		return order{}, fmt.Errorf("expected Content-Type application/json, got %q", got)
	}
	var created order
	if err := json.Unmarshal(ex.body, &created); err != nil {
		return order{}, fmt.Errorf("the body is not an order: %w", err)
	}
	want := order{ID: created.ID, Item: item, Quantity: quantity, OrganizationID: organizationID}
	if created != want || created.ID < 1 {
		return order{}, fmt.Errorf("expected the order %+v with a positive id, got %+v", want, created)
	}
	if got, want := ex.header.Get("Location"), "/orders/"+strconv.FormatInt(created.ID, 10); got != want {
		return order{}, fmt.Errorf("expected Location %s, got %q", want, got)
	}
	return created, nil
}

// expectReplayOf checks that ex replays original: the same status,
// Location, Content-Type and body, marked Idempotent-Replayed: true.
func expectReplayOf(ex, original exchange) error {
	if ex.status != original.status {
		return fmt.Errorf("expected the stored status %d, got %s", original.status, describeResponse(ex))
	}
	if got := ex.header.Get("Idempotent-Replayed"); got != "true" {
		return fmt.Errorf("expected Idempotent-Replayed: true, got %q", got)
	}
	for _, name := range []string{"Location", "Content-Type"} {
		if got, want := ex.header.Get(name), original.header.Get(name); got != want {
			return fmt.Errorf("expected the stored %s %q, got %q", name, want, got)
		}
	}
	if !bytes.Equal(ex.body, original.body) {
		return fmt.Errorf("expected the stored body %s, got %s", original.body, ex.body)
	}
	return nil
}

// sameResponse reports whether two responses are indistinguishable to a
// client: status, Content-Type, Retry-After and body.
func sameResponse(a, b exchange) bool {
	return a.status == b.status &&
		a.header.Get("Content-Type") == b.header.Get("Content-Type") &&
		a.header.Get("Retry-After") == b.header.Get("Retry-After") &&
		bytes.Equal(a.body, b.body)
}

// retryAfter parses the Retry-After header of ex as whole seconds.
func retryAfter(ex exchange) (time.Duration, error) {
	value := ex.header.Get("Retry-After")
	seconds, err := strconv.Atoi(value)
	if err != nil || seconds < 1 {
		return 0, fmt.Errorf("expected Retry-After to be a positive number of seconds, got %q", value)
	}
	return time.Duration(seconds) * time.Second, nil
}

// describeRequest returns a one-line summary: method, path, the headers
// the API reads and the body.
func describeRequest(req request) string {
	var b strings.Builder
	b.WriteString(req.method + " " + req.path)
	for _, name := range []string{"Idempotency-Key", "X-Organization-ID"} {
		if value, ok := req.header[name]; ok {
			fmt.Fprintf(&b, "  %s: %s", name, value)
		}
	}
	if req.body != "" {
		b.WriteString("  " + req.body)
	}
	return b.String()
}

// describeResponse returns a one-line summary: status, the headers the
// scenario checks and the body, or only the type of a problem.
func describeResponse(ex exchange) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", ex.status, http.StatusText(ex.status))
	for _, name := range []string{"Retry-After", "Location", "Idempotent-Replayed"} {
		if value := ex.header.Get(name); value != "" {
			fmt.Fprintf(&b, "  %s: %s", name, value)
		}
	}

	var p problem
	if ex.header.Get("Content-Type") == problemContentType && json.Unmarshal(ex.body, &p) == nil {
		fmt.Fprintf(&b, "  problem %s", strings.TrimPrefix(p.Type, problemTypeBase))
		return b.String()
	}
	b.WriteString("  " + strings.TrimSpace(string(ex.body)))
	return b.String()
}
