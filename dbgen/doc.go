// Package dbgen holds the typed queries that sqlc generates from
// db/queries and db/migrations. Do not edit the generated files; change the
// SQL and run "make generate".
//
// Queries that decide by time take an optional Now parameter: nil lets the
// database clock decide, which is what production code should pass; tests
// pass a fixed time instead of sleeping. Durations are passed as
// milliseconds.
package dbgen
