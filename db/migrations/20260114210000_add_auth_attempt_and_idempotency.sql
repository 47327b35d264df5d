-- migrate:up

-- One row per (normalized email, client source). A NULL ip is the single
-- "unknown source" bucket: NULLS NOT DISTINCT makes every NULL equal for the
-- unique constraint, so failures without an IP share one counter.
CREATE TABLE auth_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL,
    -- The client source: an IPv4 address as /32, or an IPv6 network (a /64 by
    -- default), so every address a client controls in that prefix counts once.
    ip              inet,
    -- Settled failures since the last reset or lock.
    failures_count  integer NOT NULL DEFAULT 0,
    -- Attempts that passed Begin and have not been settled yet.
    pending_count   integer NOT NULL DEFAULT 0,
    -- Consecutive locks; the next lock lasts base * 2^lock_count, capped.
    lock_count      integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    -- Time of the last counted attempt: a reservation or a failure.
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- What the last Begin that wrote the row decided: reserved, locked or
    -- saturated. auth_attempt_begin returns its own decision here even when
    -- it writes nothing.
    last_decision   text NOT NULL DEFAULT 'reserved',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT auth_attempts_email_ip_key UNIQUE NULLS NOT DISTINCT (email, ip),
    CONSTRAINT auth_attempts_email_check CHECK (email <> '' AND octet_length(email) <= 320),
    CONSTRAINT auth_attempts_failures_count_check CHECK (failures_count >= 0),
    CONSTRAINT auth_attempts_pending_count_check CHECK (pending_count >= 0),
    CONSTRAINT auth_attempts_lock_count_check CHECK (lock_count >= 0),
    CONSTRAINT auth_attempts_last_decision_check CHECK (last_decision IN ('reserved', 'locked', 'saturated'))
);

-- Lookups by email are served by the unique constraint's index, whose
-- leading column is email, so no separate email index is needed.
CREATE INDEX auth_attempts_ip_idx ON auth_attempts (ip);
-- Only locked rows are ever listed by lock time, so the index skips the rest.
CREATE INDEX auth_attempts_locked_until_idx ON auth_attempts (locked_until)
    WHERE locked_until IS NOT NULL;
-- Purging idle rows scans by last activity.
CREATE INDEX auth_attempts_last_attempt_at_idx ON auth_attempts (last_attempt_at);

-- Length of a lock after lock_count earlier consecutive locks:
-- base * 2^lock_count, capped at max. Inputs are milliseconds.
CREATE FUNCTION auth_attempt_lock_duration(lock_count integer, base_ms bigint, max_ms bigint)
RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN least(base_ms * power(2, least(lock_count, 40)), max_ms) * interval '1 millisecond';

-- Reserves one attempt for (email, ip), or decides why it cannot, in one
-- call. The returned row carries the decision in last_decision:
--   locked:    a lock is active or was engaged by this call; nothing counted.
--   saturated: settled failures plus reservations still in flight reach the
--              threshold; nothing counted, the caller waits for them.
--   reserved:  pending_count grew by one and the caller may verify.
-- A rejected call writes nothing unless it engages a lock or forgets stale
-- counts, so a flood of attempts against a locked key costs no writes.
CREATE FUNCTION auth_attempt_begin(
    p_email text,
    p_ip inet,
    p_now timestamptz,
    p_max_failures integer,
    p_failure_window_ms bigint,
    p_attempt_timeout_ms bigint,
    p_lock_base_ms bigint,
    p_lock_max_ms bigint
)
RETURNS SETOF auth_attempts
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    r auth_attempts;
    v_failures integer;
    v_pending integer;
    v_lock_count integer;
