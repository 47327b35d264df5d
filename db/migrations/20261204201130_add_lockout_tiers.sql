-- migrate:up

-- Lockout keeps three counters per channel (what is being verified: a
-- password, a one-time code...), each with its own threshold, lock and
-- decay:
--   auth_attempts          one account from one client source;
--   auth_account_counters  one account from all sources, plus the
--                          consecutive-failure streak behind the hard lock;
--   auth_source_counters   one source against all accounts.
-- auth_known_sources remembers the sources an account logged in from, which
-- the account-wide lock spares.

-- Every counter gains two times: last_failure_at, from which failures are
-- forgotten (last_attempt_at also moves on admitted attempts that succeed),
-- and pending_since, when the oldest unsettled reservation was made.
ALTER TABLE auth_attempts
    ADD COLUMN channel text NOT NULL DEFAULT 'password',
    ADD COLUMN last_failure_at timestamptz,
    ADD COLUMN pending_since timestamptz,
    ADD CONSTRAINT auth_attempts_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    DROP CONSTRAINT auth_attempts_email_ip_key,
    ADD CONSTRAINT auth_attempts_email_ip_channel_key UNIQUE NULLS NOT DISTINCT (email, ip, channel),
    DROP COLUMN last_decision;

CREATE TABLE auth_account_counters (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email                text NOT NULL,
    channel              text NOT NULL,
    failures_count       integer NOT NULL DEFAULT 0,
    pending_count        integer NOT NULL DEFAULT 0,
    lock_count           integer NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    last_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_failure_at      timestamptz,
    pending_since        timestamptz,
    -- Failures since the last success, never forgotten with time.
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- Set when consecutive_failures reached the hard limit; only an
    -- explicit unlock clears it.
    hard_locked_at       timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT auth_account_counters_email_channel_key UNIQUE (email, channel),
    CONSTRAINT auth_account_counters_email_check CHECK (email <> '' AND octet_length(email) <= 320),
    CONSTRAINT auth_account_counters_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    CONSTRAINT auth_account_counters_counts_check CHECK (
        failures_count >= 0 AND pending_count >= 0 AND lock_count >= 0 AND consecutive_failures >= 0
    )
);

CREATE INDEX auth_account_counters_locked_until_idx ON auth_account_counters (locked_until)
    WHERE locked_until IS NOT NULL;
CREATE INDEX auth_account_counters_hard_locked_idx ON auth_account_counters (id)
    WHERE hard_locked_at IS NOT NULL;
CREATE INDEX auth_account_counters_last_attempt_at_idx ON auth_account_counters (last_attempt_at);

-- A NULL ip is the one bucket of attempts with no known source.
CREATE TABLE auth_source_counters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ip              inet,
    channel         text NOT NULL,
    failures_count  integer NOT NULL DEFAULT 0,
    pending_count   integer NOT NULL DEFAULT 0,
    lock_count      integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_failure_at timestamptz,
    pending_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT auth_source_counters_ip_channel_key UNIQUE NULLS NOT DISTINCT (ip, channel),
    CONSTRAINT auth_source_counters_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    CONSTRAINT auth_source_counters_counts_check CHECK (
        failures_count >= 0 AND pending_count >= 0 AND lock_count >= 0
    )
);

CREATE INDEX auth_source_counters_locked_until_idx ON auth_source_counters (locked_until)
    WHERE locked_until IS NOT NULL;
CREATE INDEX auth_source_counters_last_attempt_at_idx ON auth_source_counters (last_attempt_at);

CREATE TABLE auth_known_sources (
    email           text NOT NULL,
    ip              inet NOT NULL,
    last_success_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),

    PRIMARY KEY (email, ip)
);

CREATE INDEX auth_known_sources_last_success_at_idx ON auth_known_sources (last_success_at);

DROP FUNCTION auth_attempt_fail;
DROP FUNCTION auth_attempt_begin;

-- The outcome of auth_login_begin.
CREATE TYPE auth_login_decision AS (
    -- reserved, locked or saturated.
    decision     text,
    -- For locked: account_source, account, source or hard.
    tier         text,
    -- The auth_attempts row to settle, for reserved.
    attempt_id   bigint,
    -- For locked: when the lock ends; NULL for a hard lock.
    locked_until timestamptz,
    -- For locked: this call engaged the lock, because attempts that were
    -- never settled turned into failures.
    engaged      boolean,
    db_now       timestamptz
);

