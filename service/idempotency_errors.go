package service

import "errors"

// ErrResultUnavailable means the first request with this key finished, but
// its response was not stored, usually because its body was longer than
// IdempotencyConfig.MaxResponseBytes. The request is never run again for
// this key, so retries get this error until the record expires.
var ErrResultUnavailable = errors.New("pgguard: the response of an earlier request with this idempotency key was not stored")
