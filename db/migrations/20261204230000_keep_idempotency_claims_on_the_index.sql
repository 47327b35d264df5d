-- migrate:up

-- plpgsql keeps the plan of each statement for the life of the
-- connection, and a plan made while idempotency_records was empty, as on a
-- new deployment or with autovacuum off, reads the whole table on every
-- later claim. With seq scans off for the function, it always looks the
-- key up through the unique index. The lockout functions do the same.
ALTER FUNCTION idempotency_record_claim(text, text, text, text, uuid, timestamptz, bigint, bigint, boolean, text, inet)
    SET enable_seqscan = off;

-- migrate:down

ALTER FUNCTION idempotency_record_claim(text, text, text, text, uuid, timestamptz, bigint, bigint, boolean, text, inet)
    RESET enable_seqscan;
