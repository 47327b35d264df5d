-- migrate:up

-- Two more final states besides 'completed', for requests whose response
-- cannot be replayed but which must never run again for the same key:
--   result_unavailable: the handler finished, but its response was larger
--                       than the storage limit. response_status keeps its
--                       status; no headers or body are stored.
--   outcome_unknown:    the handler failed in a way that may have left side
--                       effects, such as a panic. Nothing else is stored.
-- idempotency_record_claim takes over only 'in_progress' records, so both
-- states hold the key until the record expires.
ALTER TABLE idempotency_records
    DROP CONSTRAINT idempotency_records_state_check,
    ADD CONSTRAINT idempotency_records_state_check
        CHECK (state IN ('in_progress', 'completed', 'result_unavailable', 'outcome_unknown')),
    DROP CONSTRAINT idempotency_records_state_fields_check,
    ADD CONSTRAINT idempotency_records_state_fields_check CHECK (
        (state = 'in_progress' AND lock_token IS NOT NULL AND lease_expires_at IS NOT NULL)
        OR (state = 'completed' AND response_status IS NOT NULL)
        OR (
            state = 'result_unavailable'
            AND response_status IS NOT NULL
            AND response_headers IS NULL
            AND response_body_json IS NULL
            AND response_body IS NULL
        )
        OR (
            state = 'outcome_unknown'
            AND response_status IS NULL
            AND response_headers IS NULL
            AND response_body_json IS NULL
            AND response_body IS NULL
        )
    );

-- migrate:down

-- The old schema has no final state without a response. An in-progress
-- record whose lease has ended is the closest: requests that may not take
-- the key over still get "outcome unknown" instead of running again.
UPDATE idempotency_records
SET
    state = 'in_progress',
    lock_token = gen_random_uuid(),
    lease_expires_at = coalesce(completed_at, created_at),
    response_status = NULL
WHERE state IN ('result_unavailable', 'outcome_unknown');

ALTER TABLE idempotency_records
    DROP CONSTRAINT idempotency_records_state_check,
    ADD CONSTRAINT idempotency_records_state_check
        CHECK (state IN ('in_progress', 'completed')),
    DROP CONSTRAINT idempotency_records_state_fields_check,
    ADD CONSTRAINT idempotency_records_state_fields_check CHECK (
        (state = 'completed' AND response_status IS NOT NULL)
        OR (state = 'in_progress' AND lock_token IS NOT NULL AND lease_expires_at IS NOT NULL)
    );
