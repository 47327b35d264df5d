-- name: AuthLoginBegin :one
-- Reserves one login attempt against all three lockout counters, or
-- returns why it cannot; see auth_login_begin in the migrations.
SELECT
    d.decision::text AS decision,
    coalesce(d.tier, '')::text AS tier,
    coalesce(d.attempt_id, 0)::bigint AS attempt_id,
    -- A hard lock has no end, so db_now replaces its NULL locked_until.
    coalesce(d.locked_until, d.db_now)::timestamptz AS locked_until,
    coalesce(d.engaged, false)::boolean AS engaged,
    d.db_now::timestamptz AS db_now
FROM auth_login_begin(
    @email,
    sqlc.narg('ip'),
    @channel,
    sqlc.narg('now'),
    @attempt_timeout_ms,
    @known_source_ms,
    @hard_lock_after,
    @pair_max,
    @pair_window_ms,
    @pair_lock_ms,
    @pair_lock_max_ms,
    @account_max,
    @account_window_ms,
    @account_lock_ms,
    @account_lock_max_ms,
    @source_max,
    @source_window_ms,
    @source_lock_ms,
    @source_lock_max_ms
) d;

-- name: AuthLoginFail :one
-- Settles an attempt as a wrong credential and engages the locks whose
-- thresholds it reaches; see auth_login_fail in the migrations. A tier's
-- locked_until equals db_now when that tier is not locked, and attempt_id
-- is 0 when the attempt's counters are gone.
SELECT
    coalesce(f.attempt_id, 0)::bigint AS attempt_id,
    coalesce(f.failures_count, 0)::integer AS failures_count,
    coalesce(f.pair_locked_until, f.db_now, now())::timestamptz AS pair_locked_until,
    coalesce(f.pair_lock_engaged, false)::boolean AS pair_lock_engaged,
    coalesce(f.account_locked_until, f.db_now, now())::timestamptz AS account_locked_until,
    coalesce(f.account_lock_engaged, false)::boolean AS account_lock_engaged,
    coalesce(f.source_locked_until, f.db_now, now())::timestamptz AS source_locked_until,
    coalesce(f.source_lock_engaged, false)::boolean AS source_lock_engaged,
    coalesce(f.hard_lock_engaged, false)::boolean AS hard_lock_engaged,
    coalesce(f.db_now, now())::timestamptz AS db_now
FROM auth_login_fail(
    @attempt_id,
    sqlc.narg('now'),
    @hard_lock_after,
    @pair_max,
    @pair_lock_ms,
    @pair_lock_max_ms,
    @account_max,
    @account_lock_ms,
    @account_lock_max_ms,
    @source_max,
    @source_lock_ms,
    @source_lock_max_ms
) f;

-- name: AuthLoginSettle :one
-- Settles an attempt as a success (success), or gives it back without
-- counting (neither flag); see auth_login_settle in the migrations.
-- Returns false when the attempt's counters are gone.
SELECT auth_login_settle(
    @attempt_id,
    sqlc.narg('now'),
    @success,
    @remember_source
)::boolean AS settled;

-- name: AuthAttemptListByEmail :many
-- Lists the account-and-source counters of one account, every source and
-- channel.
SELECT * FROM auth_attempts
WHERE email = @email
ORDER BY channel, id;

-- name: AuthAccountCounterListByEmail :many
-- Lists the account-wide counters of one account, one per channel.
SELECT * FROM auth_account_counters
WHERE email = @email
ORDER BY channel;

-- name: AuthSourceCounterListBySource :many
-- Lists the source-wide counters of one source, one per channel. A NULL
-- ip selects the bucket of unknown sources.
SELECT * FROM auth_source_counters
WHERE ip = sqlc.narg('ip') OR (ip IS NULL AND sqlc.narg('ip') IS NULL)
ORDER BY channel;

-- name: AuthKnownSourceGet :one
SELECT * FROM auth_known_sources
WHERE email = @email
    AND ip = @ip;

-- name: AuthLockList :many
-- Lists active locks of every tier, a page at a time, ordered by tier and
-- id: pass the last row's tier and id as the cursor, or empty and 0 for the
-- first page. A hard lock has no end, so its row carries hard_locked and,
-- in locked_until, the time the hard lock began.
SELECT
    l.tier::text AS tier,
    l.id::bigint AS id,
    l.email::text AS email,
    l.ip,
    l.channel::text AS channel,
    l.locked_until::timestamptz AS locked_until,
    l.hard_locked::boolean AS hard_locked
FROM (
    SELECT
        'account' AS tier,
        c.id,
        c.email,
        NULL::inet AS ip,
        c.channel,
        coalesce(c.hard_locked_at, c.locked_until) AS locked_until,
        c.hard_locked_at IS NOT NULL AS hard_locked
    FROM auth_account_counters c
    WHERE c.hard_locked_at IS NOT NULL
        OR c.locked_until > coalesce(sqlc.narg('now')::timestamptz, now())
    UNION ALL
    SELECT 'account_source', a.id, a.email, a.ip, a.channel, a.locked_until, false
    FROM auth_attempts a
    WHERE a.locked_until > coalesce(sqlc.narg('now')::timestamptz, now())
    UNION ALL
    SELECT 'source', s.id, '', s.ip, s.channel, s.locked_until, false
    FROM auth_source_counters s
    WHERE s.locked_until > coalesce(sqlc.narg('now')::timestamptz, now())
) l
WHERE (l.tier, l.id) > (@after_tier::text, @after_id::bigint)
ORDER BY l.tier, l.id
LIMIT @max_rows;

