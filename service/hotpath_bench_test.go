package service_test

import (
	"bytes"
	"net/http"
	"net/netip"
	"testing"

	"github.com/pgguard/pgguard/service"
)

// The benchmarks below cover the pure functions every login or idempotent
// request runs before its database call. Run them with
// go test -run '^$' -bench . -benchmem ./service.

func BenchmarkNormalizeEmail(b *testing.B) {
	cases := []struct {
		name  string
		email string
	}{
		{"ascii", "alice@example.com"},
		{"mixed_case_spaces", "  Alice.Smith@Example.COM "},
		// "é" written as e and a combining acute accent (NFD).
		{"unicode_nfd", "Jose\u0301.Garci\u0301a@Ejemplo.es"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := service.NormalizeEmail(c.email); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNormalizeSource(b *testing.B) {
	cases := []struct {
		name string
		ip   string
	}{
		{"ipv4", "203.0.113.7"},
		{"ipv6", "2001:db8:85a3::8a2e:370:7334"},
		{"ipv4_mapped", "::ffff:203.0.113.7"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := service.NormalizeSource(c.ip, 64); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkFingerprint(b *testing.B) {
	for _, size := range []struct {
		name  string
		bytes int
	}{
		{"64B", 64},
		{"1KiB", 1 << 10},
		{"64KiB", 64 << 10},
	} {
		body := bytes.Repeat([]byte("x"), size.bytes)
		b.Run(size.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				service.Fingerprint(http.MethodPost, "/orders", body)
			}
		})
	}
}

func BenchmarkValidateKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := service.ValidateKey("5f0c6a52-8f0e-4a7e-9b1c-3f6d2e7a9c41"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientIP parses the connection address and X-Forwarded-For.
func BenchmarkClientIP(b *testing.B) {
	direct := service.SourceResolver{}
	proxied := service.SourceResolver{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.168.0.0/16"),
	}}
	cases := []struct {
		name     string
		resolver service.SourceResolver
		remote   string
		xff      string
	}{
		{"direct", direct, "203.0.113.7:52814", ""},
		{"untrusted_xff_ignored", direct, "203.0.113.7:52814", "198.51.100.1"},
		{"two_trusted_proxies", proxied, "10.0.0.2:443", "198.51.100.1, 203.0.113.7, 192.168.1.10"},
	}
	for _, c := range cases {
		request, err := http.NewRequest(http.MethodPost, "/login", nil)
		if err != nil {
			b.Fatal(err)
		}
		request.RemoteAddr = c.remote
		if c.xff != "" {
			request.Header.Set("X-Forwarded-For", c.xff)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.resolver.ClientIP(request) == "" {
					b.Fatal("no client IP")
				}
			}
		})
	}
}
