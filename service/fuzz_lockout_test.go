package service

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzNormalizeEmail(f *testing.F) {
	for _, seed := range []string{
		"alice@example.com", " ALICE@EX.COM ", "jose\u0301@example.com", "straße@example.com",
		"ﬀ@example.com", "\u00a0a@b\u3000", "", "nul\x00@x", "bad\xff", strings.Repeat("é", 200),
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, email string) {
		normalized, err := NormalizeEmail(email)
		if err != nil {
			return
		}
		if !utf8.ValidString(normalized) || normalized == "" || len(normalized) > MaxEmailBytes {
			t.Fatalf("NormalizeEmail(%q) = %q, which is not a valid key", email, normalized)
		}
		again, err := NormalizeEmail(normalized)
		if err != nil || again != normalized {
			t.Fatalf("NormalizeEmail is not idempotent on %q: %q then %q (%v)", email, normalized, again, err)
		}
	})
}

func FuzzNormalizeSource(f *testing.F) {
	for _, seed := range []string{
		"1.2.3.4", "::ffff:1.2.3.4", "::ffff:102:304", "2001:db8::1", "fe80::1%eth0", "", "1.2.3.4:80", "::", "x",
	} {
		f.Add(seed, 64)
	}

	f.Fuzz(func(t *testing.T, ip string, prefixLen int) {
		if prefixLen < 1 || prefixLen > 128 {
			return
		}
		prefix, err := NormalizeSource(ip, prefixLen)
		if err != nil || prefix == nil {
			return
		}
		if !prefix.IsValid() || prefix.Masked() != *prefix || prefix.Addr().Is4In6() || prefix.Addr().Zone() != "" {
			t.Fatalf("NormalizeSource(%q, %d) = %v, which is not a normalized network", ip, prefixLen, prefix)
		}
		again, err := NormalizeSource(prefix.Addr().String(), prefixLen)
		if err != nil || *again != *prefix {
			t.Fatalf("NormalizeSource is not idempotent on %q: %v then %v (%v)", ip, prefix, again, err)
		}
	})
}

func FuzzClientIP(f *testing.F) {
	f.Add("10.1.2.3:4000", "6.6.6.6, 198.51.100.7")
	f.Add("203.0.113.5:1", "garbage")
	f.Add("[::ffff:10.0.0.1]:80", "[2001:db8::1]:443,,")
	f.Add("", "1.1.1.1")

	resolver := SourceResolver{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	f.Fuzz(func(t *testing.T, remote, forwarded string) {
		r := httptest.NewRequest("POST", "/login", nil)
		r.RemoteAddr = remote
		r.Header.Set("X-Forwarded-For", forwarded)

		got := resolver.ClientIP(r)
		if got == "" {
			return
		}
		addr, err := netip.ParseAddr(got)
		if err != nil || addr.Is4In6() || addr.Zone() != "" {
			t.Fatalf("ClientIP(%q, %q) = %q, which is not a plain address", remote, forwarded, got)
		}
		if plain := (SourceResolver{}).ClientIP(r); plain != "" {
			if peer, _ := netip.ParseAddr(plain); !resolver.trusted(peer) && got != plain {
				t.Fatalf("ClientIP(%q, %q) = %q trusted a header from an untrusted peer", remote, forwarded, got)
			}
		}
	})
}
