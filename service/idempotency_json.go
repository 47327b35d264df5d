package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// maxJSONDepth is the deepest nesting of objects and arrays CanonicalJSON
// accepts, the same limit encoding/json applies when it decodes a value.
const maxJSONDepth = 10000

// CanonicalJSON returns the JSON text body in a canonical form, so that
// bodies that differ only in whitespace or in the order of object members
// have the same bytes and therefore the same fingerprint:
//
//   - no whitespace outside strings;
//   - object members sorted by name, compared as UTF-8 bytes;
//   - strings decoded the way encoding/json decodes them and encoded again
//     without HTML escaping, so "\u0041" and "A" are the same string, and
//     an escaped lone surrogate such as "\ud800" becomes U+FFFD;
//   - numbers copied exactly as written: 12345678901234567890 and
//     12345678901234567000 stay different, which decoding into float64
//     would not keep, and 1.0 differs from 1.
//
// Invalid JSON, bytes that are not UTF-8 (which RFC 8259 requires and
// which decoding would replace with U+FFFD), an object with two members of
// the same name, data after the value, or nesting deeper than 10000 levels
// return an *InputError. The error never quotes the body.
func CanonicalJSON(body []byte) ([]byte, error) {
	if !utf8.Valid(body) {
		return nil, invalidInput("JSON body", "not valid UTF-8; send JSON encoded as UTF-8")
	}
	c := newJSONCanonicalizer(body)
	var out bytes.Buffer
	if err := c.writeValue(&out, 0); err != nil {
		return nil, err
	}
	if _, err := c.decoder.Token(); !errors.Is(err, io.EOF) {
		return nil, invalidInput("JSON body", "contains data after the first JSON value")
	}
	return out.Bytes(), nil
}

// jsonCanonicalizer reads a JSON text token by token. UseNumber keeps each
// number as its literal.
type jsonCanonicalizer struct {
	decoder *json.Decoder
	// scratch and encoder encode strings without HTML escaping.
	scratch bytes.Buffer
	encoder *json.Encoder
}

func newJSONCanonicalizer(body []byte) *jsonCanonicalizer {
	c := &jsonCanonicalizer{decoder: json.NewDecoder(bytes.NewReader(body))}
	c.decoder.UseNumber()
	c.encoder = json.NewEncoder(&c.scratch)
	c.encoder.SetEscapeHTML(false)
	return c
}

func (c *jsonCanonicalizer) writeValue(out *bytes.Buffer, depth int) error {
	token, err := c.decoder.Token()
	if err != nil {
		return invalidJSON(err)
	}

	switch t := token.(type) {
	case json.Delim:
		if depth >= maxJSONDepth {
			return invalidInput("JSON body", fmt.Sprintf("nests objects and arrays deeper than %d levels", maxJSONDepth))
		}
		if t == '{' {
			return c.writeObject(out, depth+1)
		}
		return c.writeArray(out, depth+1)
	case string:
		return c.writeString(out, t)
	case json.Number:
		out.WriteString(string(t))
	case bool:
		if t {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case nil:
		out.WriteString("null")
	}
	return nil
}

// writeObject writes the members of an object whose '{' was just read,
// sorted by name, and reads its '}'.
func (c *jsonCanonicalizer) writeObject(out *bytes.Buffer, depth int) error {
	type member struct {
		name  string
		value []byte
	}
	var members []member
	seen := map[string]bool{}

	for c.decoder.More() {
		token, err := c.decoder.Token()
		if err != nil {
			return invalidJSON(err)
		}
		// The decoder returns only strings in the name position.
		name, _ := token.(string)
		if seen[name] {
			// The name is not quoted, because a body may hold secrets.
			return invalidInput("JSON body", fmt.Sprintf("an object repeats the member name that ends at byte %d; send each name once", c.decoder.InputOffset()))
		}
		seen[name] = true

		var value bytes.Buffer
		if err := c.writeValue(&value, depth); err != nil {
			return err
		}
		members = append(members, member{name: name, value: value.Bytes()})
	}
	if _, err := c.decoder.Token(); err != nil {
		return invalidJSON(err)
	}

	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := c.writeString(out, m.name); err != nil {
			return err
		}
		out.WriteByte(':')
		out.Write(m.value)
	}
	out.WriteByte('}')
	return nil
}

// writeArray writes the elements of an array whose '[' was just read, and
// reads its ']'.
func (c *jsonCanonicalizer) writeArray(out *bytes.Buffer, depth int) error {
	out.WriteByte('[')
	for i := 0; c.decoder.More(); i++ {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := c.writeValue(out, depth); err != nil {
			return err
		}
	}
	if _, err := c.decoder.Token(); err != nil {
		return invalidJSON(err)
	}
	out.WriteByte(']')
	return nil
}

func (c *jsonCanonicalizer) writeString(out *bytes.Buffer, s string) error {
	c.scratch.Reset()
	if err := c.encoder.Encode(s); err != nil {
		return fmt.Errorf("pgguard: failed to encode a JSON string: %w", err)
	}
	// Encode ends every value with a newline.
	out.Write(bytes.TrimSuffix(c.scratch.Bytes(), []byte{'\n'}))
	return nil
}

func invalidJSON(err error) error {
	if errors.Is(err, io.EOF) {
		return invalidInput("JSON body", "ends before the JSON value is complete")
	}
	return invalidInput("JSON body", "is not valid JSON: "+err.Error())
}
