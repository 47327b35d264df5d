package idempotencyhttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/pgguard/pgguard/service"
)

// ErrStreamingRefused is returned to a handler on an idempotent route that
// calls Flush, FlushError or Hijack, directly or through
// [http.ResponseController]. A stored response must be complete before it
// is replayed, so streaming responses such as server-sent events cannot be
// idempotent. The middleware also cancels the handler's context, releases
// the claim, and sends a 500 problem unless the response had been sent.
var ErrStreamingRefused = errors.New("pgguard: streaming is not supported on an idempotent route; the response must be complete before it is stored")

// recorder is the ResponseWriter a handler on an idempotent route gets. It
// buffers the response so the middleware can store it before sending it,
// and refuses streaming.
type recorder struct {
	target http.ResponseWriter
	header http.Header
	status int
	body   bytes.Buffer
	// limit is the longest body that can be stored. Beyond it overflowed
	// is set, and in writeThrough mode the response goes straight to the
	// client from then on. Without writeThrough (atomic mode) the whole
	// body is buffered, because nothing may be sent before the commit.
	limit        int
	overflowed   bool
	writeThrough bool
	// sent is set once the status and headers went to target.
	sent bool
	// refused is the error of the first streaming call.
	refused error
	cancel  context.CancelCauseFunc
	// headerPrepared is set once the Content-Type was sniffed.
	headerPrepared bool
}

func newRecorder(target http.ResponseWriter, limit int, writeThrough bool, cancel context.CancelCauseFunc) *recorder {
	return &recorder{target: target, header: http.Header{}, limit: limit, writeThrough: writeThrough, cancel: cancel}
}

func (rec *recorder) Header() http.Header { return rec.header }

// WriteHeader records the status. Informational (1xx) statuses are dropped,
// because the response is sent only after the handler returns.
func (rec *recorder) WriteHeader(code int) {
	if code < 100 || code > 999 {
		// The same check, and panic, as net/http's own ResponseWriter.
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if rec.status != 0 || code < 200 {
		return
	}
	rec.status = code
}

func (rec *recorder) Write(p []byte) (int, error) {
	if rec.refused != nil {
		return 0, rec.refused
	}
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if rec.sent {
		return rec.target.Write(p)
	}

	if !rec.overflowed && rec.body.Len()+len(p) > rec.limit {
		rec.overflowed = true
		if rec.writeThrough {
			if err := rec.send(); err != nil {
				return 0, err
			}
			return rec.target.Write(p)
		}
	}
	return rec.body.Write(p)
}

// Flush refuses streaming; see ErrStreamingRefused. http.Flusher has no
// error result, so the handler learns of the refusal from its next Write
// and from its context.
func (rec *recorder) Flush() { _ = rec.refuse("Flush") }

// FlushError refuses streaming; see ErrStreamingRefused.
// http.ResponseController.Flush calls it.
func (rec *recorder) FlushError() error { return rec.refuse("FlushError") }

// Hijack refuses taking over the connection; see ErrStreamingRefused.
func (rec *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, rec.refuse("Hijack")
}

// Unwrap lets http.ResponseController set deadlines on the connection's
// writer. Flush and Hijack stop at the recorder's own methods.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.target }

func (rec *recorder) refuse(method string) error {
	if rec.refused == nil {
		rec.refused = fmt.Errorf("%w (the handler called %s)", ErrStreamingRefused, method)
		rec.cancel(rec.refused)
	}
	return rec.refused
}

func (rec *recorder) statusCode() int {
	if rec.status == 0 {
		return http.StatusOK
	}
	return rec.status
}

// wrote reports whether the handler called WriteHeader or Write.
func (rec *recorder) wrote() bool { return rec.status != 0 }

// response returns the buffered response for storage.
func (rec *recorder) response() service.StoredResponse {
	rec.prepareHeader()
	return service.StoredResponse{Status: rec.statusCode(), Header: rec.header, Body: rec.body.Bytes()}
}

// finish sends the buffered response unless it was sent already.
func (rec *recorder) finish() {
	if !rec.sent {
		// The client may be gone; the handler's response is settled
		// either way.
		_ = rec.send()
	}
}

// send writes the status, the headers and the buffered body to target.
func (rec *recorder) send() error {
	rec.sent = true
	rec.prepareHeader()
	header := rec.target.Header()
	for name, values := range rec.header {
		header[name] = values
	}
	rec.target.WriteHeader(rec.statusCode())
	_, err := rec.target.Write(rec.body.Bytes())
	if rec.overflowed {
		// An overflowing body is never stored, so the buffer can go.
		rec.body = bytes.Buffer{}
	}
	return err
}

// prepareHeader sets the Content-Type that net/http would sniff from the
// body, so the stored headers and the replay carry the type the first
// client got. As net/http does, it leaves the header alone when the
// handler set it, even to nil, or set Transfer-Encoding.
func (rec *recorder) prepareHeader() {
	if rec.headerPrepared {
		return
	}
	rec.headerPrepared = true

	status := rec.statusCode()
	bodyAllowed := status != http.StatusNoContent && status != http.StatusNotModified
	_, haveType := rec.header["Content-Type"]
	if !haveType && bodyAllowed && rec.body.Len() > 0 && rec.header.Get("Transfer-Encoding") == "" {
		rec.header.Set("Content-Type", http.DetectContentType(rec.body.Bytes()))
	}
}