-- name: AuthAccountUnlock :execrows
-- Clears the account-wide counters of one account on every channel, the
-- hard lock included. The rows are locked in channel order first, the
-- order in which a login that ends every channel's streak locks them, so
-- the two cannot deadlock.
WITH locked AS MATERIALIZED (
    SELECT l.id FROM auth_account_counters l
    WHERE l.email = @email
    ORDER BY l.channel
    FOR UPDATE
)
UPDATE auth_account_counters c
SET
    failures_count = 0,
    pending_count = 0,
    pending_since = NULL,
    lock_count = 0,
    locked_until = NULL,
    consecutive_failures = 0,
    hard_locked_at = NULL,
    updated_at = coalesce(sqlc.narg('now')::timestamptz, now())
FROM locked
WHERE c.id = locked.id;

-- name: AuthAttemptUnlockEmail :execrows
-- Clears the account-and-source counters of one account, every source and
-- channel.
UPDATE auth_attempts
SET
    failures_count = 0,
    pending_count = 0,
    pending_since = NULL,
    lock_count = 0,
    locked_until = NULL,
    updated_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE email = @email;

-- name: AuthSourceCounterUnlock :execrows
-- Clears the source-wide counters of one source on every channel.
UPDATE auth_source_counters
SET
    failures_count = 0,
    pending_count = 0,
    pending_since = NULL,
    lock_count = 0,
    locked_until = NULL,
    updated_at = coalesce(sqlc.narg('now')::timestamptz, now())
WHERE ip = sqlc.narg('ip') OR (ip IS NULL AND sqlc.narg('ip') IS NULL);

-- name: AuthAttemptDeleteIdle :one
-- Deletes, among the next max_rows account-and-source counters by id after
-- after_id, those whose last attempt and lock both ended before the
-- cutoff, and returns the last id it looked at (0 when none was left) and
-- how many it deleted. A purge walks the table by id this way, so each
-- statement reads and deletes at most max_rows rows without an index on
-- last_attempt_at, which every login would have to update. SKIP LOCKED
-- lets several purgers run side by side and never waits on a row a login
-- is updating.
WITH batch AS MATERIALIZED (
    SELECT id FROM auth_attempts
    WHERE id > @after_id::bigint
    ORDER BY id
    LIMIT @max_rows::integer
),
deleted AS (
    DELETE FROM auth_attempts
    WHERE id IN (
        SELECT a.id FROM auth_attempts a
        WHERE a.id IN (SELECT id FROM batch)
            AND a.last_attempt_at < @idle_before::timestamptz
            AND (a.locked_until IS NULL OR a.locked_until < @idle_before::timestamptz)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT
    (SELECT coalesce(max(id), 0) FROM batch)::bigint AS last_id,
    (SELECT count(*) FROM deleted)::bigint AS deleted;

-- name: AuthAccountCounterDeleteIdle :one
-- Like AuthAttemptDeleteIdle for account-wide counters. A hard-locked
-- account is never deleted. A streak toward the hard lock is kept until its
-- last failure is older than streak_before, so forgetting it costs an
-- attacker that long a pause.
WITH batch AS MATERIALIZED (
    SELECT id FROM auth_account_counters
    WHERE id > @after_id::bigint
    ORDER BY id
    LIMIT @max_rows::integer
),
deleted AS (
    DELETE FROM auth_account_counters
    WHERE id IN (
        SELECT a.id FROM auth_account_counters a
        WHERE a.id IN (SELECT id FROM batch)
            AND a.last_attempt_at < @idle_before::timestamptz
            AND (a.locked_until IS NULL OR a.locked_until < @idle_before::timestamptz)
            AND a.hard_locked_at IS NULL
            AND (a.consecutive_failures = 0 OR a.last_failure_at < @streak_before::timestamptz)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT
    (SELECT coalesce(max(id), 0) FROM batch)::bigint AS last_id,
    (SELECT count(*) FROM deleted)::bigint AS deleted;

-- name: AuthSourceCounterDeleteIdle :one
-- Like AuthAttemptDeleteIdle for source-wide counters.
WITH batch AS MATERIALIZED (
    SELECT id FROM auth_source_counters
    WHERE id > @after_id::bigint
    ORDER BY id
    LIMIT @max_rows::integer
),
deleted AS (
    DELETE FROM auth_source_counters
    WHERE id IN (
        SELECT a.id FROM auth_source_counters a
        WHERE a.id IN (SELECT id FROM batch)
            AND a.last_attempt_at < @idle_before::timestamptz
            AND (a.locked_until IS NULL OR a.locked_until < @idle_before::timestamptz)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT
    (SELECT coalesce(max(id), 0) FROM batch)::bigint AS last_id,
    (SELECT count(*) FROM deleted)::bigint AS deleted;

-- name: AuthKnownSourceDeleteExpired :execrows
-- Deletes at most max_rows known sources whose last success is older than
-- the cutoff; they no longer count as known.
DELETE FROM auth_known_sources
WHERE (email, ip) IN (
    SELECT k.email, k.ip FROM auth_known_sources k
    WHERE k.last_success_at < @success_before::timestamptz
    ORDER BY k.last_success_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
);

-- name: DatabaseNow :one
-- Returns the database clock, which every decision uses.
SELECT now()::timestamptz AS now;
