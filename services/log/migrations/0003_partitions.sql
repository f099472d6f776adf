-- Schema 3: a partitioned log.
--
-- A log has `log_head.partitions` partitions, fixed when the log is new (`rocket-rides-api
-- migrate` with LOG_PARTITIONS). A record's key (the ride's rider, else the ride) picks its
-- partition; each partition has its own seq, epoch, leader lease and stream
-- (`<stream>:{<partition>}`), so partitions are numbered, streamed and consumed in parallel and
-- in order within each.
--
-- log_records is partitioned by LIST (partition), each of those by RANGE (seq) as before: a
-- partition's staged records (seq NULL) wait in its DEFAULT sub-partition, its archive is range
-- sub-partitions `log_records_<p>_<k>` created ahead by its leader and dropped whole after
-- LOG_RETENTION. Partitions beyond 0 are created by `set_partitions` (schema.rs), not here.

-- Per-partition state, taken from the head.
CREATE TABLE log_partitions (
    partition    INT PRIMARY KEY CHECK (partition >= 0),
    epoch        BIGINT NOT NULL DEFAULT 0,
    last_seq     BIGINT NOT NULL DEFAULT 0,
    streamed_seq BIGINT NOT NULL DEFAULT 0,
    leader       TEXT,
    lease_until  TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO log_partitions (partition, epoch, last_seq, streamed_seq, leader, lease_until)
SELECT 0, epoch, last_seq, streamed_seq, leader, lease_until FROM log_head;
ALTER TABLE log_head
    DROP COLUMN epoch,
    DROP COLUMN last_seq,
    DROP COLUMN streamed_seq,
    DROP COLUMN leader,
    DROP COLUMN lease_until,
    ADD COLUMN partitions INT NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 1024);

-- The records, moved into the new layout (partition 0). The copy is proportional to the
-- archive kept (LOG_RETENTION); it runs once.
ALTER SEQUENCE log_records_id_seq OWNED BY NONE;
ALTER TABLE log_records RENAME TO log_records_v2;
ALTER INDEX log_records_seq RENAME TO log_records_v2_seq;
ALTER INDEX log_records_staged_order RENAME TO log_records_v2_staged_order;
CREATE TABLE log_records (
    id          BIGINT NOT NULL DEFAULT nextval('log_records_id_seq'),
    partition   INT NOT NULL DEFAULT 0,
    ride_id     BIGINT NOT NULL,
    distance    NUMERIC NOT NULL
        CHECK (distance >= 0.001 AND distance <= 1000000 AND distance = round(distance, 3)),
    traceparent TEXT,
    tracestate  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    seq         BIGINT,
    epoch       BIGINT,
    numbered_at TIMESTAMPTZ
) PARTITION BY LIST (partition);
ALTER SEQUENCE log_records_id_seq OWNED BY log_records.id;
CREATE TABLE log_records_0 PARTITION OF log_records FOR VALUES IN (0) PARTITION BY RANGE (seq);
CREATE TABLE log_records_0_staged PARTITION OF log_records_0 DEFAULT;
CREATE UNIQUE INDEX log_records_seq ON log_records (partition, seq);
CREATE INDEX log_records_staged_order ON log_records (partition, id) WHERE seq IS NULL;
DO $$
DECLARE
    size BIGINT := (SELECT partition_size FROM log_head);
    top  BIGINT := (SELECT COALESCE(max(seq), 0) FROM log_records_v2);
BEGIN
    FOR k IN 0 .. top / size LOOP
        EXECUTE format(
            'CREATE TABLE log_records_0_%s PARTITION OF log_records_0 FOR VALUES FROM (%s) TO (%s)',
            k, k * size + 1, (k + 1) * size + 1);
    END LOOP;
END $$;
INSERT INTO log_records
SELECT id, 0, ride_id, distance, traceparent, tracestate, created_at, seq, epoch, numbered_at
FROM log_records_v2;
DROP TABLE log_records_v2;

-- Rides may name their rider: the partition key that keeps one rider's rides in order.
ALTER TABLE rides ADD COLUMN rider_id TEXT;

-- A consumer's position and totals per partition, committed together; instances of one logical
-- consumer own partitions by lease (`owner`, `lease_until`), fenced by `owner_epoch`.
-- `consumers` becomes the logical consumer's view: the sums over its partitions.
CREATE TABLE consumer_positions (
    stream         TEXT NOT NULL,
    name           TEXT NOT NULL,
    partition      INT NOT NULL,
    total_distance NUMERIC NOT NULL DEFAULT 0,
    ride_count     BIGINT NOT NULL DEFAULT 0,
    last_seq       BIGINT NOT NULL DEFAULT 0,
    epoch          BIGINT NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    owner          TEXT,
    owner_epoch    BIGINT NOT NULL DEFAULT 0,
    lease_until    TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (stream, name, partition)
);
INSERT INTO consumer_positions
    (stream, name, partition, total_distance, ride_count, last_seq, epoch, updated_at)
SELECT stream, name, 0, total_distance, ride_count, last_seq, epoch, updated_at FROM consumers;
DROP TABLE consumers;
CREATE VIEW consumers AS
SELECT stream, name, sum(total_distance) AS total_distance, sum(ride_count)::bigint AS ride_count,
       max(updated_at) AS updated_at
FROM consumer_positions GROUP BY stream, name;