BEGIN
    LOOP
        INSERT INTO auth_attempts (email, ip, pending_count, last_attempt_at, last_decision, created_at, updated_at)
        VALUES (p_email, p_ip, 1, v_now, 'reserved', v_now, v_now)
        ON CONFLICT (email, ip) DO NOTHING
        RETURNING * INTO r;
        IF FOUND THEN
            RETURN NEXT r;
            RETURN;
        END IF;

        -- The row exists. This statement takes a new snapshot, so it sees a
        -- row a concurrent Begin just committed, and FOR UPDATE queues this
        -- call behind every other Begin and settle of the same key.
        IF p_ip IS NULL THEN
            SELECT * INTO r FROM auth_attempts WHERE email = p_email AND ip IS NULL FOR UPDATE;
        ELSE
            SELECT * INTO r FROM auth_attempts WHERE email = p_email AND ip = p_ip FOR UPDATE;
        END IF;
        -- Not found only if a purge deleted the row in between: insert again.
        EXIT WHEN FOUND;
    END LOOP;

    IF r.locked_until > v_now THEN
        r.last_decision := 'locked';
        RETURN NEXT r;
        RETURN;
    END IF;

    v_failures := r.failures_count;
    v_pending := r.pending_count;
    v_lock_count := r.lock_count;

    IF greatest(r.last_attempt_at, r.locked_until)
        <= v_now - p_failure_window_ms * interval '1 millisecond' THEN
        -- Both the last attempt and the end of the last lock are older than
        -- the window: forget everything. Counting from the lock's end keeps
        -- the doubling alive across locks longer than the window.
        v_failures := 0;
        v_pending := 0;
        v_lock_count := 0;
    ELSIF v_pending > 0
        AND r.last_attempt_at <= v_now - p_attempt_timeout_ms * interval '1 millisecond' THEN
        -- Reservations older than the attempt timeout were never settled
        -- (their caller crashed or lost its connection): they were failures.
        v_failures := v_failures + v_pending;
        v_pending := 0;
    END IF;

    IF v_failures >= p_max_failures THEN
        UPDATE auth_attempts SET
            failures_count = 0,
            pending_count = v_pending,
            lock_count = v_lock_count + 1,
            locked_until = v_now + auth_attempt_lock_duration(v_lock_count, p_lock_base_ms, p_lock_max_ms),
            last_decision = 'locked',
            updated_at = v_now
        WHERE id = r.id
        RETURNING * INTO r;
    ELSIF v_failures + v_pending >= p_max_failures THEN
        IF (v_failures, v_pending, v_lock_count) IS DISTINCT FROM (r.failures_count, r.pending_count, r.lock_count) THEN
            UPDATE auth_attempts SET
                failures_count = v_failures,
                pending_count = v_pending,
                lock_count = v_lock_count,
                updated_at = v_now
            WHERE id = r.id
            RETURNING * INTO r;
        END IF;
        r.last_decision := 'saturated';
    ELSE
        UPDATE auth_attempts SET
            failures_count = v_failures,
            pending_count = v_pending + 1,
            lock_count = v_lock_count,
            last_attempt_at = v_now,
            last_decision = 'reserved',
            updated_at = v_now
        WHERE id = r.id
        RETURNING * INTO r;
    END IF;

    RETURN NEXT r;
END
$$;

-- Settles a reservation of row p_id as a failure and engages a lock when the
-- failures reach the threshold. A reservation that Begin already counted as
-- abandoned (pending_count is 0) is not counted twice, and an active lock is
-- never extended. Returns no row if p_id does not exist.
CREATE FUNCTION auth_attempt_fail(
    p_id bigint,
    p_now timestamptz,
    p_max_failures integer,
    p_lock_base_ms bigint,
    p_lock_max_ms bigint
)
RETURNS SETOF auth_attempts
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    r auth_attempts;
    v_failures integer;
BEGIN
    SELECT * INTO r FROM auth_attempts WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    v_failures := r.failures_count;
    IF r.pending_count > 0 THEN
        v_failures := v_failures + 1;
    END IF;

    IF v_failures >= p_max_failures AND NOT coalesce(r.locked_until > v_now, false) THEN
        UPDATE auth_attempts SET
            failures_count = 0,
            pending_count = greatest(pending_count - 1, 0),
            lock_count = lock_count + 1,
            locked_until = v_now + auth_attempt_lock_duration(r.lock_count, p_lock_base_ms, p_lock_max_ms),
            last_attempt_at = v_now,
            updated_at = v_now
        WHERE id = p_id
        RETURNING * INTO r;
    ELSE
        UPDATE auth_attempts SET
            failures_count = v_failures,
            pending_count = greatest(pending_count - 1, 0),
            last_attempt_at = v_now,
            updated_at = v_now
        WHERE id = p_id
        RETURNING * INTO r;
    END IF;

    RETURN NEXT r;
END
$$;

