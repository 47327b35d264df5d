package idempotencyhttp_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

func TestParseKeyAccepts(t *testing.T) {
	t.Parallel()

	cases := map[string]struct {
		header string
		key    string
	}{
		"bare":                  {`abc`, "abc"},
		"quoted":                {`"abc"`, "abc"},
		"UUID":                  {`8e03978e-40d5-43e8-bc93-6894a57f9324`, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		"surrounding spaces":    {"  \"abc\"\t", "abc"},
		"escaped quote":         {`"a\"b"`, `a"b`},
		"escaped backslash":     {`"a\\b"`, `a\b`},
		"space inside quotes":   {`"a b"`, "a b"},
		"comma inside quotes":   {`"a,b"`, "a,b"},
		"bare backslash":        {`a\b`, `a\b`},
		"bare semicolon":        {`a;b=1`, "a;b=1"},
		"bare inner space":      {`a b`, "a b"},
		"255 characters":        {strings.Repeat("k", 255), strings.Repeat("k", 255)},
		"255 escaped":           {`"` + strings.Repeat(`\\`, 255) + `"`, strings.Repeat(`\`, 255)},
		"trailing space quoted": {`"abc"  `, "abc"},
	}
	for name, c := range cases {
		key, found, err := idempotencyhttp.ParseKey(http.Header{"Idempotency-Key": {c.header}})
		require.NoError(t, err, name)
		require.True(t, found, name)
		require.Equal(t, c.key, key, name)
	}
}

func TestParseKeyRejects(t *testing.T) {
	t.Parallel()

	cases := map[string][]string{
		"empty":               {""},
		"empty quoted":        {`""`},
		"256 characters":      {strings.Repeat("k", 256)},
		"256 escaped":         {`"` + strings.Repeat(`\\`, 256) + `"`},
		"two lines":           {"a", "b"},
		"bare list":           {"a, b"},
		"bare list no space":  {"a,b"},
		"quoted list":         {`"a", "b"`},
		"parameters":          {`"a";p=1`},
		"unterminated":        {`"abc`},
		"escape at end":       {`"abc\`},
		"invalid escape":      {`"a\nb"`},
		"after closing quote": {`"a"b`},
		"bare tab":            {"a\tb"},
		"bare quote":          {`a"b`},
		"control bare":        {"a\x01b"},
		"control quoted":      {"\"a\x01b\""},
		"tab quoted":          {"\"a\tb\""},
		"DEL":                 {"a\x7fb"},
		"non-ASCII bare":      {"caf\u00e9"},
		"non-ASCII quoted":    {"\"caf\u00e9\""},
	}
	for name, values := range cases {
		_, found, err := idempotencyhttp.ParseKey(http.Header{"Idempotency-Key": values})
		require.ErrorIs(t, err, service.ErrInvalidInput, name)
		require.True(t, found, name)
	}
}

func TestParseKeyAbsent(t *testing.T) {
	t.Parallel()

	key, found, err := idempotencyhttp.ParseKey(http.Header{"Other": {"x"}})

	require.NoError(t, err)
	require.False(t, found)
	require.Empty(t, key)
}

func TestParseKeyErrorHidesKey(t *testing.T) {
	t.Parallel()

	_, _, err := idempotencyhttp.ParseKey(http.Header{"Idempotency-Key": {"secret-value, other"}})

	require.Error(t, err)
	require.NotContains(t, err.Error(), "secret-value")
}

func TestDefaultClassify(t *testing.T) {
	t.Parallel()

	cases := []struct {
		attempt idempotencyhttp.Attempt
		want    idempotencyhttp.Outcome
	}{
		{idempotencyhttp.Attempt{Status: 201, Wrote: true}, idempotencyhttp.OutcomeStore},
		{idempotencyhttp.Attempt{Status: 200}, idempotencyhttp.OutcomeStore},
		{idempotencyhttp.Attempt{Status: 303, Wrote: true}, idempotencyhttp.OutcomeStore},
		{idempotencyhttp.Attempt{Status: 400, Wrote: true}, idempotencyhttp.OutcomeRelease},
		{idempotencyhttp.Attempt{Status: 409, Wrote: true}, idempotencyhttp.OutcomeRelease},
		{idempotencyhttp.Attempt{Status: 500, Wrote: true}, idempotencyhttp.OutcomeStore},
		{idempotencyhttp.Attempt{Status: 500, Wrote: true, Atomic: true}, idempotencyhttp.OutcomeRelease},
		{idempotencyhttp.Attempt{Status: 200, Panicked: true}, idempotencyhttp.OutcomeUnknown},
		{idempotencyhttp.Attempt{Status: 200, Canceled: true}, idempotencyhttp.OutcomeUnknown},
		{idempotencyhttp.Attempt{Status: 200, Canceled: true, Atomic: true}, idempotencyhttp.OutcomeRelease},
		{idempotencyhttp.Attempt{Status: 201, Wrote: true, Canceled: true}, idempotencyhttp.OutcomeStore},
	}
	for _, c := range cases {
		require.Equal(t, c.want, idempotencyhttp.DefaultClassify(c.attempt), "%+v", c.attempt)
	}
}
