package idempotencyhttp

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/pgguard/pgguard/service"
)

// HeaderName is the request header that carries the idempotency key.
const HeaderName = "Idempotency-Key"

// ParseKey returns the key in the Idempotency-Key header of h, and found
// false when the header is absent. Two forms are accepted and name the same
// key, because the quotes are syntax, not part of the key:
//
//   - an RFC 8941 String, as the IETF draft specifies: "abc", with \" and
//     \\ as the only escapes, printable ASCII inside the quotes, and no
//     parameters;
//   - a bare value, as Stripe's clients send it: abc, made of printable
//     ASCII and spaces, without double quotes or commas.
//
// So Idempotency-Key: "abc" and Idempotency-Key: abc are one key. Spaces
// and tabs around the value are not part of the key. The key has 1 to
// [service.MaxKeyLength] characters. An empty key, a list such as
// a, b, a header sent more than once, a control character or any other
// deviation returns an *service.InputError, which never echoes the key.
func ParseKey(h http.Header) (key string, found bool, err error) {
	values := h.Values(HeaderName)
	switch {
	case len(values) == 0:
		return "", false, nil
	case len(values) > 1:
		return "", true, invalidKey(fmt.Sprintf("sent %d times; send the header once", len(values)))
	}

	value := strings.Trim(values[0], " \t")
	if strings.HasPrefix(value, `"`) {
		key, err = parseQuotedKey(value)
	} else {
		key, err = parseBareKey(value)
	}
	if err != nil {
		return "", true, err
	}

	switch {
	case key == "":
		return "", true, invalidKey("empty; send a unique value such as a UUID")
	case len(key) > service.MaxKeyLength:
		return "", true, invalidKey(fmt.Sprintf("longer than %d characters", service.MaxKeyLength))
	}
	return key, true, nil
}

// parseQuotedKey parses an RFC 8941 String item: a double quote, then
// unescaped printable ASCII other than " and \, or \" and \\, then a
// closing double quote, then optional spaces.
func parseQuotedKey(value string) (string, error) {
	var key strings.Builder
	for i := 1; i < len(value); i++ {
		c := value[i]
		switch {
		case c == '\\':
			i++
			if i == len(value) || (value[i] != '"' && value[i] != '\\') {
				return "", invalidKey(`contains an invalid escape; only \" and \\ may follow a backslash`)
			}
			key.WriteByte(value[i])
		case c == '"':
			return key.String(), checkAfterQuotedKey(value[i+1:])
		case c < 0x20 || c == 0x7f:
			return "", invalidKey("contains a control character")
		case c > 0x7f:
			return "", invalidKey("contains a non-ASCII character; an RFC 8941 String holds printable ASCII only")
		default:
			key.WriteByte(c)
		}
	}
	return "", invalidKey("has no closing double quote")
}

// checkAfterQuotedKey rejects anything after the closing quote but spaces:
// a list, parameters or stray characters.
func checkAfterQuotedKey(rest string) error {
	rest = strings.TrimLeft(rest, " \t")
	switch {
	case rest == "":
		return nil
	case rest[0] == ',':
		return invalidKey("is a list; send exactly one key")
	case rest[0] == ';':
		return invalidKey("has parameters, which are not supported; send the quoted key alone")
	}
	return invalidKey("has characters after the closing double quote")
}

func parseBareKey(value string) (string, error) {
	for i := 0; i < len(value); i++ {
		c := value[i]
		switch {
		case c == ',':
			return "", invalidKey("is a list; send exactly one key")
		case c == '"':
			return "", invalidKey("contains a double quote that does not start an RFC 8941 String")
		case c < 0x20 || c == 0x7f:
			return "", invalidKey("contains a control character")
		case c > 0x7f:
			return "", invalidKey("contains a non-ASCII character; use printable ASCII")
		}
	}
	return value, nil
}

func invalidKey(problem string) error {
	return &service.InputError{Field: HeaderName + " header", Problem: problem}
}
