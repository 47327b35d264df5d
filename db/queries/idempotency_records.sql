-- name: IdempotencyRecordClaim :one
-- Claims a key for the caller's lock_token, or returns the record in the
-- way; see idempotency_record_claim in the migrations for the rules. The
-- caller owns the record when the returned lock_token equals its own.
SELECT
    r.*,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM idempotency_record_claim(
    @scope,
    @route,
    @key,
    @request_hash,
    @lock_token,
    sqlc.narg('now'),
    @lease_ms,
    @ttl_ms,
    @allow_takeover,
    sqlc.narg('organization_id'),
    sqlc.narg('ip')
) r;

-- name: IdempotencyRecordGet :one
SELECT
    *,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM idempotency_records
WHERE scope = @scope
    AND route = @route
    AND key = @key;

-- name: IdempotencyRecordComplete :execrows
-- Stores the response, but only while the caller still owns the record: a
-- caller whose lease was taken over matches no row and changes nothing.
UPDATE idempotency_records
SET
    state = 'completed',
    lock_token = NULL,
    lease_expires_at = NULL,
    response_status = @response_status,
    response_headers = @response_headers,
    response_body_json = sqlc.narg('response_body_json'),
    response_body = sqlc.narg('response_body'),
    completed_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE id = @id
    AND state = 'in_progress'
    AND lock_token = @lock_token;

-- name: IdempotencyRecordMarkResultUnavailable :execrows
-- Settles the record without a response, for a handler that finished with a
-- response too large to store: retries get "result unavailable" and never
-- run again. Like Complete it only touches a record the caller still owns.
UPDATE idempotency_records
SET
    state = 'result_unavailable',
    lock_token = NULL,
    lease_expires_at = NULL,
    response_status = @response_status,
    completed_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE id = @id
    AND state = 'in_progress'
    AND lock_token = @lock_token;

-- name: IdempotencyRecordMarkOutcomeUnknown :execrows
-- Settles the record without a response, for a handler that failed after it
-- may have changed something: retries get "outcome unknown" and never run
-- again. Like Complete it only touches a record the caller still owns.
UPDATE idempotency_records
SET
    state = 'outcome_unknown',
    lock_token = NULL,
    lease_expires_at = NULL,
    completed_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE id = @id
    AND state = 'in_progress'
    AND lock_token = @lock_token;

-- name: IdempotencyRecordRelease :execrows
-- Gives up a claim so a retry with the same key runs again; like Complete it
-- only touches a record the caller still owns.
DELETE FROM idempotency_records
WHERE id = @id
    AND state = 'in_progress'
    AND lock_token = @lock_token;

-- name: IdempotencyRecordDeleteExpired :execrows
-- Deletes at most max_rows expired records. SKIP LOCKED lets several purgers
-- run side by side and never waits on a record a request is claiming.
DELETE FROM idempotency_records
WHERE id IN (
    SELECT id FROM idempotency_records
    WHERE expires_at <= coalesce(sqlc.narg('now')::timestamptz, now())
    ORDER BY expires_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
);
