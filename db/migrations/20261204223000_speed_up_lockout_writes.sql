-- migrate:up

-- Every login updates three counter rows twice, once to reserve the
-- attempt and once to settle it, so the cost of one row update is paid six
-- times per login. This migration cuts it in three ways.
--
-- Heap-only updates: an update that changes no indexed column and finds
-- room on the row's page writes no index entries, and later reads skip
-- the dead versions by pruning the page. last_attempt_at changed on every
-- update and was indexed only to find idle rows, so its indexes go; the
-- purge now walks each table by id. A fillfactor of 70 leaves room on the
-- pages written from now on.
DROP INDEX auth_attempts_last_attempt_at_idx;
DROP INDEX auth_account_counters_last_attempt_at_idx;
DROP INDEX auth_source_counters_last_attempt_at_idx;
ALTER TABLE auth_attempts SET (fillfactor = 70);

-- No query looks account-and-source counters up by source alone, and
-- Postgres could pick this index for the lookups by email and source: on
-- a source that sprayed many accounts, each login then read every counter
-- of that source.
DROP INDEX auth_attempts_ip_idx;
ALTER TABLE auth_account_counters SET (fillfactor = 70);
ALTER TABLE auth_source_counters SET (fillfactor = 70);

-- Domains instead of CHECK constraints: Postgres parses the stored
-- expression of every CHECK constraint of a table again in each statement
-- that writes the table: a fifth of the instructions a login ran. A
-- domain's check is cached for the session and runs only on the columns a
-- statement sets. The rules stay the same. Changing the column types
-- rewrites the three tables and their indexes under an ACCESS EXCLUSIVE
-- lock, so logins wait until this migration ends.
CREATE DOMAIN auth_email AS text
    CONSTRAINT auth_email_check CHECK (VALUE <> '' AND octet_length(VALUE) <= 320);
CREATE DOMAIN auth_channel AS text
    CONSTRAINT auth_channel_check CHECK (VALUE ~ '^[a-z][a-z0-9_]{0,31}$');
CREATE DOMAIN auth_count AS integer
    CONSTRAINT auth_count_check CHECK (VALUE >= 0);

ALTER TABLE auth_attempts
    DROP CONSTRAINT auth_attempts_email_check,
    DROP CONSTRAINT auth_attempts_channel_check,
    DROP CONSTRAINT auth_attempts_failures_count_check,
    DROP CONSTRAINT auth_attempts_pending_count_check,
    DROP CONSTRAINT auth_attempts_lock_count_check,
    ALTER COLUMN email TYPE auth_email,
    ALTER COLUMN channel TYPE auth_channel,
    ALTER COLUMN failures_count TYPE auth_count,
    ALTER COLUMN pending_count TYPE auth_count,
    ALTER COLUMN lock_count TYPE auth_count;
ALTER TABLE auth_account_counters
    DROP CONSTRAINT auth_account_counters_email_check,
    DROP CONSTRAINT auth_account_counters_channel_check,
    DROP CONSTRAINT auth_account_counters_counts_check,
    ALTER COLUMN email TYPE auth_email,
    ALTER COLUMN channel TYPE auth_channel,
    ALTER COLUMN failures_count TYPE auth_count,
    ALTER COLUMN pending_count TYPE auth_count,
    ALTER COLUMN lock_count TYPE auth_count,
    ALTER COLUMN consecutive_failures TYPE auth_count;
ALTER TABLE auth_source_counters
    DROP CONSTRAINT auth_source_counters_channel_check,
    DROP CONSTRAINT auth_source_counters_counts_check,
    ALTER COLUMN channel TYPE auth_channel,
    ALTER COLUMN failures_count TYPE auth_count,
    ALTER COLUMN pending_count TYPE auth_count,
    ALTER COLUMN lock_count TYPE auth_count;

