package main

import (
	"encoding/json"
	"net/http"
)

// problemTypeBase prefixes the type URI of every problem this API defines.
// Each name after the "#" is a heading in this command's README, which
// explains what the problem means and what a client should do.
const problemTypeBase = "https://github.com/pgguard/pgguard/blob/main/cmd/pgguard-demo/README.md#"

// Problem types. A client branches on the type, never on title or detail.
const (
	problemInvalidRequest   = problemTypeBase + "invalid-request"
	problemLoginFailed      = problemTypeBase + "login-failed"
	problemLoginLocked      = problemTypeBase + "login-locked"
	problemKeyReused        = problemTypeBase + "idempotency-key-reused"
	problemRequestInFlight  = problemTypeBase + "idempotency-request-in-flight"
	problemOutcomeUnknown   = problemTypeBase + "idempotency-outcome-unknown"
	problemOrderNotFound    = problemTypeBase + "order-not-found"
	problemRequestTooLarge  = problemTypeBase + "request-too-large"
	problemMethodNotAllowed = problemTypeBase + "method-not-allowed"
	problemNotFound         = problemTypeBase + "not-found"
	problemInternalError    = problemTypeBase + "internal-error"
)

// problemContentType is the media type of RFC 9457 problem details in JSON.
const problemContentType = "application/problem+json"

// problem is an RFC 9457 problem details object. It has no per-request
// member such as instance, so two rejections of the same kind have the same
// body byte for byte, which the login endpoint relies on.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// writeProblem sends p as application/problem+json. Error responses are
// never cached, because they depend on state that changes, such as a lock.
func writeProblem(w http.ResponseWriter, p problem) {
	body, err := json.Marshal(p)
	if err != nil {
		// A struct of strings and an int always encodes.
		panic(err)
	}

	header := w.Header()
	header.Set("Content-Type", problemContentType)
	header.Set("Cache-Control", "no-store")
	header.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_, _ = w.Write(append(body, '\n'))
}

func writeInvalidRequest(w http.ResponseWriter, detail string) {
	writeProblem(w, problem{
		Type:   problemInvalidRequest,
		Title:  "Invalid request",
		Status: http.StatusBadRequest,
		Detail: detail,
	})
}

func writeInternalError(w http.ResponseWriter) {
	writeProblem(w, problem{
		Type:   problemInternalError,
		Title:  "Internal server error",
		Status: http.StatusInternalServerError,
		Detail: "The server failed to handle the request. The error is in its log. Retry later.",
	})
}