-- One row per (tenant scope, method and route, key).
CREATE TABLE idempotency_records (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key                text NOT NULL,
    -- Method and route template, for example 'POST /orders'.
    route              text NOT NULL,
    -- Whose key this is: 'org:<id>', 'principal:<id>' or 'ip:<address>'.
    scope              text NOT NULL,
    -- Versioned fingerprint of the request, for example 'v1:<sha256 hex>'.
    request_hash       text NOT NULL,
    -- 'in_progress' while a caller holds the lease, then 'completed'.
    state              text NOT NULL DEFAULT 'in_progress',
    -- Fencing token of the current owner: only it may complete or release.
    lock_token         uuid,
    lease_expires_at   timestamptz,
    response_status    integer,
    -- Allow-listed response headers as a JSON object of string arrays.
    response_headers   jsonb,
    -- The response body when it is valid UTF-8 without NUL bytes.
    response_body_json text,
    -- The response body otherwise, stored byte for byte.
    response_body      bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    expires_at         timestamptz NOT NULL,
    organization_id    text,
    ip                 inet,

    CONSTRAINT idempotency_records_scope_route_key_key UNIQUE (scope, route, key),
    CONSTRAINT idempotency_records_key_check CHECK (key <> '' AND char_length(key) <= 255),
    CONSTRAINT idempotency_records_route_check CHECK (route <> ''),
    CONSTRAINT idempotency_records_scope_check CHECK (scope <> ''),
    CONSTRAINT idempotency_records_request_hash_check CHECK (request_hash <> ''),
    CONSTRAINT idempotency_records_state_check CHECK (state IN ('in_progress', 'completed')),
    CONSTRAINT idempotency_records_response_status_check CHECK (response_status BETWEEN 100 AND 599),
    CONSTRAINT idempotency_records_one_body_check CHECK (response_body_json IS NULL OR response_body IS NULL),
    -- A completed record has a status; an in-progress one has an owner and a lease.
    CONSTRAINT idempotency_records_state_fields_check CHECK (
        (state = 'completed' AND response_status IS NOT NULL)
        OR (state = 'in_progress' AND lock_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    )
);

CREATE INDEX idempotency_records_expires_at_idx ON idempotency_records (expires_at);
CREATE INDEX idempotency_records_organization_id_idx ON idempotency_records (organization_id)
    WHERE organization_id IS NOT NULL;

-- Claims (p_scope, p_route, p_key) for the caller holding p_lock_token, or
-- returns the record that stands in the way, in one call. The caller owns
-- the returned record exactly when its lock_token equals p_lock_token.
-- A new key is inserted in progress with a lease. An expired record is
-- replaced whatever it held. A record whose lease ran out without a
-- response is taken over only for the same request hash, and only when the
-- caller allows it (p_allow_takeover: the route is safe to run again).
CREATE FUNCTION idempotency_record_claim(
    p_scope text,
    p_route text,
    p_key text,
    p_request_hash text,
    p_lock_token uuid,
    p_now timestamptz,
    p_lease_ms bigint,
    p_ttl_ms bigint,
    p_allow_takeover boolean,
    p_organization_id text,
    p_ip inet
)
RETURNS SETOF idempotency_records
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    r idempotency_records;
BEGIN
    LOOP
        INSERT INTO idempotency_records AS old (
            key, route, scope, request_hash, state, lock_token, lease_expires_at,
            created_at, expires_at, organization_id, ip
        ) VALUES (
            p_key, p_route, p_scope, p_request_hash, 'in_progress', p_lock_token,
            v_now + p_lease_ms * interval '1 millisecond',
            v_now, v_now + p_ttl_ms * interval '1 millisecond', p_organization_id, p_ip
        )
        ON CONFLICT (scope, route, key) DO UPDATE SET
            request_hash = excluded.request_hash,
            state = 'in_progress',
            lock_token = excluded.lock_token,
            lease_expires_at = excluded.lease_expires_at,
            response_status = NULL,
            response_headers = NULL,
            response_body_json = NULL,
            response_body = NULL,
            created_at = excluded.created_at,
            completed_at = NULL,
            expires_at = excluded.expires_at,
            organization_id = excluded.organization_id,
            ip = excluded.ip
        WHERE old.expires_at <= v_now
            OR (
                p_allow_takeover
                AND old.state = 'in_progress'
                AND old.lease_expires_at <= v_now
                AND old.request_hash = p_request_hash
            )
        RETURNING * INTO r;
        IF FOUND THEN
            RETURN NEXT r;
            RETURN;
        END IF;

        -- Another caller owns the key. This statement takes a new snapshot,
        -- so it sees that caller's row even if it committed a moment ago.
        SELECT * INTO r FROM idempotency_records
        WHERE scope = p_scope AND route = p_route AND key = p_key;
        -- Not found only if the owner released or purged the row in
        -- between: try to claim again.
        EXIT WHEN FOUND;
    END LOOP;

    RETURN NEXT r;
END
$$;

-- migrate:down

DROP FUNCTION idempotency_record_claim;
DROP TABLE idempotency_records;
DROP FUNCTION auth_attempt_fail;
DROP FUNCTION auth_attempt_begin;
DROP FUNCTION auth_attempt_lock_duration;
DROP TABLE auth_attempts;
