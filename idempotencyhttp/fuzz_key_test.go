package idempotencyhttp_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/pgguard/pgguard/idempotencyhttp"
	"github.com/pgguard/pgguard/service"
)

// quoteKey returns key as an RFC 8941 String.
func quoteKey(key string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
}

func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{
		`abc`, `"abc"`, `"a\"b"`, `"a\\b"`, " a b ", "\t\"abc\" ", `a;b=1`,
		`"a", "b"`, `a, b`, `"a";p=1`, `"a"b`, `"abc`, `"abc\`, `"a\nb"`, `""`, ``,
		"a\x00b", "a\tb", "a\x7fb", "caf\u00e9", "\xff\xfe", strings.Repeat("k", 255), strings.Repeat("k", 256),
		`"` + strings.Repeat(`\\`, 255) + `"`,
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, value string) {
		key, found, err := idempotencyhttp.ParseKey(http.Header{idempotencyhttp.HeaderName: {value}})
		if !found {
			t.Fatalf("ParseKey(%q) reported the header as absent", value)
		}
		if err != nil {
			if !errors.Is(err, service.ErrInvalidInput) {
				t.Fatalf("ParseKey(%q) returned %v, which is not an *service.InputError", value, err)
			}
			// Long enough that the fixed text of a message cannot contain it
			// by chance.
			if len(value) >= 24 && strings.Contains(err.Error(), value) {
				t.Fatalf("ParseKey(%q) echoes the header in its error: %v", value, err)
			}
			return
		}

		if validateErr := service.ValidateKey(key); validateErr != nil {
			t.Fatalf("ParseKey(%q) = %q, which the service rejects: %v", value, key, validateErr)
		}
		for i := range len(key) {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("ParseKey(%q) = %q, which has byte %#x outside printable ASCII", value, key, key[i])
			}
		}
		again, _, err := idempotencyhttp.ParseKey(http.Header{idempotencyhttp.HeaderName: {quoteKey(key)}})
		if err != nil || again != key {
			t.Fatalf("ParseKey(%q) = %q, but its quoted form parses as %q (%v)", value, key, again, err)
		}
	})
}
