package service

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"net/url"
	"slices"
	"strings"
	"unicode"
)

// fingerprintVersion prefixes every request hash that Begin stores. A
// change of what the fingerprint covers needs a new version, so that a
// stored hash is always compared with one computed the same way.
//
// Versions:
//
//	v1: method, route template and body, separated by NUL bytes.
//	v2: v1 plus the path values; every field is length-prefixed.
const fingerprintVersion = "v2"

// maxInlinePathValues is the longest encoding of path values kept as text
// in a record's route. Longer ones are replaced by their SHA-256, because
// the route is part of a unique index, whose entries Postgres limits to
// about 2.7 kB.
const maxInlinePathValues = 512

// Fingerprint returns the fingerprint of a request without path values; see
// [Request.Fingerprint].
func Fingerprint(method, route string, body []byte) string {
	return Request{Method: method, Route: route, Body: body}.Fingerprint()
}

// Fingerprint returns the versioned fingerprint that Begin and Do store
// with the request's record and compare retries against: "v2:" and the hex
// SHA-256 of the method, the route template, the path values in name order
// and the exact body bytes. Each field is prefixed with its length, so two
// different requests never hash the same input.
func (r Request) Fingerprint() string {
	h := sha256.New()
	writeHashField(h, r.Method)
	writeHashField(h, r.Route)
	names := sortedNames(r.PathValues)
	writeHashLength(h, len(names))
	for _, name := range names {
		writeHashField(h, name)
		writeHashField(h, r.PathValues[name])
	}
	// The body goes in as bytes: converting it to a string first would copy
	// a body of up to MaxRequestBytes twice.
	writeHashLength(h, len(r.Body))
	h.Write(r.Body)
	return fingerprintVersion + ":" + hex.EncodeToString(h.Sum(nil))
}

// fingerprintMatches reports whether stored, a hash from an earlier
// request, fingerprints req. fingerprint is req.Fingerprint(), passed in so
// that a replay hashes the body once. Hashes of an older version are
// recomputed in that version, so a retry of a request stored before an
// upgrade still matches it.
func fingerprintMatches(stored, fingerprint string, req Request) bool {
	version, _, _ := strings.Cut(stored, ":")
	switch version {
	case fingerprintVersion:
		return stored == fingerprint
	case "v1":
		// v1 did not cover path values, so it cannot match a request that
		// has some.
		return len(req.PathValues) == 0 && stored == fingerprintV1(req.Method, req.Route, req.Body)
	}
	return false
}

// fingerprintV1 is the v1 fingerprint. Method and route cannot contain
// NUL, so NUL separators keep the fields apart.
func fingerprintV1(method, route string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte{0})
	h.Write([]byte(route))
	h.Write([]byte{0})
	h.Write(body)
	return "v1:" + hex.EncodeToString(h.Sum(nil))
}

func writeHashField(h hash.Hash, field string) {
	writeHashLength(h, len(field))
	h.Write([]byte(field))
}

func writeHashLength(h hash.Hash, n int) {
	var length [8]byte
	binary.BigEndian.PutUint64(length[:], uint64(n))
	h.Write(length[:])
}

// recordRoute returns the route column of req's record: the method, the
// route template and, when there are any, the path values, for example
// "PUT /tickets/{id} id=1". Records are unique per scope, route and key, so
// the same key on /tickets/1 and /tickets/2 names two requests.
func recordRoute(req Request) (string, error) {
	if req.Method == "" || strings.ContainsFunc(req.Method, func(r rune) bool { return r <= ' ' || r >= unicode.MaxASCII }) {
		return "", invalidInput("method", fmt.Sprintf("%q is not an HTTP method", req.Method))
	}
	if err := validateLabel("route", req.Route); err != nil {
		return "", err
	}
	if strings.ContainsFunc(req.Route, unicode.IsSpace) {
		// A space separates the route from its path values in the record,
		// so "/a id=1" would collide with "/a" and the path value id=1.
		return "", invalidInput("route", fmt.Sprintf("%q contains white space; pass the path template, such as /orders/{id}, and path values in PathValues", req.Route))
	}

	route := req.Method + " " + req.Route
	if len(req.PathValues) == 0 {
		return route, nil
	}

	values := url.Values{}
	for name, value := range req.PathValues {
		if name == "" {
			return "", invalidInput("path values", "contain an empty name")
		}
		values.Set(name, value)
	}
	// Encode sorts by name and escapes every byte that could be confused
	// with a separator or that Postgres text cannot hold.
	encoded := values.Encode()
	if len(encoded) > maxInlinePathValues {
		sum := sha256.Sum256([]byte(encoded))
		encoded = "sha256:" + hex.EncodeToString(sum[:])
	}
	return route + " " + encoded, nil
}

func sortedNames(values map[string]string) []string {
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
