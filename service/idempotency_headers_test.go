package service

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// storedHeaderSamples are response_headers texts as Postgres prints jsonb,
// and texts that only json.Unmarshal handles.
var storedHeaderSamples = []string{
	`{}`,
	`{"Location": ["/orders/1"], "Content-Type": ["application/json"]}`,
	`{"Vary": ["Accept", "Accept-Encoding"], "Etag": []}`,
	` { "A" : [ "x" ] , "B":["y","z"] } `,
	`{"Content-Language": ["d\u00e9"]}`,
	`{"Location": ["/a\"b"]}`,
	`{"Location": ["/caf` + "\u00e9" + `"]}`,
	`{"Location": null}`,
	`{"Location": "not an array"}`,
	`{"Location": [1]}`,
	`{"A": ["x"], "A": ["y"]}`,
	`{"A": ["x"]} trailing`,
	`{"A": ["x"],}`,
	`{"A": ["x"`,
	"{\"A\": [\"tab\there\"]}",
	`[]`,
	``,
}

// requireSameAsUnmarshal checks that decodeStoredHeaders returns what
// json.Unmarshal into an http.Header returns.
func requireSameAsUnmarshal(t *testing.T, data string) {
	t.Helper()

	want := http.Header{}
	wantErr := json.Unmarshal([]byte(data), &want)
	got, err := decodeStoredHeaders([]byte(data))
	if wantErr != nil {
		require.Error(t, err, "input %q", data)
		return
	}
	require.NoError(t, err, "input %q", data)
	require.Equal(t, want, got, "input %q", data)
}

func TestDecodeStoredHeadersMatchesUnmarshal(t *testing.T) {
	t.Parallel()

	for _, data := range storedHeaderSamples {
		requireSameAsUnmarshal(t, data)
	}
}

func TestDecodeStoredHeadersTakesFastPath(t *testing.T) {
	t.Parallel()

	header, ok := parseASCIIHeaders([]byte(`{"Location": ["/orders/1"], "Vary": ["Accept", "Origin"], "Etag": []}`))
	require.True(t, ok)
	require.Equal(t, http.Header{
		"Location": {"/orders/1"},
		"Vary":     {"Accept", "Origin"},
		"Etag":     {},
	}, header)
}

func TestDecodeStoredHeadersFallsBackOnEscapes(t *testing.T) {
	t.Parallel()

	_, ok := parseASCIIHeaders([]byte(`{"Location": ["/a\"b"]}`))
	require.False(t, ok)
	header, err := decodeStoredHeaders([]byte(`{"Location": ["/a\"b"]}`))
	require.NoError(t, err)
	require.Equal(t, []string{`/a"b`}, header["Location"])
}

func FuzzDecodeStoredHeaders(f *testing.F) {
	for _, data := range storedHeaderSamples {
		f.Add(data)
	}
	f.Fuzz(requireSameAsUnmarshal)
}
