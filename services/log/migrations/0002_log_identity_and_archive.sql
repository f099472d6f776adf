-- Schema 2: the log is never silently wrong.
--
-- The outbox becomes the log itself: the api writes a record with its ride (seq NULL: staged);
-- the streamer numbers committed records in its own short transaction (a late commit simply
-- gets a later seq, so nothing waits on unrelated transactions), then writes them to Redis with
-- the stream id <seq>-0. Numbered records stay as the archive, from which lost stream entries
-- are republished and new consumers catch up, until LOG_RETENTION prunes them.
--
-- The table is partitioned by seq: staged records (seq NULL) live in the default partition, a
-- small queue; numbering moves a record into the range partition of its seq, which is only ever
-- appended to, and dropped whole once every record in it is older than LOG_RETENTION and no
-- consumer needs it. The streamer creates range partitions ahead of the numbers it gives.
CREATE TABLE log_records (
    id          BIGSERIAL,
    ride_id     BIGINT NOT NULL,
    -- Whole millimetres (the api rounds), so every record any consumer can read is one it can
    -- add exactly: validated once, here, with the rule consumers apply.
    distance    NUMERIC NOT NULL
        CHECK (distance >= 0.001 AND distance <= 1000000 AND distance = round(distance, 3)),
    -- W3C trace context of the call that created the ride, carried into the log.
    traceparent TEXT,
    tracestate  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    seq         BIGINT,
    epoch       BIGINT,
    numbered_at TIMESTAMPTZ
) PARTITION BY RANGE (seq);
CREATE TABLE log_records_staged PARTITION OF log_records DEFAULT;
CREATE UNIQUE INDEX log_records_seq ON log_records (seq);
CREATE INDEX log_records_staged_order ON log_records (id) WHERE seq IS NULL;
INSERT INTO log_records (id, ride_id, distance, traceparent, tracestate, created_at)
SELECT id, ride_id, distance, traceparent, tracestate, created_at FROM staged_log_records;
SELECT setval('log_records_id_seq', GREATEST((SELECT max(id) FROM staged_log_records), 1));
DROP TABLE staged_log_records;
DROP FUNCTION notify_staged_log_records();

-- Rides too are whole millimetres from now on. NOT VALID: earlier rides keep what they had.
ALTER TABLE rides ADD CONSTRAINT rides_distance_millimetres
    CHECK (distance >= 0.001 AND distance = round(distance, 3)) NOT VALID;

-- The log's head: one row per database. `log_id` names this log (entries carry it, so a
-- consumer never applies another environment's log); `stream` is claimed by the first streamer
-- (a streamer configured with another STREAM_NAME refuses to run); `epoch` grows with every
-- change of leader; `last_seq` is the last number given, `streamed_seq` the last one Redis is
-- known to hold. Leadership is a lease (`leader`, `lease_until`), fenced by `epoch`.
-- `partition_size` is how many seqs one archive partition holds.
CREATE TABLE log_head (
    singleton    BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    log_id       TEXT NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
    stream       TEXT,
    epoch        BIGINT NOT NULL DEFAULT 0,
    last_seq     BIGINT NOT NULL DEFAULT 0,
    streamed_seq BIGINT NOT NULL DEFAULT 0,
    leader       TEXT,
    lease_until  TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    partition_size BIGINT NOT NULL DEFAULT 1000000 CHECK (partition_size > 0)
);
INSERT INTO log_head (stream, last_seq, streamed_seq)
SELECT stream, last_seq, last_seq FROM log_sequences ORDER BY last_seq DESC LIMIT 1;
INSERT INTO log_head DEFAULT VALUES ON CONFLICT DO NOTHING;
DROP TABLE log_sequences;

-- Checkpoints are positions in the log; the stream id follows from the seq. A consumer that
-- stopped reporting for CONSUMER_EXPIRY no longer holds the stream back.
UPDATE consumers SET last_stream_id = last_seq || '-0';
ALTER TABLE consumers ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
