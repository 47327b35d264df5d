-- name: IdempotencyRecordClaim :one
-- Claims a key for the caller's lock_token, or returns the record in the
-- way; see idempotency_record_claim in the migrations for the rules. The
-- caller owns the record when the returned lock_token equals its own.
--
-- The first branch is the read the function starts with, and returns a
-- record that this call cannot take over. Postgres runs the branches of a
-- UNION ALL in order and LIMIT 1 stops at the first row, so a replay or an
-- in-flight conflict costs one indexed select and no plpgsql call. The NOT
-- EXISTS repeats the first branch's condition in the same snapshot, so the
-- function cannot run when that branch found a row, whatever the plan. The
-- function reads the record again with a new snapshot, so a record
-- committed in between is handled as before. lock_token is text because
-- pgx encodes a uuid.UUID argument through a failed binary encode of its
-- string form, which builds an error value on every call.
SELECT
    f.id, f.request_hash, f.state, f.lock_token, f.lease_expires_at,
    f.response_status, f.response_headers, f.response_body_json, f.response_body,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM idempotency_records f
WHERE f.scope = @scope
    AND f.route = @route
    AND f.key = @key
    AND f.expires_at > coalesce(sqlc.narg('now')::timestamptz, now())
    AND NOT (
        @allow_takeover::boolean
        AND f.state = 'in_progress'
        AND f.lease_expires_at <= coalesce(sqlc.narg('now')::timestamptz, now())
        AND f.request_hash = @request_hash
    )
UNION ALL
SELECT
    r.id, r.request_hash, r.state, r.lock_token, r.lease_expires_at,
    r.response_status, r.response_headers, r.response_body_json, r.response_body,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM idempotency_record_claim(
    @scope,
    @route,
    @key,
    @request_hash,
    sqlc.arg('lock_token')::text::uuid,
    sqlc.narg('now'),
    @lease_ms,
    @ttl_ms,
    @allow_takeover,
    sqlc.narg('organization_id'),
    sqlc.narg('ip')
) r
WHERE NOT EXISTS (
    SELECT FROM idempotency_records e
    WHERE e.scope = @scope
        AND e.route = @route
        AND e.key = @key
        AND e.expires_at > coalesce(sqlc.narg('now')::timestamptz, now())
        AND NOT (
            @allow_takeover::boolean
            AND e.state = 'in_progress'
            AND e.lease_expires_at <= coalesce(sqlc.narg('now')::timestamptz, now())
            AND e.request_hash = @request_hash
        )
)
LIMIT 1;

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

-- name: IdempotencyRecordDeleteExpired :one
-- Deletes at most max_rows expired records whose expires_at is not before
-- after (all of them when after is NULL), in expires_at order. Returns how
-- many it deleted and the latest expires_at among them, or the cutoff time
-- when it deleted none. Passing last_expires_at back as after starts the
-- next batch's index scan where this one ended instead of at the oldest
-- entry: until vacuum removes them, the index keeps the entries of the rows
-- that earlier batches deleted, and a scan from the start steps over every
-- one. SKIP LOCKED lets several purgers run side by side and never waits on
-- a record a request is claiming. A skipped record that expired before
-- last_expires_at is left for a later purge.
WITH batch AS (
    SELECT id FROM idempotency_records
    WHERE expires_at <= coalesce(sqlc.narg('now')::timestamptz, now())
        AND expires_at >= coalesce(sqlc.narg('after')::timestamptz, '-infinity')
    ORDER BY expires_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM idempotency_records
    WHERE id IN (SELECT id FROM batch)
    RETURNING expires_at
)
SELECT
    count(*) AS deleted,
    coalesce(
        max(expires_at),
        coalesce(sqlc.narg('now')::timestamptz, now())
    )::timestamptz AS last_expires_at
FROM deleted;
