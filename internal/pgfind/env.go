package pgfind

import (
	"context"
	"fmt"
	"net/url"
)

// findFromEnv checks the URL from environment variable envVar. Its errors
// end the search, because the caller chose that server explicitly.
func findFromEnv(ctx context.Context, envVar, rawURL string) (*Server, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The parse error quotes the URL, which may contain a password.
		return nil, fmt.Errorf("pgfind: %s is not a valid URL; set it to postgres://USER:PASSWORD@HOST:PORT/DATABASE", envVar)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("pgfind: %s has scheme %q, expected a postgres:// URL such as postgres://USER:PASSWORD@HOST:PORT/DATABASE", envVar, u.Scheme)
	}

	if err := probe(ctx, rawURL); err != nil {
		return nil, fmt.Errorf("pgfind: %s is set, but connecting to %s failed (fix the URL, or unset %s to let pgfind start a container or use a local server): %w",
			envVar, RedactURL(rawURL), envVar, err)
	}

	return &Server{
		URL:    rawURL,
		Method: MethodEnv,
		Source: fmt.Sprintf("%s (%s)", envVar, describeURL(u)),
	}, nil
}
