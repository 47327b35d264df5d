package service

import (
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSourceResolverClientIP(t *testing.T) {
	t.Parallel()

	trusted := SourceResolver{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	cases := []struct {
		name     string
		resolver SourceResolver
		remote   string
		forwards []string
		want     string
	}{
		{"no proxy ignores header", SourceResolver{}, "203.0.113.5:4000", []string{"6.6.6.6"}, "203.0.113.5"},
		{"untrusted peer ignores header", trusted, "203.0.113.5:4000", []string{"6.6.6.6"}, "203.0.113.5"},
		{"rightmost untrusted hop", trusted, "10.1.2.3:4000", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7"},
		{"skips trusted hops", trusted, "10.1.2.3:4000", []string{"6.6.6.6, 198.51.100.7, 10.9.9.9"}, "198.51.100.7"},
		{"header lines joined", trusted, "10.1.2.3:4000", []string{"6.6.6.6", "198.51.100.8"}, "198.51.100.8"},
		{"all hops trusted", trusted, "10.1.2.3:4000", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},
		{"malformed header", trusted, "10.1.2.3:4000", []string{"6.6.6.6, not-an-ip"}, "10.1.2.3"},
		{"malformed proxy hop", trusted, "10.1.2.3:4000", []string{"6.6.6.6, garbage, 10.0.0.9"}, "10.1.2.3"},
		{"client garbage ignored", trusted, "10.1.2.3:4000", []string{"garbage, 198.51.100.7"}, "198.51.100.7"},
		{"empty entry", trusted, "10.1.2.3:4000", []string{"6.6.6.6,,10.0.0.9"}, "10.1.2.3"},
		{"no header", trusted, "10.1.2.3:4000", nil, "10.1.2.3"},
		{"hop with port", trusted, "10.1.2.3:4000", []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"mapped peer", SourceResolver{}, "[::ffff:1.2.3.4]:80", nil, "1.2.3.4"},
		{"missing peer", SourceResolver{}, "", nil, ""},
		{"garbage peer", SourceResolver{}, "pipe", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			r := httptest.NewRequest("POST", "/login", nil)
			r.RemoteAddr = tc.remote
			for _, value := range tc.forwards {
				r.Header.Add("X-Forwarded-For", value)
			}
			require.Equal(t, tc.want, tc.resolver.ClientIP(r))
		})
	}
}

func TestSourceResolverRandomHeaderIgnored(t *testing.T) {
	t.Parallel()

	for _, header := range []string{"1.1.1.1", "8.8.8.8, 9.9.9.9", "::1", "garbage", "10.0.0.1"} {
		r := httptest.NewRequest("POST", "/login", nil)
		r.RemoteAddr = "192.0.2.44:5555"
		r.Header.Set("X-Forwarded-For", header)
		require.Equal(t, "192.0.2.44", SourceResolver{}.ClientIP(r), header)
	}
}

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()

	same := []string{"Alice@Ex.com", "alice@ex.com", " ALICE@EX.COM ", "\talice@ex.com\n", "ａｌｉｃｅ@ex.com"}
	for _, email := range same {
		normalized, err := NormalizeEmail(email)
		require.NoError(t, err, email)
		require.Equal(t, "alice@ex.com", normalized, email)
	}

	nfc, err := NormalizeEmail("Jos\u00e9@example.com")
	require.NoError(t, err)
	nfd, err := NormalizeEmail("Jose\u0301@example.com")
	require.NoError(t, err)
	require.Equal(t, nfc, nfd)

	folded, err := NormalizeEmail("STRASSE@example.com")
	require.NoError(t, err)
	sharpS, err := NormalizeEmail("straße@example.com")
	require.NoError(t, err)
	require.Equal(t, folded, sharpS)
}

func TestNormalizeSource(t *testing.T) {
	t.Parallel()

	cases := map[string]string{
		"1.2.3.4":               "1.2.3.4/32",
		"::ffff:1.2.3.4":        "1.2.3.4/32",
		"::ffff:102:304":        "1.2.3.4/32",
		"2001:db8::1":           "2001:db8::/64",
		"2001:0db8:0:0:0:0:0:1": "2001:db8::/64",
		"2001:db8:0:0:ffff::1":  "2001:db8::/64",
		"fe80::1%eth0":          "fe80::/64",
		"2001:db8:0:1::1":       "2001:db8:0:1::/64",
	}
	for ip, want := range cases {
		prefix, err := NormalizeSource(ip, 64)
		require.NoError(t, err, ip)
		require.Equal(t, netip.MustParsePrefix(want), *prefix, ip)
	}

	unknown, err := NormalizeSource("", 64)
	require.NoError(t, err)
	require.Nil(t, unknown)

	for _, bad := range []string{"1.2.3.4:80", "host.example", "1.2.3", "::g"} {
		_, err := NormalizeSource(bad, 64)
		require.ErrorIs(t, err, ErrInvalidInput, bad)
	}
}
