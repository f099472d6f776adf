-- Rides: the system of record. Distances are NUMERIC (written from the shortest decimal form of
-- the request's double) so that sums are exact whatever order they are added in.
CREATE TABLE rides (
    id              BIGSERIAL PRIMARY KEY,
    distance        NUMERIC NOT NULL CHECK (distance > 0 AND distance <= 1000000),
    idempotency_key TEXT UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The outbox: one record per ride, written in the ride's own transaction.
CREATE TABLE staged_log_records (
    id          BIGSERIAL PRIMARY KEY,
    -- The writing transaction. The streamer only takes rows whose transaction is older than every
    -- running one, so a transaction that commits late can never sort before rows already streamed.
    xid         XID8 NOT NULL DEFAULT pg_current_xact_id(),
    ride_id     BIGINT NOT NULL,
    distance    NUMERIC NOT NULL,
    -- W3C trace context of the call that created the ride, carried into the log.
    traceparent TEXT,
    tracestate  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX staged_log_records_order ON staged_log_records (xid, id);

-- Wakes the streamer as soon as a staging transaction commits.
CREATE FUNCTION notify_staged_log_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('staged_log_records', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER staged_log_records_notify AFTER INSERT ON staged_log_records
    FOR EACH STATEMENT EXECUTE FUNCTION notify_staged_log_records();

-- The log's sequence: every stream entry carries seq = last_seq + 1 at the time it was streamed.
-- Re-sends carry the same seq, which is what lets consumers tell a duplicate from a gap.
CREATE TABLE log_sequences (
    stream   TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0
);

-- Each consumer's state and checkpoint live in one row, so they always commit together.
CREATE TABLE consumers (
    stream         TEXT NOT NULL,
    name           TEXT NOT NULL,
    total_distance NUMERIC NOT NULL DEFAULT 0,
    ride_count     BIGINT NOT NULL DEFAULT 0,
    last_seq       BIGINT NOT NULL DEFAULT 0,
    last_stream_id TEXT NOT NULL DEFAULT '0-0',
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, name)
);
