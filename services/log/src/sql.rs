//! Statements shared by the services and the benchmark, so both run exactly the same SQL.

/// Inserts rides (except those whose idempotency key is taken) and stages their log records,
/// in one statement and hence one transaction: the api's group commit. Binds six arrays of
/// equal length: distances (exact decimal text), idempotency keys (NULL for none, distinct),
/// traceparents, tracestates, rider ids (NULL for none) and the riders' key hashes
/// (`partition::key_hash`, NULL for none). A record's partition is its key hash (else its ride
/// id) modulo the log's partition count. Returns, per input in order, the new ride's id, or
/// NULL where the key was taken. Ids are drawn up front so each record joins its own ride.
pub const INSERT_RIDES: &str = "
    WITH input AS (
        SELECT nextval('rides_id_seq') AS id, t.*
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[])
            WITH ORDINALITY
            AS t(distance, idempotency_key, traceparent, tracestate, rider_id, key_hash, n)
    ), ride AS (
        INSERT INTO rides (id, distance, idempotency_key, rider_id)
        SELECT id, distance::numeric, idempotency_key, rider_id FROM input ORDER BY n
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, distance
    ), staged AS (
        INSERT INTO log_records (partition, ride_id, distance, traceparent, tracestate)
        SELECT (COALESCE(input.key_hash::bigint, ride.id) % h.partitions)::int,
               ride.id, ride.distance, input.traceparent, input.tracestate
        FROM ride JOIN input USING (id) CROSS JOIN log_head h
        ORDER BY input.n
    )
    SELECT ride.id FROM input LEFT JOIN ride USING (id) ORDER BY input.n";

/// The original's write, for the benchmark's reference: one ride and its staged record in a
/// plain transaction (`BEGIN; INSERT; INSERT; COMMIT`), no project machinery.
pub const ORIGINAL_RIDE_TRANSACTION: [&str; 2] = [
    "INSERT INTO rides (distance) VALUES ($1::numeric) RETURNING id",
    "INSERT INTO log_records (ride_id, distance) VALUES ($1, $2::numeric)",
];

/// The channel on which the api tells the streamer that records were committed. Sent after the
/// commit, never inside the ride's transaction: a pending NOTIFY takes Postgres' global
/// notification lock at commit, which would serialize every ride.
pub const WAKE_CHANNEL: &str = "log_records";
