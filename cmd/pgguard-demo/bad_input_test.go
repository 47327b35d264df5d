package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tenMB is the size of the oversized inputs: beyond the 1 MiB body limit
// and beyond the 1 MB that net/http reads as headers.
const tenMB = 10 << 20

// rawRequest is an HTTP/1.1 request written byte for byte, so a test can
// send what http.Client rejects: control characters in headers, a
// header repeated, a body shorter than its Content-Length.
type rawRequest struct {
	method string
	path   string
	// header lines, each "Name: value".
	header []string
	body   string
	// contentLength is sent as Content-Length; -1 means len(body).
	contentLength int
	// halfClose closes the client's side after the body, as a client
	// that stops sending does.
	halfClose bool
}

func (r rawRequest) bytes() []byte {
	length := r.contentLength
	if length < 0 {
		length = len(r.body)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: pgguard.test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", r.method, r.path, length)
	for _, line := range r.header {
		b.WriteString(line + "\r\n")
	}
	b.WriteString("\r\n" + r.body)
	return []byte(b.String())
}

// sendRaw writes req to the server at baseURL on a new connection and
// reads one response. The write runs beside the read, because the server
// may respond and close before it has read a large request.
func sendRaw(t *testing.T, baseURL string, req rawRequest) exchange {
	t.Helper()

	u, err := url.Parse(baseURL)
	require.NoError(t, err)
	conn, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))

	go func() {
		if _, err := conn.Write(req.bytes()); err == nil && req.halfClose {
			_ = conn.(*net.TCPConn).CloseWrite()
		}
	}()
	response, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	require.NoError(t, err)
	return exchange{status: response.StatusCode, header: response.Header, body: body}
}

// nested returns a JSON array nested levels deep.
func nested(levels int) string {
	return strings.Repeat("[", levels) + strings.Repeat("]", levels)
}

func repeatHeader(line string, times int) []string {
	lines := make([]string, times)
	for i := range lines {
		lines[i] = line
	}
	return lines
}

