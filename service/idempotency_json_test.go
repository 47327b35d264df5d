package service_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgguard/pgguard/service"
)

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()

	cases := map[string]struct {
		body string
		want string
	}{
		"sorted members":     {`{"b":1,"a":2}`, `{"a":2,"b":1}`},
		"whitespace":         {" {\n \"a\" :\t[ 1 , 2 ] } ", `{"a":[1,2]}`},
		"nested":             {`{"z":{"y":1,"x":[{"b":0,"a":0}]},"a":null}`, `{"a":null,"z":{"x":[{"a":0,"b":0}],"y":1}}`},
		"large integer":      {`{"amount":12345678901234567890}`, `{"amount":12345678901234567890}`},
		"number literal":     {`[1.0,1e2,-0,1E+2,0.10]`, `[1.0,1e2,-0,1E+2,0.10]`},
		"string escapes":     {`["\u0041\n\"\/"]`, `["A\n\"/"]`},
		"HTML kept":          {`["<a>&"]`, `["<a>&"]`},
		"non-ASCII":          {`{"é":"ü"}`, `{"é":"ü"}`},
		"literals":           {`[true,false,null]`, `[true,false,null]`},
		"scalar":             {` "text" `, `"text"`},
		"empty containers":   {`{"a":{},"b":[]}`, `{"a":{},"b":[]}`},
		"byte order of keys": {`{"b":1,"B":2,"a":3}`, `{"B":2,"a":3,"b":1}`},
	}
	for name, c := range cases {
		got, err := service.CanonicalJSON([]byte(c.body))
		require.NoError(t, err, name)
		require.Equal(t, c.want, string(got), name)
	}
}

func TestCanonicalJSONKeepsNumbersApart(t *testing.T) {
	t.Parallel()

	a, err := service.CanonicalJSON([]byte(`{"amount":12345678901234567890}`))
	require.NoError(t, err)
	b, err := service.CanonicalJSON([]byte(`{"amount":12345678901234567000}`))
	require.NoError(t, err)

	require.NotEqual(t, string(a), string(b))
}

func TestCanonicalJSONRejects(t *testing.T) {
	t.Parallel()

	cases := map[string]string{
		"empty":               ``,
		"truncated":           `{"a":`,
		"trailing data":       `{} {}`,
		"trailing bracket":    `{"a":1}]`,
		"duplicate member":    `{"a":1,"a":2}`,
		"escaped duplicate":   `{"a":1,"\u0061":2}`,
		"nested duplicate":    `[{"x":{"k":1,"k":1}}]`,
		"missing colon":       `{"a" 1}`,
		"single quotes":       `{'a':1}`,
		"too deep":            strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		"bare word":           `nope`,
		"leading zero number": `[01]`,
	}
	for name, body := range cases {
		_, err := service.CanonicalJSON([]byte(body))
		require.ErrorIs(t, err, service.ErrInvalidInput, name)
	}
}