-- Index lookups whatever the statistics say: plpgsql keeps the plan of
-- each statement for the life of the connection, and a plan made while a
-- table was empty, as on a new deployment or with autovacuum off, reads
-- the whole table on every later call. With seq scans off for these
-- functions, every key is looked up through its unique index.
--
-- Fewer statements per call: auth_login_fail and auth_login_settle lock
-- each row with the UPDATE that changes it instead of a SELECT ... FOR
-- UPDATE first. The signatures stay the same.
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
CREATE OR REPLACE FUNCTION auth_login_begin(
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
SET enable_seqscan = off
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_known boolean;
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

    SELECT l.tier, l.locked_until INTO v_tier, v_until
    FROM auth_login_active_lock(p_email, p_ip, v_now, v_known) l;
    IF FOUND THEN
        RETURN ROW('locked', v_tier, NULL, nullif(v_until, 'infinity'), false, v_now)::auth_login_decision;
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
    -- them, and check again for a lock engaged meanwhile, on any channel.
    v_now := coalesce(p_now, clock_timestamp());
    SELECT l.tier, l.locked_until INTO v_tier, v_until
    FROM auth_login_active_lock(p_email, p_ip, v_now, v_known) l;
    IF FOUND THEN
        RETURN ROW('locked', v_tier, NULL, nullif(v_until, 'infinity'), false, v_now)::auth_login_decision;
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


-- Settles attempt p_attempt_id as a wrong credential on every counter and
-- engages each lock whose threshold is reached. A reservation already
-- counted as abandoned (pending_count is 0) is not counted twice, and an
-- active lock is never extended. Returns NULL when the attempt's own row
-- is gone (purged); a purged account-wide or source-wide row is skipped.
--
-- NOTE: a purge can delete the attempt's own row while this call waits
-- for the account-wide row. The failure then still counts there and may
-- engage its lock, but the NULL result tells the caller nothing of it, so
-- no lock event is emitted. Purges delete only rows idle for longer than
-- every failure window, so this needs an attempt in flight that long.
--
-- Each UPDATE locks its row, in the order auth_login_begin uses, and reads
-- the row as it is after any wait, so no SELECT ... FOR UPDATE is needed. A
-- lock is engaged by a second UPDATE of the row, only when a threshold is
-- reached.
CREATE OR REPLACE FUNCTION auth_login_fail(
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
SET enable_seqscan = off
AS $$
DECLARE
    v_now timestamptz;
    v_email text;
    v_ip inet;
    v_channel text;
    a auth_account_counters;
    p auth_attempts;
    s auth_source_counters;
    r auth_login_failure;
BEGIN
    SELECT email, ip, channel INTO v_email, v_ip, v_channel FROM auth_attempts WHERE id = p_attempt_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_now := coalesce(p_now, clock_timestamp());

    UPDATE auth_account_counters SET
        failures_count = failures_count + (pending_count > 0)::integer,
        consecutive_failures = consecutive_failures + (pending_count > 0)::integer,
        last_failure_at = CASE WHEN pending_count > 0 THEN v_now ELSE last_failure_at END,
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        pending_count = greatest(pending_count - 1, 0),
        last_attempt_at = v_now,
        updated_at = v_now
    WHERE email = v_email AND channel = v_channel
    RETURNING * INTO a;
    r.hard_lock_engaged := coalesce(a.consecutive_failures >= p_hard_lock_after AND a.hard_locked_at IS NULL, false);
    r.account_lock_engaged := coalesce(a.failures_count >= p_account_max AND NOT coalesce(a.locked_until > v_now, false), false);
    IF r.hard_lock_engaged OR r.account_lock_engaged THEN
        UPDATE auth_account_counters SET
            hard_locked_at = CASE WHEN r.hard_lock_engaged THEN v_now ELSE hard_locked_at END,
            locked_until = CASE WHEN r.account_lock_engaged
                THEN v_now + auth_attempt_lock_duration(lock_count, p_account_lock_ms, p_account_lock_max_ms)
                ELSE locked_until END,
            lock_count = lock_count + r.account_lock_engaged::integer,
            failures_count = CASE WHEN r.account_lock_engaged THEN 0 ELSE failures_count END
        WHERE id = a.id
        RETURNING * INTO a;
    END IF;

    UPDATE auth_attempts SET
        failures_count = failures_count + (pending_count > 0)::integer,
        last_failure_at = CASE WHEN pending_count > 0 THEN v_now ELSE last_failure_at END,
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        pending_count = greatest(pending_count - 1, 0),
        last_attempt_at = v_now,
        updated_at = v_now
    WHERE id = p_attempt_id
    RETURNING * INTO p;
    IF NOT FOUND THEN
        -- Purged since the first statement; the account-wide failure stays.
        RETURN NULL;
    END IF;
    r.pair_lock_engaged := p.failures_count >= p_pair_max AND NOT coalesce(p.locked_until > v_now, false);
    IF r.pair_lock_engaged THEN
        UPDATE auth_attempts SET
            locked_until = v_now + auth_attempt_lock_duration(lock_count, p_pair_lock_ms, p_pair_lock_max_ms),
            lock_count = lock_count + 1,
            failures_count = 0
        WHERE id = p.id
        RETURNING * INTO p;
    END IF;

    -- The unknown source has a statement of its own, as in
    -- auth_login_begin, so that each one looks its row up by the whole
    -- unique key.
    IF v_ip IS NULL THEN
        UPDATE auth_source_counters SET
            failures_count = failures_count + (pending_count > 0)::integer,
            last_failure_at = CASE WHEN pending_count > 0 THEN v_now ELSE last_failure_at END,
            pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
            pending_count = greatest(pending_count - 1, 0),
            last_attempt_at = v_now,
            updated_at = v_now
        WHERE ip IS NULL AND channel = v_channel
        RETURNING * INTO s;
    ELSE
        UPDATE auth_source_counters SET
            failures_count = failures_count + (pending_count > 0)::integer,
            last_failure_at = CASE WHEN pending_count > 0 THEN v_now ELSE last_failure_at END,
            pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
            pending_count = greatest(pending_count - 1, 0),
            last_attempt_at = v_now,
            updated_at = v_now
        WHERE ip = v_ip AND channel = v_channel
        RETURNING * INTO s;
    END IF;
    r.source_lock_engaged := coalesce(s.failures_count >= p_source_max AND NOT coalesce(s.locked_until > v_now, false), false);
    IF r.source_lock_engaged THEN
        UPDATE auth_source_counters SET
            locked_until = v_now + auth_attempt_lock_duration(lock_count, p_source_lock_ms, p_source_lock_max_ms),
            lock_count = lock_count + 1,
            failures_count = 0
        WHERE id = s.id
        RETURNING * INTO s;
    END IF;

    r.attempt_id := p.id;
    r.db_now := v_now;
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
-- when the attempt's own row is gone.
--
-- Like auth_login_fail, it locks each row with the UPDATE that changes it,
-- in the order auth_login_begin uses.
CREATE OR REPLACE FUNCTION auth_login_settle(
    p_attempt_id bigint,
    p_now timestamptz,
    p_success boolean,
    p_remember_source boolean
)
RETURNS boolean
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_now timestamptz;
    v_email text;
    v_ip inet;
    v_channel text;
BEGIN
    SELECT email, ip, channel INTO v_email, v_ip, v_channel FROM auth_attempts WHERE id = p_attempt_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    v_now := coalesce(p_now, clock_timestamp());

    IF p_remember_source THEN
        -- This settle changes the account-wide rows of every channel, so
        -- it locks them all first, in channel order, as two such settles on
        -- different channels would otherwise deadlock.
        PERFORM 1 FROM auth_account_counters WHERE email = v_email ORDER BY channel FOR UPDATE;
    END IF;
    UPDATE auth_account_counters SET
        pending_count = greatest(pending_count - 1, 0),
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        consecutive_failures = CASE WHEN p_success THEN 0 ELSE consecutive_failures END,
        updated_at = v_now
    WHERE email = v_email AND channel = v_channel;
    UPDATE auth_attempts SET
        failures_count = CASE WHEN p_success THEN 0 ELSE failures_count END,
        pending_count = greatest(pending_count - 1, 0),
        pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
        lock_count = CASE WHEN p_success THEN 0 ELSE lock_count END,
        locked_until = CASE WHEN p_success THEN NULL ELSE locked_until END,
        updated_at = v_now
    WHERE id = p_attempt_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_ip IS NULL THEN
        UPDATE auth_source_counters SET
            pending_count = greatest(pending_count - 1, 0),
            pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
            updated_at = v_now
        WHERE ip IS NULL AND channel = v_channel;
    ELSE
        UPDATE auth_source_counters SET
            pending_count = greatest(pending_count - 1, 0),
            pending_since = CASE WHEN pending_count > 1 THEN pending_since END,
            updated_at = v_now
        WHERE ip = v_ip AND channel = v_channel;
    END IF;

    IF p_remember_source THEN
        UPDATE auth_account_counters SET
            consecutive_failures = 0,
            updated_at = v_now
        WHERE email = v_email AND channel <> v_channel AND consecutive_failures > 0;
        IF v_ip IS NOT NULL THEN
            INSERT INTO auth_known_sources (email, ip, last_success_at, created_at)
            VALUES (v_email, v_ip, v_now, v_now)
            ON CONFLICT (email, ip) DO UPDATE SET last_success_at = excluded.last_success_at;
        END IF;
    END IF;
    RETURN true;
END
$$;

-- migrate:down

CREATE OR REPLACE FUNCTION auth_login_begin(
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

CREATE OR REPLACE FUNCTION auth_login_fail(
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

CREATE OR REPLACE FUNCTION auth_login_settle(
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

ALTER TABLE auth_source_counters
    ALTER COLUMN channel TYPE text,
    ALTER COLUMN failures_count TYPE integer,
    ALTER COLUMN pending_count TYPE integer,
    ALTER COLUMN lock_count TYPE integer,
    ADD CONSTRAINT auth_source_counters_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    ADD CONSTRAINT auth_source_counters_counts_check CHECK (
        failures_count >= 0 AND pending_count >= 0 AND lock_count >= 0
    );
ALTER TABLE auth_account_counters
    ALTER COLUMN email TYPE text,
    ALTER COLUMN channel TYPE text,
    ALTER COLUMN failures_count TYPE integer,
    ALTER COLUMN pending_count TYPE integer,
    ALTER COLUMN lock_count TYPE integer,
    ALTER COLUMN consecutive_failures TYPE integer,
    ADD CONSTRAINT auth_account_counters_email_check CHECK (email <> '' AND octet_length(email) <= 320),
    ADD CONSTRAINT auth_account_counters_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    ADD CONSTRAINT auth_account_counters_counts_check CHECK (
        failures_count >= 0 AND pending_count >= 0 AND lock_count >= 0 AND consecutive_failures >= 0
    );
ALTER TABLE auth_attempts
    ALTER COLUMN email TYPE text,
    ALTER COLUMN channel TYPE text,
    ALTER COLUMN failures_count TYPE integer,
    ALTER COLUMN pending_count TYPE integer,
    ALTER COLUMN lock_count TYPE integer,
    ADD CONSTRAINT auth_attempts_email_check CHECK (email <> '' AND octet_length(email) <= 320),
    ADD CONSTRAINT auth_attempts_channel_check CHECK (channel ~ '^[a-z][a-z0-9_]{0,31}$'),
    ADD CONSTRAINT auth_attempts_failures_count_check CHECK (failures_count >= 0),
    ADD CONSTRAINT auth_attempts_pending_count_check CHECK (pending_count >= 0),
    ADD CONSTRAINT auth_attempts_lock_count_check CHECK (lock_count >= 0);
DROP DOMAIN auth_count;
DROP DOMAIN auth_channel;
DROP DOMAIN auth_email;

ALTER TABLE auth_source_counters RESET (fillfactor);
ALTER TABLE auth_account_counters RESET (fillfactor);
ALTER TABLE auth_attempts RESET (fillfactor);
CREATE INDEX auth_source_counters_last_attempt_at_idx ON auth_source_counters (last_attempt_at);
CREATE INDEX auth_account_counters_last_attempt_at_idx ON auth_account_counters (last_attempt_at);
CREATE INDEX auth_attempts_last_attempt_at_idx ON auth_attempts (last_attempt_at);
CREATE INDEX auth_attempts_ip_idx ON auth_attempts (ip);