-- The outcome of auth_login_fail: the state of each tier after the failure.
CREATE TYPE auth_login_failure AS (
    attempt_id            bigint,
    failures_count        integer,
    pair_locked_until     timestamptz,
    pair_lock_engaged     boolean,
    account_locked_until  timestamptz,
    account_lock_engaged  boolean,
    source_locked_until   timestamptz,
    source_lock_engaged   boolean,
    hard_lock_engaged     boolean,
    db_now                timestamptz
);

-- The lock that rejects an attempt of (p_email, p_ip) on any channel right
-- now, the one ending last first, or no row. A lock on any channel applies
-- to every channel. The account-wide and source-wide locks spare a known
-- source, so neither an attacker elsewhere nor one sharing the owner's
-- address can lock the owner out with them. The hard lock spares no one:
-- an attacker sharing the owner's address counts as known, so sparing
-- known sources would let that attacker guess without end.
--
-- Every branch looks its row up by the whole key of a unique index, so the
-- cost does not grow with the number of sources that tried the account.
-- The unknown source has branches of its own because "ip = p_ip OR (ip IS
-- NULL AND p_ip IS NULL)" is no index condition; a false "p_ip IS NULL"
-- skips them before they read anything.
CREATE FUNCTION auth_login_active_lock(p_email text, p_ip inet, p_now timestamptz, p_known boolean)
RETURNS TABLE (tier text, locked_until timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT l.tier, l.locked_until FROM (
        SELECT
            CASE WHEN hard_locked_at IS NOT NULL THEN 'hard' ELSE 'account' END AS tier,
            CASE WHEN hard_locked_at IS NOT NULL THEN 'infinity'::timestamptz ELSE locked_until END AS locked_until
        FROM auth_account_counters
        WHERE email = p_email
            AND (hard_locked_at IS NOT NULL OR (locked_until > p_now AND NOT p_known))
        UNION ALL
        SELECT 'account_source', locked_until
        FROM auth_attempts
        WHERE email = p_email AND ip = p_ip AND locked_until > p_now
        UNION ALL
        SELECT 'account_source', locked_until
        FROM auth_attempts
        WHERE p_ip IS NULL AND email = p_email AND ip IS NULL AND locked_until > p_now
        UNION ALL
        SELECT 'source', locked_until
        FROM auth_source_counters
        WHERE ip = p_ip AND locked_until > p_now AND NOT p_known
        UNION ALL
        SELECT 'source', locked_until
        FROM auth_source_counters
        WHERE p_ip IS NULL AND ip IS NULL AND locked_until > p_now AND NOT p_known
    ) l
    ORDER BY l.locked_until DESC
    LIMIT 1
$$;

-- A counter as Begin sees it at p_now. Failures and lock history are
-- forgotten once the last failure and the end of the last lock are both
-- older than the window; counting from the lock's end keeps the doubling
-- alive across locks longer than the window. Reservations still unsettled
-- AttemptTimeout after the oldest of them was made are counted as failures
-- (returned in abandoned), because their callers crashed.
--
-- NOTE: the age is that of the oldest unsettled reservation, so live
-- reservations made alongside an abandoned one are counted with it; their
-- later settle then changes nothing.
CREATE FUNCTION auth_counter_normalize(
    INOUT failures_count integer,
    INOUT pending_count integer,
    INOUT lock_count integer,
    INOUT last_failure_at timestamptz,
    INOUT pending_since timestamptz,
    locked_until timestamptz,
    p_now timestamptz,
    p_window_ms bigint,
    p_attempt_timeout_ms bigint,
    OUT abandoned integer
)
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    abandoned := 0;
    IF coalesce(greatest(last_failure_at, locked_until), '-infinity')
        <= p_now - p_window_ms * interval '1 millisecond' THEN
        failures_count := 0;
        lock_count := 0;
    END IF;
    IF pending_count > 0
        AND pending_since <= p_now - p_attempt_timeout_ms * interval '1 millisecond' THEN
        abandoned := pending_count;
        failures_count := failures_count + pending_count;
        pending_count := 0;
        pending_since := NULL;
        last_failure_at := p_now;
    END IF;
END
$$;

-- Reserves one attempt of (p_email, p_ip) on p_channel against all three
-- counters, or decides why it cannot, in one call.
--
-- A rejected attempt is not counted and never extends a lock. The check for
-- an active lock runs first without row locks, so a flood against a locked
-- key costs no writes. Otherwise the rows are locked in one fixed order,
-- account, then account and source, then source, the same order every
-- settle uses, so concurrent logins cannot deadlock. Every lookup goes
-- through a unique index, so the cost does not grow with the number of
-- sources that tried an account.
CREATE FUNCTION auth_login_begin(
    p_email text,
    p_ip inet,
    p_channel text,
    p_now timestamptz,
    p_attempt_timeout_ms bigint,
    p_known_source_ms bigint,
    p_hard_lock_after integer,
    p_pair_max integer,
    p_pair_window_ms bigint,
    p_pair_lock_ms bigint,
    p_pair_lock_max_ms bigint,
    p_account_max integer,
    p_account_window_ms bigint,
    p_account_lock_ms bigint,
    p_account_lock_max_ms bigint,
    p_source_max integer,
    p_source_window_ms bigint,
    p_source_lock_ms bigint,
    p_source_lock_max_ms bigint
)
RETURNS auth_login_decision
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_known boolean;
    v_lock record;
    a auth_account_counters;
    p auth_attempts;
    s auth_source_counters;
    a_norm record;
    p_norm record;
    s_norm record;
    v_consecutive integer;
    v_tier text;
    v_until timestamptz;
BEGIN
    v_known := p_ip IS NOT NULL AND EXISTS (
        SELECT 1 FROM auth_known_sources k
        WHERE k.email = p_email
            AND k.ip = p_ip
            AND k.last_success_at > v_now - p_known_source_ms * interval '1 millisecond'
    );

    SELECT * INTO v_lock FROM auth_login_active_lock(p_email, p_ip, v_now, v_known);
    IF FOUND THEN
        RETURN ROW('locked', v_lock.tier, NULL, nullif(v_lock.locked_until, 'infinity'), false, v_now)::auth_login_decision;
    END IF;

    -- Lock all three rows in the fixed order, creating missing ones. Each
    -- statement takes a new snapshot, so it sees rows that concurrent
    -- calls committed while this one waited. Reading first keeps the
    -- common case, an existing row, to one statement per row.
    LOOP
        SELECT * INTO a FROM auth_account_counters
        WHERE email = p_email AND channel = p_channel
        FOR UPDATE;
        EXIT WHEN FOUND;
        -- No row yet: create it, then lock it on the next turn. A row a
        -- concurrent call creates first makes this insert do nothing.
        INSERT INTO auth_account_counters (email, channel, last_attempt_at, created_at, updated_at)
        VALUES (p_email, p_channel, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
    END LOOP;
    LOOP
        IF p_ip IS NULL THEN
            SELECT * INTO p FROM auth_attempts
            WHERE email = p_email AND ip IS NULL AND channel = p_channel
            FOR UPDATE;
        ELSE
            SELECT * INTO p FROM auth_attempts
            WHERE email = p_email AND ip = p_ip AND channel = p_channel
            FOR UPDATE;
        END IF;
        EXIT WHEN FOUND;
        INSERT INTO auth_attempts (email, ip, channel, last_attempt_at, created_at, updated_at)
        VALUES (p_email, p_ip, p_channel, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
    END LOOP;
    LOOP
        IF p_ip IS NULL THEN
            SELECT * INTO s FROM auth_source_counters
            WHERE ip IS NULL AND channel = p_channel
            FOR UPDATE;
        ELSE
            SELECT * INTO s FROM auth_source_counters
            WHERE ip = p_ip AND channel = p_channel
            FOR UPDATE;
        END IF;
        EXIT WHEN FOUND;
        INSERT INTO auth_source_counters (ip, channel, last_attempt_at, created_at, updated_at)
        VALUES (p_ip, p_channel, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
    END LOOP;

    -- The waits above may have taken a while: decide with the time after
    -- them, and check again for a lock engaged meanwhile.
    v_now := coalesce(p_now, clock_timestamp());
    SELECT * INTO v_lock FROM auth_login_active_lock(p_email, p_ip, v_now, v_known);
    IF FOUND THEN
        RETURN ROW('locked', v_lock.tier, NULL, nullif(v_lock.locked_until, 'infinity'), false, v_now)::auth_login_decision;
    END IF;

    a_norm := auth_counter_normalize(a.failures_count, a.pending_count, a.lock_count, a.last_failure_at,
        a.pending_since, a.locked_until, v_now, p_account_window_ms, p_attempt_timeout_ms);
    p_norm := auth_counter_normalize(p.failures_count, p.pending_count, p.lock_count, p.last_failure_at,
        p.pending_since, p.locked_until, v_now, p_pair_window_ms, p_attempt_timeout_ms);
    s_norm := auth_counter_normalize(s.failures_count, s.pending_count, s.lock_count, s.last_failure_at,
        s.pending_since, s.locked_until, v_now, p_source_window_ms, p_attempt_timeout_ms);
    v_consecutive := a.consecutive_failures + a_norm.abandoned;

    -- Abandoned reservations that turned into failures can reach a
    -- threshold here; engage those locks as a failure would.
    IF v_consecutive >= p_hard_lock_after AND a.hard_locked_at IS NULL THEN
        a.hard_locked_at := v_now;
        v_tier := 'hard';
    END IF;
    IF a_norm.failures_count >= p_account_max THEN
        a.locked_until := v_now + auth_attempt_lock_duration(a_norm.lock_count, p_account_lock_ms, p_account_lock_max_ms);
        a_norm.lock_count := a_norm.lock_count + 1;
        a_norm.failures_count := 0;
        IF NOT v_known THEN
            v_tier := coalesce(v_tier, 'account');
            v_until := a.locked_until;
        END IF;
    END IF;
    IF p_norm.failures_count >= p_pair_max THEN
        p.locked_until := v_now + auth_attempt_lock_duration(p_norm.lock_count, p_pair_lock_ms, p_pair_lock_max_ms);
        p_norm.lock_count := p_norm.lock_count + 1;
        p_norm.failures_count := 0;
        v_tier := coalesce(v_tier, 'account_source');
        v_until := greatest(v_until, p.locked_until);
    END IF;
    IF s_norm.failures_count >= p_source_max THEN
        s.locked_until := v_now + auth_attempt_lock_duration(s_norm.lock_count, p_source_lock_ms, p_source_lock_max_ms);
        s_norm.lock_count := s_norm.lock_count + 1;
        s_norm.failures_count := 0;
        IF NOT v_known THEN
            v_tier := coalesce(v_tier, 'source');
            v_until := greatest(v_until, s.locked_until);
        END IF;
    END IF;

    IF v_tier IS NULL THEN
        -- Reserve unless attempts in flight already fill a budget. The
        -- account-wide and source-wide budgets do not apply to a known
        -- source.
        IF p_norm.failures_count + p_norm.pending_count >= p_pair_max
            OR (NOT v_known AND a_norm.failures_count + a_norm.pending_count >= p_account_max)
            OR (NOT v_known AND s_norm.failures_count + s_norm.pending_count >= p_source_max) THEN
            v_tier := 'saturated';
        ELSE
            a_norm.pending_count := a_norm.pending_count + 1;
            p_norm.pending_count := p_norm.pending_count + 1;
            s_norm.pending_count := s_norm.pending_count + 1;
            -- The first reservation in flight starts the clock; an operator
            -- unlock may have left a stale time behind a zero count.
            a_norm.pending_since := CASE WHEN a_norm.pending_count = 1 THEN v_now ELSE a_norm.pending_since END;
            p_norm.pending_since := CASE WHEN p_norm.pending_count = 1 THEN v_now ELSE p_norm.pending_since END;
            s_norm.pending_since := CASE WHEN s_norm.pending_count = 1 THEN v_now ELSE s_norm.pending_since END;
            a.last_attempt_at := v_now;
            p.last_attempt_at := v_now;
            s.last_attempt_at := v_now;
        END IF;
    END IF;

    IF v_tier = 'saturated'
        AND (a_norm.failures_count, a_norm.pending_count, a_norm.lock_count, v_consecutive)
            IS NOT DISTINCT FROM (a.failures_count, a.pending_count, a.lock_count, a.consecutive_failures)
        AND (p_norm.failures_count, p_norm.pending_count, p_norm.lock_count)
            IS NOT DISTINCT FROM (p.failures_count, p.pending_count, p.lock_count)
        AND (s_norm.failures_count, s_norm.pending_count, s_norm.lock_count)
            IS NOT DISTINCT FROM (s.failures_count, s.pending_count, s.lock_count) THEN
        -- Nothing to store: callers that wait for attempts in flight can
        -- ask again without writing.
        RETURN ROW('saturated', NULL, NULL, NULL, false, v_now)::auth_login_decision;
    END IF;

    UPDATE auth_account_counters SET
        failures_count = a_norm.failures_count,
        pending_count = a_norm.pending_count,
        lock_count = a_norm.lock_count,
        locked_until = a.locked_until,
        last_attempt_at = a.last_attempt_at,
        last_failure_at = a_norm.last_failure_at,
        pending_since = a_norm.pending_since,
        consecutive_failures = v_consecutive,
        hard_locked_at = a.hard_locked_at,
        updated_at = v_now
    WHERE id = a.id;
    UPDATE auth_attempts SET
        failures_count = p_norm.failures_count,
        pending_count = p_norm.pending_count,
        lock_count = p_norm.lock_count,
        locked_until = p.locked_until,
        last_attempt_at = p.last_attempt_at,
        last_failure_at = p_norm.last_failure_at,
        pending_since = p_norm.pending_since,
        updated_at = v_now
    WHERE id = p.id;
    UPDATE auth_source_counters SET
        failures_count = s_norm.failures_count,
        pending_count = s_norm.pending_count,
        lock_count = s_norm.lock_count,
        locked_until = s.locked_until,
        last_attempt_at = s.last_attempt_at,
        last_failure_at = s_norm.last_failure_at,
        pending_since = s_norm.pending_since,
        updated_at = v_now
    WHERE id = s.id;

    IF v_tier IS NULL THEN
        RETURN ROW('reserved', NULL, p.id, NULL, false, v_now)::auth_login_decision;
    ELSIF v_tier = 'saturated' THEN
        RETURN ROW('saturated', NULL, NULL, NULL, false, v_now)::auth_login_decision;
    END IF;
    RETURN ROW('locked', v_tier, NULL, v_until, true, v_now)::auth_login_decision;
END
$$;

-- Locks the three counter rows of attempt p_attempt_id in the order
-- auth_login_begin uses and returns them; settles call it first. With
-- p_all_accounts, the account-wide rows of every channel of the account
-- are locked first, in channel order, for a settle that changes them all.
CREATE FUNCTION auth_login_lock_rows(
    p_attempt_id bigint,
    p_all_accounts boolean,
    OUT a auth_account_counters,
    OUT p auth_attempts,
    OUT s auth_source_counters
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_email text;
    v_ip inet;
    v_channel text;
BEGIN
    SELECT email, ip, channel INTO v_email, v_ip, v_channel FROM auth_attempts WHERE id = p_attempt_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    IF p_all_accounts THEN
        PERFORM 1 FROM auth_account_counters WHERE email = v_email ORDER BY channel FOR UPDATE;
    END IF;
    SELECT * INTO a FROM auth_account_counters WHERE email = v_email AND channel = v_channel FOR UPDATE;
    SELECT * INTO p FROM auth_attempts WHERE id = p_attempt_id FOR UPDATE;
    IF v_ip IS NULL THEN
        SELECT * INTO s FROM auth_source_counters WHERE ip IS NULL AND channel = v_channel FOR UPDATE;
    ELSE
        SELECT * INTO s FROM auth_source_counters WHERE ip = v_ip AND channel = v_channel FOR UPDATE;
    END IF;
END
$$;

-- Settles attempt p_attempt_id as a wrong credential on every counter and
-- engages each lock whose threshold is reached. A reservation already
-- counted as abandoned (pending_count is 0) is not counted twice, and an
-- active lock is never extended. Returns NULL when the attempt's rows are
-- gone (purged or unlocked by an operator).
CREATE FUNCTION auth_login_fail(
    p_attempt_id bigint,
    p_now timestamptz,
    p_hard_lock_after integer,
    p_pair_max integer,
    p_pair_lock_ms bigint,
    p_pair_lock_max_ms bigint,
    p_account_max integer,
    p_account_lock_ms bigint,
    p_account_lock_max_ms bigint,
    p_source_max integer,
    p_source_lock_ms bigint,
    p_source_lock_max_ms bigint
)
RETURNS auth_login_failure
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz;
    rows record;
    a auth_account_counters;
    p auth_attempts;
    s auth_source_counters;
    r auth_login_failure;
BEGIN
    rows := auth_login_lock_rows(p_attempt_id, false);
    a := rows.a;
    p := rows.p;
    s := rows.s;
    IF a.id IS NULL OR p.id IS NULL OR s.id IS NULL THEN
        RETURN NULL;
    END IF;
    v_now := coalesce(p_now, clock_timestamp());
    r.attempt_id := p.id;
    r.db_now := v_now;

    IF a.pending_count > 0 THEN
        a.pending_count := a.pending_count - 1;
        a.failures_count := a.failures_count + 1;
        a.last_failure_at := v_now;
        IF a.pending_count = 0 THEN
            a.pending_since := NULL;
        END IF;
        a.consecutive_failures := a.consecutive_failures + 1;
    END IF;
    IF p.pending_count > 0 THEN
        p.pending_count := p.pending_count - 1;
        p.failures_count := p.failures_count + 1;
        p.last_failure_at := v_now;
        IF p.pending_count = 0 THEN
            p.pending_since := NULL;
        END IF;
    END IF;
    IF s.pending_count > 0 THEN
        s.pending_count := s.pending_count - 1;
        s.failures_count := s.failures_count + 1;
        s.last_failure_at := v_now;
        IF s.pending_count = 0 THEN
            s.pending_since := NULL;
        END IF;
    END IF;

    r.hard_lock_engaged := a.consecutive_failures >= p_hard_lock_after AND a.hard_locked_at IS NULL;
    IF r.hard_lock_engaged THEN
        a.hard_locked_at := v_now;
    END IF;
    r.account_lock_engaged := a.failures_count >= p_account_max AND NOT coalesce(a.locked_until > v_now, false);
    IF r.account_lock_engaged THEN
        a.locked_until := v_now + auth_attempt_lock_duration(a.lock_count, p_account_lock_ms, p_account_lock_max_ms);
        a.lock_count := a.lock_count + 1;
        a.failures_count := 0;
    END IF;
    r.pair_lock_engaged := p.failures_count >= p_pair_max AND NOT coalesce(p.locked_until > v_now, false);
    IF r.pair_lock_engaged THEN
        p.locked_until := v_now + auth_attempt_lock_duration(p.lock_count, p_pair_lock_ms, p_pair_lock_max_ms);
        p.lock_count := p.lock_count + 1;
        p.failures_count := 0;
    END IF;
    r.source_lock_engaged := s.failures_count >= p_source_max AND NOT coalesce(s.locked_until > v_now, false);
    IF r.source_lock_engaged THEN
        s.locked_until := v_now + auth_attempt_lock_duration(s.lock_count, p_source_lock_ms, p_source_lock_max_ms);
        s.lock_count := s.lock_count + 1;
        s.failures_count := 0;
    END IF;

    UPDATE auth_account_counters SET
        failures_count = a.failures_count,
        pending_count = a.pending_count,
        lock_count = a.lock_count,
        locked_until = a.locked_until,
        last_attempt_at = v_now,
        last_failure_at = a.last_failure_at,
        pending_since = a.pending_since,
        consecutive_failures = a.consecutive_failures,
        hard_locked_at = a.hard_locked_at,
        updated_at = v_now
    WHERE id = a.id;
    UPDATE auth_attempts SET
        failures_count = p.failures_count,
        pending_count = p.pending_count,
        lock_count = p.lock_count,
        locked_until = p.locked_until,
        last_attempt_at = v_now,
        last_failure_at = p.last_failure_at,
        pending_since = p.pending_since,
        updated_at = v_now
    WHERE id = p.id;
    UPDATE auth_source_counters SET
        failures_count = s.failures_count,
        pending_count = s.pending_count,
        lock_count = s.lock_count,
        locked_until = s.locked_until,
        last_attempt_at = v_now,
        last_failure_at = s.last_failure_at,
        pending_since = s.pending_since,
        updated_at = v_now
    WHERE id = s.id;

    r.failures_count := p.failures_count;
    r.pair_locked_until := CASE WHEN p.locked_until > v_now THEN p.locked_until END;
    r.account_locked_until := CASE WHEN a.locked_until > v_now THEN a.locked_until END;
    r.source_locked_until := CASE WHEN s.locked_until > v_now THEN s.locked_until END;
    RETURN r;
END
$$;

-- Settles attempt p_attempt_id as not a failure. The reservation is given
-- back on every counter. With p_success, the credential was right: this
-- channel's streak toward the hard lock ends and the account-and-source
-- counter is reset, its lock included, but neither the account-wide nor
-- the source counter is, so a success cannot clear what other sources did.
-- With p_remember_source, the login is complete: the source becomes known
-- to the account and the streaks of all its channels end. Returns false
-- when the attempt's rows are gone.
CREATE FUNCTION auth_login_settle(
    p_attempt_id bigint,
    p_now timestamptz,
    p_success boolean,
    p_remember_source boolean
)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz;
    rows record;
BEGIN
    rows := auth_login_lock_rows(p_attempt_id, p_remember_source);
    IF (rows.a).id IS NULL OR (rows.p).id IS NULL OR (rows.s).id IS NULL THEN
        RETURN false;
    END IF;
    v_now := coalesce(p_now, clock_timestamp());

    UPDATE auth_account_counters SET
        pending_count = greatest(pending_count - 1, 0),
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        consecutive_failures = CASE WHEN p_success THEN 0 ELSE consecutive_failures END,
        updated_at = v_now
    WHERE id = (rows.a).id;
    UPDATE auth_attempts SET
        failures_count = CASE WHEN p_success THEN 0 ELSE failures_count END,
        pending_count = greatest(pending_count - 1, 0),
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        lock_count = CASE WHEN p_success THEN 0 ELSE lock_count END,
        locked_until = CASE WHEN p_success THEN NULL ELSE locked_until END,
        updated_at = v_now
    WHERE id = p_attempt_id;
    UPDATE auth_source_counters SET
        pending_count = greatest(pending_count - 1, 0),
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        updated_at = v_now
    WHERE id = (rows.s).id;

    IF p_remember_source THEN
        UPDATE auth_account_counters SET
            consecutive_failures = 0,
            updated_at = v_now
        WHERE email = (rows.p).email AND channel <> (rows.p).channel AND consecutive_failures > 0;
        IF (rows.p).ip IS NOT NULL THEN
            INSERT INTO auth_known_sources (email, ip, last_success_at, created_at)
            VALUES ((rows.p).email, (rows.p).ip, v_now, v_now)
            ON CONFLICT (email, ip) DO UPDATE SET last_success_at = excluded.last_success_at;
        END IF;
    END IF;
    RETURN true;
END
$$;

-- migrate:down

DROP FUNCTION auth_login_settle;
DROP FUNCTION auth_login_fail;
DROP FUNCTION auth_login_lock_rows;
DROP FUNCTION auth_login_begin;
DROP FUNCTION auth_counter_normalize;
DROP FUNCTION auth_login_active_lock;
DROP TYPE auth_login_failure;
DROP TYPE auth_login_decision;
DROP TABLE auth_known_sources;
DROP TABLE auth_source_counters;
DROP TABLE auth_account_counters;

-- Restore the single-counter schema and functions of the first migration.
DELETE FROM auth_attempts WHERE channel <> 'password';
ALTER TABLE auth_attempts
    DROP CONSTRAINT auth_attempts_email_ip_channel_key,
    DROP COLUMN channel,
    DROP COLUMN last_failure_at,
    DROP COLUMN pending_since,
    ADD COLUMN last_decision text NOT NULL DEFAULT 'reserved',
    ADD CONSTRAINT auth_attempts_email_ip_key UNIQUE NULLS NOT DISTINCT (email, ip),
    ADD CONSTRAINT auth_attempts_last_decision_check CHECK (last_decision IN ('reserved', 'locked', 'saturated'));

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
