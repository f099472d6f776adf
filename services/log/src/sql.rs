//! Statements shared by the services and the benchmark, so both run exactly the same SQL.

/// Inserts a ride (unless its idempotency key is taken) and stages its log record, in one
/// statement and hence one transaction. Binds: distance (exact decimal text), idempotency key,
/// traceparent, tracestate. Returns the new ride's id, or no row when the key was taken.
pub const INSERT_RIDE: &str = "
    WITH ride AS (
        INSERT INTO rides (distance, idempotency_key) VALUES ($1::numeric, $2)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, distance
    )
    INSERT INTO staged_log_records (ride_id, distance, traceparent, tracestate)
    SELECT id, distance, $3, $4 FROM ride
    RETURNING ride_id";

/// The ride an idempotency key already names, whether it has the requested distance, and the
/// distance it has. Binds: key, distance.
pub const FIND_BY_KEY: &str =
    "SELECT id, distance = $2::numeric, distance::text FROM rides WHERE idempotency_key = $1";
