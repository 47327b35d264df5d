// Package service implements pgguard's two protections on top of the typed
// queries in package dbgen:
//
//   - [Lockout] counts failed logins per normalized email and client source
//     and locks a key with growing durations. Each decision is one statement
//     and takes its time from the database clock.
//   - [Idempotency] claims an Idempotency-Key before a handler runs, replays
//     the stored response for a retry, and rejects a reused key whose request
//     differs.
//
// Both types are safe for concurrent use and take any [dbgen.DBTX], usually a
// *pgxpool.Pool.
package service
