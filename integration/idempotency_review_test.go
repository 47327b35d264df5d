package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

func TestIdempotencyHTTPEdgeRoutes(t *testing.T) {
	t.Parallel()

	t.Run("SubtreePatternKeepsPathsApart", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var runs atomic.Int32
		b.handle(t, "POST /files/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "run %d for %s", runs.Add(1), r.URL.Path)
		})

		first := b.do(t, post("/files/a", "same-key", ""))
		second := b.do(t, post("/files/b", "same-key", ""))
		require.Equal(t, "run 1 for /files/a", string(first.body))
		require.Equal(t, "run 2 for /files/b", string(second.body))
		require.False(t, second.replayed())

		again := b.do(t, post("/files/a", "same-key", ""))
		require.True(t, again.replayed())
		require.Equal(t, first.body, again.body)
	})

	t.Run("ReplayKeepsContentEncoding", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var compressed bytes.Buffer
		writer := gzip.NewWriter(&compressed)
		_, err := writer.Write([]byte(`{"ok":true}`))
		require.NoError(t, err)
		require.NoError(t, writer.Close())
		b.handle(t, "POST /reports", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(compressed.Bytes())
		})

		req := post("/reports", "gzip-key", "{}")
		req.header = http.Header{"Accept-Encoding": {"gzip"}}
		first := b.do(t, req)
		replay := b.do(t, req)
		require.True(t, replay.replayed())
		require.Equal(t, "gzip", replay.header.Get("Content-Encoding"))
		require.Equal(t, first.body, replay.body)
	})

	t.Run("StreamingAfterDeclaredSideEffectKeepsKey", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, service.IdempotencyConfig{})
		var runs atomic.Int32
		b.handle(t, "POST /charges", func(w http.ResponseWriter, r *http.Request) {
			runs.Add(1)
			idempotencyhttp.SetOutcome(r.Context(), idempotencyhttp.OutcomeUnknown)
			_, _ = w.Write([]byte("partial"))
			_ = http.NewResponseController(w).Flush()
		})

		_, _ = b.send(b.ctx, post("/charges", "charge-key", "{}"))
		retry, err := b.send(b.ctx, post("/charges", "charge-key", "{}"))
		require.NoError(t, err)
		require.Equal(t, int32(1), runs.Load())
		require.Equal(t, http.StatusConflict, retry.status)
	})
}

func TestIdempotencyRouteValidation(t *testing.T) {
	t.Parallel()
	b := setupIdempotency(t, service.IdempotencyConfig{})

	cases := map[string]service.Request{
		"route with space":      {Key: "k", Method: "POST", Route: "/a id=1", OrganizationID: "org"},
		"organization too long": {Key: "k", Method: "POST", Route: "/a", OrganizationID: strings.Repeat("o", 256)},
		"route too long":        {Key: "k", Method: "POST", Route: "/" + strings.Repeat("r", 1024), OrganizationID: "org"},
	}
	for name, req := range cases {
		_, _, err := b.idempotency.Begin(b.ctx, req)
		require.ErrorIs(t, err, service.ErrInvalidInput, name)
	}

	// The longest valid values fit the unique index together.
	longest := service.Request{
		Key:            strings.Repeat("😀", service.MaxKeyLength),
		Method:         "POST",
		Route:          "/" + strings.Repeat("r", 1023),
		OrganizationID: strings.Repeat("o", 255),
	}
	claim := b.claim(t, longest)
	require.NoError(t, claim.Complete(b.ctx, service.StoredResponse{Status: http.StatusOK}))
	require.Equal(t, 1, b.rowCount(t))
}
