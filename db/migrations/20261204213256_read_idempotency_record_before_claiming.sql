-- migrate:up

-- A replay or an in-flight conflict used to go through INSERT ... ON
-- CONFLICT DO UPDATE, which locks the existing row even when its WHERE
-- rejects the update, so every replay wrote WAL and waited for its flush.
-- Reading the record first returns it without a write when this call
-- cannot take it over.
CREATE OR REPLACE FUNCTION idempotency_record_claim(
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
    -- Read first: a record that this call could not take over is returned
    -- as it is, without the row lock that INSERT ... ON CONFLICT DO UPDATE
    -- takes even when its WHERE rejects the update. A replay or an
    -- in-flight conflict then writes nothing, so its commit waits for no
    -- WAL flush.
    SELECT * INTO r FROM idempotency_records
    WHERE scope = p_scope AND route = p_route AND key = p_key;
    IF FOUND
        AND r.expires_at > v_now
        AND NOT (
            p_allow_takeover
            AND r.state = 'in_progress'
            AND r.lease_expires_at <= v_now
            AND r.request_hash = p_request_hash
        ) THEN
        RETURN NEXT r;
        RETURN;
    END IF;

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

CREATE OR REPLACE FUNCTION idempotency_record_claim(
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
