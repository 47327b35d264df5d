package service

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// MaxEmailBytes is the longest email accepted, in bytes of UTF-8, before and
// after normalization. RFC 5321 limits a path to 256 octets; 320 is the
// common bound of a 64-octet local part, "@" and a 255-octet domain.
const MaxEmailBytes = 320

var emailFolder = cases.Fold()

// NormalizeEmail returns the form of an email address that lockout counters
// are keyed by: surrounding white space trimmed, Unicode NFKC, then full case
// folding and lowercasing, then NFKC again because folding can leave a
// string unnormalized.
// So "Alice@Ex.com", " alice@ex.com " and the NFD spelling of an accented
// address share one counter. The address is not otherwise validated: an
// unknown or malformed address must be counted like a real one.
//
// It returns an *InputError for an empty address, invalid UTF-8, a NUL or
// other control character, or more than [MaxEmailBytes] bytes.
func NormalizeEmail(email string) (string, error) {
	if len(email) > 4*MaxEmailBytes {
		// Reject huge input before trimming or normalizing it.
		return "", invalidInput("email", fmt.Sprintf("%d bytes is longer than the maximum of %d", len(email), MaxEmailBytes))
	}
	if !utf8.ValidString(email) {
		return "", invalidInput("email", "not valid UTF-8")
	}

	trimmed := strings.TrimFunc(email, unicode.IsSpace)
	if trimmed == "" {
		return "", invalidInput("email", "empty; pass the address the user typed")
	}
	if strings.IndexFunc(trimmed, unicode.IsControl) >= 0 {
		return "", invalidInput("email", "contains a NUL or other control character")
	}
	if len(trimmed) > MaxEmailBytes {
		return "", invalidInput("email", fmt.Sprintf("%d bytes is longer than the maximum of %d", len(trimmed), MaxEmailBytes))
	}

	// golang.org/x/text v0.44.0 folds Cherokee letters back and forth
	// between the two cases (U+13A9 to U+AB79 and back), so lowercasing
	// after folding picks one of them and keeps the result stable.
	normalized := norm.NFKC.String(strings.ToLower(emailFolder.String(norm.NFKC.String(trimmed))))
	// Compatibility decomposition can put white space at either end, as
	// U+0385 becomes a space and two combining marks, so trim again.
	normalized = strings.TrimFunc(normalized, unicode.IsSpace)
	if normalized == "" {
		return "", invalidInput("email", "empty after Unicode normalization; pass the address the user typed")
	}
	if len(normalized) > MaxEmailBytes {
		return "", invalidInput("email", fmt.Sprintf("%d bytes after normalization is longer than the maximum of %d", len(normalized), MaxEmailBytes))
	}
	return normalized, nil
}

// NormalizeSource parses a client IP address into the network that lockout
// counts it by. An IPv4-mapped IPv6 address counts as its IPv4 address; an
// IPv4 address counts alone (/32); an IPv6 address counts by its first
// ipv6PrefixLen bits, because one client usually controls a whole /64. A
// zone ("fe80::1%eth0") is dropped. An empty string returns nil: the single
// bucket of attempts with no known source.
//
// It returns an *InputError when ip is not an IP address.
func NormalizeSource(ip string, ipv6PrefixLen int) (*netip.Prefix, error) {
	if ip == "" {
		return nil, nil
	}
	if len(ip) > 64 {
		return nil, invalidInput("ip", fmt.Sprintf("%d bytes is too long for an IP address", len(ip)))
	}

	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return nil, invalidInput("ip", fmt.Sprintf("%q is not an IP address; pass the client address without a port, or an empty string if it is unknown", ip))
	}
	addr = addr.WithZone("").Unmap()

	bits := 32
	if addr.Is6() {
		bits = ipv6PrefixLen
	}
	prefix, err := addr.Prefix(bits)
	if err != nil {
		return nil, invalidInput("ip", fmt.Sprintf("cannot take a /%d prefix of %s", bits, addr))
	}
	return &prefix, nil
}