func TestBadInputMatrix(t *testing.T) {
	t.Parallel()
	client, db := newTestClient(t, fastConfig())

	login := func(body string) rawRequest {
		return rawRequest{method: http.MethodPost, path: "/login", body: body, contentLength: -1}
	}
	order := func(key, body string, header ...string) rawRequest {
		header = append([]string{"Idempotency-Key: " + key}, header...)
		if !strings.Contains(strings.Join(header, "\n"), "X-Organization-ID") {
			header = append(header, "X-Organization-ID: acme")
		}
		return rawRequest{method: http.MethodPost, path: "/orders", header: header, body: body, contentLength: -1}
	}
	const validOrder = `{"item":"widget","quantity":1}`
	// plainText marks the responses net/http sends itself, before any
	// handler runs: they have no problem type.
	const plainText = ""

	cases := []struct {
		name    string
		req     rawRequest
		status  int
		problem string
	}{
		{"login email with NUL", login(`{"email":"demo\u0000@example.com","password":"x"}`), http.StatusBadRequest, problemInvalidRequest},
		{"login email not UTF-8", login("{\"email\":\"d\xffmo@example.com\",\"password\":\"x\"}"), http.StatusBadRequest, problemInvalidRequest},
		{"login email of 10 MB", login(`{"email":"` + strings.Repeat("a", tenMB) + `@example.com","password":"x"}`), http.StatusRequestEntityTooLarge, problemRequestTooLarge},
		{"login email of 1 KB", login(`{"email":"` + strings.Repeat("a", 1024) + `@example.com","password":"x"}`), http.StatusBadRequest, problemInvalidRequest},
		{"login password of 10 MB", login(`{"email":"demo@example.com","password":"` + strings.Repeat("p", tenMB) + `"}`), http.StatusRequestEntityTooLarge, problemRequestTooLarge},
		{"login JSON ends early", login(`{"email":"demo@example.com","pass`), http.StatusBadRequest, problemInvalidRequest},
		{"login JSON nested 10000 levels", login(nested(10000)), http.StatusBadRequest, problemInvalidRequest},
		{"login body ends early", rawRequest{method: http.MethodPost, path: "/login", body: `{"email":"demo@`, contentLength: 100, halfClose: true}, http.StatusBadRequest, problemInvalidRequest},
		{"order key with NUL", order("a\x00b", validOrder), http.StatusBadRequest, plainText},
		{"order key not UTF-8", order("caf\xe9", validOrder), http.StatusBadRequest, problemKeyInvalid},
		{"order key of 10 MB", order(strings.Repeat("k", tenMB), validOrder), http.StatusRequestHeaderFieldsTooLarge, plainText},
		{"order key of 256 characters", order(strings.Repeat("k", 256), validOrder), http.StatusBadRequest, problemKeyInvalid},
		{"order key empty", order("", validOrder), http.StatusBadRequest, problemKeyInvalid},
		{"order key sent 1000 times", order("same", validOrder, repeatHeader("Idempotency-Key: same", 999)...), http.StatusBadRequest, problemKeyInvalid},
		{"order organization sent 1000 times", order("org-repeated", validOrder, repeatHeader("X-Organization-ID: acme", 1000)...), http.StatusBadRequest, problemInvalidRequest},
		{"order organization not UTF-8", order("org-latin1", validOrder, "X-Organization-ID: caf\xe9"), http.StatusBadRequest, problemInvalidRequest},
		{"order organization of 2 KB", order("org-long", validOrder, "X-Organization-ID: "+strings.Repeat("o", 2048)), http.StatusBadRequest, problemInvalidRequest},
		{"order organization empty", order("org-empty", validOrder, "X-Organization-ID: "), http.StatusBadRequest, problemInvalidRequest},
		{"order body of 10 MB", order("huge", `{"item":"`+strings.Repeat("x", tenMB)+`","quantity":1}`), http.StatusRequestEntityTooLarge, problemRequestTooLarge},
		{"order JSON nested 10000 levels", order("deep", nested(10000)), http.StatusBadRequest, problemInvalidRequest},
		{"order JSON nested 10001 levels", order("deeper", nested(10001)), http.StatusBadRequest, problemInvalidRequest},
		{"order JSON ends early", order("short", `{"item":"widget","quantity":`), http.StatusBadRequest, problemInvalidRequest},
		{"order body ends early", rawRequest{method: http.MethodPost, path: "/orders", header: []string{"Idempotency-Key: cut", "X-Organization-ID: acme"}, body: `{"item":`, contentLength: 100, halfClose: true}, http.StatusBadRequest, problemInvalidRequest},
		{"order body not UTF-8", order("latin1", "{\"item\":\"caf\xe9\",\"quantity\":1}"), http.StatusBadRequest, problemInvalidRequest},
		{"order body empty", order("empty", ``), http.StatusBadRequest, problemInvalidRequest},
		{"order item with NUL", order("nul-item", `{"item":"a\u0000b","quantity":1}`), http.StatusBadRequest, problemInvalidRequest},
		{"order quantity beyond float64", order("big-number", `{"item":"widget","quantity":1e400}`), http.StatusBadRequest, problemInvalidRequest},
		{"order id not a number", rawRequest{method: http.MethodGet, path: "/orders/abc", header: []string{"X-Organization-ID: acme"}, contentLength: -1}, http.StatusNotFound, problemOrderNotFound},
		{"order id beyond int64", rawRequest{method: http.MethodGet, path: "/orders/99999999999999999999", header: []string{"X-Organization-ID: acme"}, contentLength: -1}, http.StatusNotFound, problemOrderNotFound},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := db.RowCounts(t)

			ex := sendRaw(t, client.baseURL, c.req)

			if c.problem == plainText {
				require.Equal(t, c.status, ex.status, describeResponse(ex))
				require.NotEqual(t, problemContentType, ex.header.Get("Content-Type"))
			} else {
				require.NoError(t, expectProblem(ex, c.status, c.problem))
			}
			require.Equal(t, before, db.RowCounts(t))
		})
	}

	// The same key works once the request is valid, so no rejection left
	// the key claimed.
	ex := sendRaw(t, client.baseURL, order("deep", validOrder))
	_, err := expectCreatedOrder(ex, "acme", "widget", 1)
	require.NoError(t, err)
}

func TestParseOptionsRejectsNonPositivePolicy(t *testing.T) {
	t.Parallel()
	cases := map[string][]string{
		"-lock-duration":     {"-lock-duration", "0"},
		"-max-lock-duration": {"-max-lock-duration", "-1s"},
		"-failure-window":    {"-failure-window", "-1h"},
		"-lease":             {"-lease", "-1s"},
		"-max-failures":      {"-max-failures", "0"},
		"-order-delay":       {"-order-delay", "-1ms"},
	}
	for flag, args := range cases {
		_, err := parseOptions(args, func(string) string { return "" }, io.Discard)
		require.ErrorContains(t, err, flag)
	}
	_, err := parseOptions([]string{"-max-failures", "-3"}, func(string) string { return "" }, io.Discard)
	require.ErrorContains(t, err, "-max-failures")
}
