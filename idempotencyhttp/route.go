package idempotencyhttp

import (
	"net/http"
	"strings"
)

// routeOf returns the route template of r and the values of its wildcards.
// A ServeMux pattern has the form "[METHOD ][HOST]/[PATH]"; the template is
// the pattern without the method, because the method is recorded on its
// own. A request that no ServeMux routed has no pattern, and a subtree
// pattern (ending in a slash) matches many paths; in both cases the
// template is the escaped path, which gives each concrete path its own
// records.
func routeOf(r *http.Request) (string, map[string]string) {
	pattern := r.Pattern
	if pattern == "" {
		return r.URL.EscapedPath(), nil
	}
	if i := strings.IndexAny(pattern, " \t"); i >= 0 {
		pattern = strings.TrimLeft(pattern[i:], " \t")
	}
	if strings.HasSuffix(pattern, "/") {
		// A pattern ending in a slash matches a whole subtree, such as
		// "/files/" or a router mounted at "/api/", so its requests are told
		// apart by the concrete path. The host part, if any, stays.
		host, _, _ := strings.Cut(pattern, "/")
		pattern = host + r.URL.EscapedPath()
	}

	var values map[string]string
	for rest := pattern; ; {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			break
		}
		length := strings.IndexByte(rest[open:], '}')
		if length < 0 {
			break
		}
		// A wildcard is {name} or {name...}; {$} matches the end of the
		// path and has no value.
		name := strings.TrimSuffix(rest[open+1:open+length], "...")
		rest = rest[open+length+1:]
		if name == "" || name == "$" {
			continue
		}
		if values == nil {
			values = map[string]string{}
		}
		values[name] = r.PathValue(name)
	}
	return pattern, values
}
