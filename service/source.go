package service

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// SourceResolver derives the client address of a request for
// [Lockout.Begin]. The zero value trusts no proxy and returns the
// connection's address, which is right when clients connect directly.
type SourceResolver struct {
	// TrustedProxies lists the networks of the reverse proxies in front of
	// the application. Only a connection from one of them may set the
	// client address through X-Forwarded-For.
	TrustedProxies []netip.Prefix
}

// ClientIP returns the client address of r as a string for Lockout.Begin,
// or an empty string when it is unknown.
//
// Without trusted proxies, or when the connection does not come from one,
// it is the connection's address and X-Forwarded-For is ignored, because
// any client can send that header. Otherwise X-Forwarded-For (all its
// lines, as one list) is read from right to left, skipping the trusted
// proxies' own entries, and the first untrusted address is the client; if
// every entry is trusted, the leftmost is. A malformed entry among those
// the proxies wrote makes the header untrustworthy, so the connection's
// address is returned; entries left of the client's are ignored.
// IPv4-mapped IPv6 addresses are returned as IPv4.
//
// NOTE: a request that arrived over a unix socket has no peer address, so
// ClientIP returns "" (the bucket of unknown sources) even behind a proxy.
func (s SourceResolver) ClientIP(r *http.Request) string {
	remote, ok := parseHostAddr(r.RemoteAddr)
	if !ok {
		return ""
	}
	if !s.trusted(remote) {
		return remote.String()
	}

	var hops []string
	for _, line := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(line, ",")...)
	}

	// Only the entries up to the first untrusted one, read from the right,
	// were written by trusted proxies. Anything left of it came from the
	// client and is ignored, malformed or not.
	client := remote
	for i := len(hops) - 1; i >= 0; i-- {
		addr, ok := parseHostAddr(strings.TrimSpace(hops[i]))
		if !ok {
			return remote.String()
		}
		client = addr
		if !s.trusted(addr) {
			break
		}
	}
	return client.String()
}

func (s SourceResolver) trusted(addr netip.Addr) bool {
	for _, prefix := range s.TrustedProxies {
		if prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// parseHostAddr parses "1.2.3.4", "1.2.3.4:80", "::1" or "[::1]:80" into an
// unmapped address without zone.
func parseHostAddr(value string) (netip.Addr, bool) {
	if value == "" || len(value) > 64 {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(value)
	if err != nil {
		host, _, splitErr := net.SplitHostPort(value)
		if splitErr != nil {
			return netip.Addr{}, false
		}
		if addr, err = netip.ParseAddr(host); err != nil {
			return netip.Addr{}, false
		}
	}
	return addr.WithZone("").Unmap(), true
}
