-- Schema 2: the log is never silently wrong.
--
-- The outbox becomes the log itself: the api writes a record with its ride (seq NULL: staged);
-- the streamer numbers committed records in its own short transaction (a late commit simply
-- gets a later seq, so nothing waits on unrelated transactions), then writes them to Redis with
-- the stream id <seq>-0. Numbered records stay as the archive, from which lost stream entries
-- are republished and new consumers catch up, until LOG_RETENTION prunes them.
ALTER TABLE staged_log_records RENAME TO log_records;
DROP TRIGGER staged_log_records_notify ON log_records;
DROP FUNCTION notify_staged_log_records();
ALTER TABLE log_records DROP COLUMN xid;
ALTER TABLE log_records
    ADD COLUMN seq BIGINT,
    ADD COLUMN epoch BIGINT,
    ADD COLUMN numbered_at TIMESTAMPTZ;
CREATE UNIQUE INDEX log_records_seq ON log_records (seq) WHERE seq IS NOT NULL;
CREATE INDEX log_records_staged ON log_records (id) WHERE seq IS NULL;

-- Distances are whole millimetres from now on (the api rounds), so every record any consumer
-- can read is one it can add exactly. NOT VALID: earlier rows keep what they had.
ALTER TABLE rides ADD CONSTRAINT rides_distance_millimetres
    CHECK (distance >= 0.001 AND distance = round(distance, 3)) NOT VALID;
ALTER TABLE log_records ADD CONSTRAINT log_records_distance_millimetres
    CHECK (distance >= 0.001 AND distance <= 1000000 AND distance = round(distance, 3)) NOT VALID;

-- The log's head: one row per database. `log_id` names this log (entries carry it, so a
-- consumer never applies another environment's log); `stream` is claimed by the first streamer
-- (a streamer configured with another STREAM_NAME refuses to run); `epoch` grows with every
-- change of leader; `last_seq` is the last number given, `streamed_seq` the last one Redis is
-- known to hold. Leadership is a lease (`leader`, `lease_until`), fenced by `epoch`.
CREATE TABLE log_head (
    singleton    BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    log_id       TEXT NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
    stream       TEXT,
    epoch        BIGINT NOT NULL DEFAULT 0,
    last_seq     BIGINT NOT NULL DEFAULT 0,
    streamed_seq BIGINT NOT NULL DEFAULT 0,
    leader       TEXT,
    lease_until  TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO log_head (stream, last_seq, streamed_seq)
SELECT stream, last_seq, last_seq FROM log_sequences ORDER BY last_seq DESC LIMIT 1;
INSERT INTO log_head DEFAULT VALUES ON CONFLICT DO NOTHING;
DROP TABLE log_sequences;

-- Checkpoints are positions in the log; the stream id follows from the seq. A consumer that
-- stopped reporting for CONSUMER_EXPIRY no longer holds the stream back.
UPDATE consumers SET last_stream_id = last_seq || '-0';
ALTER TABLE consumers ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
