-- name: AuthAttemptBegin :one
-- Reserves one attempt for (email, ip), or returns why it cannot in
-- last_decision; see auth_attempt_begin in the migrations for the rules.
SELECT
    a.*,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM auth_attempt_begin(
    @email,
    sqlc.narg('ip'),
    sqlc.narg('now'),
    @max_failures,
    @failure_window_ms,
    @attempt_timeout_ms,
    @lock_base_ms,
    @lock_max_ms
) a;

-- name: AuthAttemptFail :one
-- Settles a reservation as a failure and locks at the threshold; see
-- auth_attempt_fail in the migrations. No row means the id does not exist.
SELECT
    a.*,
    coalesce(sqlc.narg('now')::timestamptz, now())::timestamptz AS db_now
FROM auth_attempt_fail(
    @id,
    sqlc.narg('now'),
    @max_failures,
    @lock_base_ms,
    @lock_max_ms
) a;

-- name: AuthAttemptSucceed :execrows
-- Settles a reservation as a success: the attempt is refunded and the
-- counter, the lock and the lock history of this (email, ip) are reset.
UPDATE auth_attempts
SET
    failures_count = 0,
    pending_count = greatest(pending_count - 1, 0),
    lock_count = 0,
    locked_until = NULL,
    updated_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE id = @id;

-- name: AuthAttemptGet :one
SELECT * FROM auth_attempts
WHERE email = @email
    -- Spelled out instead of IS NOT DISTINCT FROM, which cannot use the
    -- (email, ip) index.
    AND (ip = sqlc.narg('ip') OR (ip IS NULL AND sqlc.narg('ip') IS NULL));

-- name: AuthAttemptListByEmail :many
SELECT * FROM auth_attempts
WHERE email = @email
ORDER BY id;

-- name: AuthAttemptListLocked :many
-- Lists active locks by when they end, a page at a time: pass the last row's
-- locked_until and id as the cursor, or NULLs for the first page.
SELECT * FROM auth_attempts
WHERE locked_until > coalesce(sqlc.narg('now')::timestamptz, now())
    AND (
        sqlc.narg('after_locked_until')::timestamptz IS NULL
        OR (locked_until, id) > (sqlc.narg('after_locked_until')::timestamptz, sqlc.narg('after_id')::bigint)
    )
ORDER BY locked_until, id
LIMIT @max_rows;

-- name: AuthAttemptUnlockEmail :execrows
-- Clears counters and locks of every source for one email.
UPDATE auth_attempts
SET
    failures_count = 0,
    pending_count = 0,
    lock_count = 0,
    locked_until = NULL,
    updated_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE email = @email;

-- name: AuthAttemptDeleteIdle :execrows
-- Deletes at most max_rows rows whose last attempt and lock both ended
-- before the cutoff. SKIP LOCKED lets several purgers run side by side and
-- never waits on a row a login is updating.
DELETE FROM auth_attempts
WHERE id IN (
    SELECT id FROM auth_attempts
    WHERE last_attempt_at < @idle_before::timestamptz
        AND (locked_until IS NULL OR locked_until < @idle_before::timestamptz)
    ORDER BY last_attempt_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
);

-- name: DatabaseNow :one
-- Returns the database clock, which every decision uses.
SELECT now()::timestamptz AS now;
