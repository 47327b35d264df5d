package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// numberLiterals returns the number literals of a valid JSON text as
// written, sorted.
func numberLiterals(t *testing.T, body []byte) []string {
	t.Helper()

	decoder := json.NewDecoder(bytes.NewReader(body))
	decoder.UseNumber()
	var literals []string
	for {
		token, err := decoder.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("failed to read the tokens of %q: %v", body, err)
		}
		if number, ok := token.(json.Number); ok {
			literals = append(literals, string(number))
		}
	}
	slices.Sort(literals)
	return literals
}

// decodeValue decodes one JSON value with numbers kept as literals.
func decodeValue(t *testing.T, body []byte) any {
	t.Helper()

	decoder := json.NewDecoder(bytes.NewReader(body))
	decoder.UseNumber()
	var value any
	if err := decoder.Decode(&value); err != nil {
		t.Fatalf("failed to decode %q: %v", body, err)
	}
	return value
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, seed := range []string{
		`{"b":2,"a":1}`, ` { "a" : [ 1 , 2.50 , -0 , 1E+2 ] } `, `12345678901234567890`, `1.0`,
		`{"z":{"y":null,"x":[true,false]},"a":""}`, `"\u0041\n\"\/"`, `"\ud800"`, `"<a>&"`,
		`{"é":"ü","B":0,"a":0}`, `[[[[]]]]`, `{}`, `[]`, `""`,
		``, ` `, `{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `[1,]`, `{"a":1}x`, `{"a":`, `[01]`, "\xff", `"\xff"`,
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
	} {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		canonical, err := CanonicalJSON(body)
		if err != nil {
			var invalid *InputError
			if !errors.As(err, &invalid) {
				t.Fatalf("CanonicalJSON(%q) returned %v, which is not an *InputError", body, err)
			}
			return
		}

		if !json.Valid(body) {
			t.Fatalf("CanonicalJSON accepted %q, which is not valid JSON", body)
		}
		if !json.Valid(canonical) {
			t.Fatalf("CanonicalJSON(%q) = %q, which is not valid JSON", body, canonical)
		}
		again, err := CanonicalJSON(canonical)
		if err != nil || !bytes.Equal(again, canonical) {
			t.Fatalf("CanonicalJSON is not idempotent on %q: %q then %q (%v)", body, canonical, again, err)
		}

		// No precision loss: every number literal survives as written, and
		// the value decodes the same.
		if in, out := numberLiterals(t, body), numberLiterals(t, canonical); !slices.Equal(in, out) {
			t.Fatalf("CanonicalJSON(%q) = %q changed the number literals %q to %q", body, canonical, in, out)
		}
		if in, out := decodeValue(t, body), decodeValue(t, canonical); !reflect.DeepEqual(in, out) {
			t.Fatalf("CanonicalJSON(%q) = %q, which decodes to %#v instead of %#v", body, canonical, out, in)
		}
	})
}
