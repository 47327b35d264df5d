package service

import (
	"encoding/json"
	"net/http"
)

// decodeStoredHeaders decodes the response_headers column, a JSON object
// of string arrays, as json.Unmarshal into an [http.Header] would. Every
// replay decodes it, and json.Unmarshal was the largest cost of a replay in
// pgguard's own code in a CPU profile, so the usual text that Postgres
// prints for jsonb, such as {"Location": ["/orders/1"]}, is parsed by hand.
// Any other text goes to json.Unmarshal, so both paths return the same
// header; FuzzDecodeStoredHeaders compares them.
func decodeStoredHeaders(data []byte) (http.Header, error) {
	if header, ok := parseASCIIHeaders(data); ok {
		return header, nil
	}
	header := http.Header{}
	if err := json.Unmarshal(data, &header); err != nil {
		return nil, err
	}
	return header, nil
}

// parseASCIIHeaders parses data when it is a JSON object of string arrays
// whose strings are printable ASCII without escapes, and returns false for
// anything else.
func parseASCIIHeaders(data []byte) (http.Header, bool) {
	p := headerParser{data: data}
	header := http.Header{}

	p.skipSpace()
	if !p.consume('{') {
		return nil, false
	}
	p.skipSpace()
	if p.consume('}') {
		return header, p.atEnd()
	}
	for {
		name, ok := p.string()
		if !ok {
			return nil, false
		}
		p.skipSpace()
		if !p.consume(':') {
			return nil, false
		}
		values, ok := p.stringArray()
		if !ok {
			return nil, false
		}
		header[name] = values

		p.skipSpace()
		if p.consume('}') {
			return header, p.atEnd()
		}
		if !p.consume(',') {
			return nil, false
		}
		p.skipSpace()
	}
}

type headerParser struct {
	data []byte
	pos  int
}

func (p *headerParser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *headerParser) consume(b byte) bool {
	if p.pos < len(p.data) && p.data[p.pos] == b {
		p.pos++
		return true
	}
	return false
}

func (p *headerParser) atEnd() bool {
	p.skipSpace()
	return p.pos == len(p.data)
}

// string reads a JSON string of printable ASCII without escapes.
func (p *headerParser) string() (string, bool) {
	if !p.consume('"') {
		return "", false
	}
	start := p.pos
	for p.pos < len(p.data) {
		b := p.data[p.pos]
		switch {
		case b == '"':
			s := string(p.data[start:p.pos])
			p.pos++
			return s, true
		case b == '\\' || b < ' ' || b > '~':
			return "", false
		}
		p.pos++
	}
	return "", false
}

// stringArray reads a JSON array of strings, skipping the space before it.
// An empty array returns an empty, non-nil slice, as json.Unmarshal does.
func (p *headerParser) stringArray() ([]string, bool) {
	p.skipSpace()
	if !p.consume('[') {
		return nil, false
	}
	values := []string{}
	p.skipSpace()
	if p.consume(']') {
		return values, true
	}
	for {
		value, ok := p.string()
		if !ok {
			return nil, false
		}
		values = append(values, value)
		p.skipSpace()
		if p.consume(']') {
			return values, true
		}
		if !p.consume(',') {
			return nil, false
		}
		p.skipSpace()
	}
}
