//! The read model: records projected into `ride_history` by one idempotent upsert, and read
//! back for HistoryService.

use std::collections::HashMap;

use rocket_rides_log::{LogRecord, reader::group_reader::Project};
use sqlx::{PgExecutor, PgPool};

/// The history's part in its consumer group: projecting records into `ride_history`.
pub struct Projector {
    pub pool: PgPool,
}

impl Project for Projector {
    async fn project(&self, records: &[&LogRecord]) -> Result<HashMap<i64, f64>, sqlx::Error> {
        project(&self.pool, records).await
    }
}

/// Upserts a batch of records, each joined with its ride (the rider and creation time live
/// there), and returns, per ride found, how long ago it was created. A record of a later epoch
/// (republished after a restore) moves the ride's row to its place; otherwise the row stays as
/// first written, so a redelivery changes nothing.
const PROJECT: &str = "
    WITH found AS (
        SELECT e.ride_id, r.rider_id, r.distance, e.partition, e.seq, e.epoch, r.created_at
        FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::numeric[])
             AS e(partition, seq, epoch, ride_id, distance)
        JOIN rides r ON r.id = e.ride_id AND r.distance = e.distance
    ), projected AS (
        INSERT INTO ride_history (ride_id, rider_id, distance, partition, seq, epoch, created_at)
        SELECT ride_id, rider_id, distance, partition, seq, epoch, created_at FROM found
        ON CONFLICT (ride_id) DO UPDATE
            SET partition = EXCLUDED.partition, seq = EXCLUDED.seq, epoch = EXCLUDED.epoch
            WHERE ride_history.epoch < EXCLUDED.epoch
    )
    SELECT ride_id, extract(epoch FROM clock_timestamp() - created_at)::float8 FROM found";

/// Projects `records`; returns the age in seconds of each ride found in Postgres, by ride id.
/// A record whose ride Postgres does not have (with that distance) is left out, for the caller
/// to treat as a failed delivery.
pub async fn project(
    db: impl PgExecutor<'_>,
    records: &[&LogRecord],
) -> Result<HashMap<i64, f64>, sqlx::Error> {
    // One row per ride: ON CONFLICT cannot touch a row twice in a statement.
    let mut newest: HashMap<i64, &LogRecord> = HashMap::new();
    for &record in records {
        let kept = newest.entry(record.ride_id).or_insert(record);
        if record.epoch > kept.epoch {
            *kept = record;
        }
    }
    let rows = newest.values();
    let partitions: Vec<i32> = rows.clone().map(|r| r.partition).collect();
    let seqs: Vec<i64> = rows.clone().map(|r| r.seq).collect();
    let epochs: Vec<i64> = rows.clone().map(|r| r.epoch).collect();
    let ride_ids: Vec<i64> = rows.clone().map(|r| r.ride_id).collect();
    let distances: Vec<&str> = rows.map(|r| r.distance.as_str()).collect();
    let found: Vec<(i64, f64)> = sqlx::query_as(PROJECT)
        .bind(partitions)
        .bind(seqs)
        .bind(epochs)
        .bind(ride_ids)
        .bind(distances)
        .fetch_all(db)
        .await?;
    Ok(found.into_iter().collect())
}

/// A row of the read model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Ride {
    pub ride_id: i64,
    pub rider_id: Option<String>,
    pub distance: f64,
    pub partition: i32,
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub created_us: i64,
    pub recorded_us: i64,
}

/// The columns of a `Ride`, for `concat!`.
macro_rules! ride_columns {
    () => {
        "SELECT ride_id, rider_id, distance::float8 AS distance, partition, seq,
                (extract(epoch FROM created_at) * 1000000)::bigint AS created_us,
                (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_us
         FROM ride_history "
    };
}

pub async fn get(db: impl PgExecutor<'_>, ride_id: i64) -> Result<Option<Ride>, sqlx::Error> {
    sqlx::query_as(concat!(ride_columns!(), "WHERE ride_id = $1"))
        .bind(ride_id)
        .fetch_optional(db)
        .await
}

/// A rider's rides with ids below `before`, newest first, at most `limit`.
pub async fn list(
    db: impl PgExecutor<'_>,
    rider_id: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<Ride>, sqlx::Error> {
    sqlx::query_as(concat!(
        ride_columns!(),
        "WHERE rider_id = $1 AND ride_id < $2 ORDER BY ride_id DESC LIMIT $3"
    ))
    .bind(rider_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}
