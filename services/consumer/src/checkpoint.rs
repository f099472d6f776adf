//! A consumer's row per partition in `consumer_positions`: its running totals from the
//! partition and its checkpoint there, which therefore always commit together.

use rocket_rides_log::StreamId;
use sqlx::{Acquire, PgConnection, PgPool};

/// What has been applied, as of the last commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub total_distance: f64,
    pub ride_count: i64,
    pub last_seq: i64,
}

impl Checkpoint {
    /// Where the stream is read from: entries are `<seq>-0`.
    pub fn stream_id(&self) -> StreamId {
        StreamId::of_seq(self.last_seq)
    }
}

/// How a commit attempt ended.
pub enum Commit {
    Done(Checkpoint),
    /// The failure simulation rolled the transaction back after the work, before the commit.
    SimulatedCrash,
    /// The row was not where this process left it: another process with the same name moved it.
    Moved,
}

const REGISTER: &str = "
    INSERT INTO consumer_positions (stream, name, partition) VALUES ($1, $2, $3)
    ON CONFLICT (stream, name, partition) DO NOTHING";
const LOAD: &str = "
    SELECT total_distance::float8, ride_count, last_seq
    FROM consumer_positions WHERE stream = $1 AND name = $2 AND partition = $3";
/// Adds the batch (exact NUMERIC sum) and moves the checkpoint, only from where we left it.
const APPLY: &str = "
    UPDATE consumer_positions SET
        total_distance = total_distance
            + (SELECT COALESCE(SUM(d::numeric), 0) FROM unnest($3::text[]) AS d),
        ride_count = ride_count + cardinality($3::text[]),
        last_seq = $4,
        epoch = $5,
        updated_at = now()
    WHERE stream = $1 AND name = $2 AND partition = $7 AND last_seq = $6
    RETURNING total_distance::float8, ride_count";

/// Where a consumer is: the log's name, the consumer's, and the partition.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub name: &'a str,
    pub partition: i32,
}

/// Registers the consumer in the partition (so the streamer never trims what it has not read)
/// and loads its checkpoint there.
pub async fn load(pool: &PgPool, at: Position<'_>) -> Result<Checkpoint, sqlx::Error> {
    sqlx::query(REGISTER)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .execute(pool)
        .await?;
    let (total_distance, ride_count, last_seq) = sqlx::query_as(LOAD)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .fetch_one(pool)
        .await?;
    Ok(Checkpoint {
        total_distance,
        ride_count,
        last_seq,
    })
}

/// What one batch changes.
pub struct Batch {
    pub distances: Vec<String>,
    pub last_seq: i64,
    pub epoch: i64,
}

/// Applies `batch` and moves the checkpoint from `from`, atomically: the totals and the
/// checkpoint are one row, so one statement is one transaction. With probability `crash_rate`
/// the statement runs in a transaction that is rolled back after it, as a crash between the
/// work and the commit would.
pub async fn commit(
    db: &mut PgConnection,
    at: Position<'_>,
    from: &Checkpoint,
    batch: &Batch,
    crash_rate: f64,
) -> Result<Commit, sqlx::Error> {
    let last_seq = batch.last_seq;
    let apply = sqlx::query_as(APPLY)
        .bind(at.stream)
        .bind(at.name)
        .bind(&batch.distances)
        .bind(last_seq)
        .bind(batch.epoch)
        .bind(from.last_seq)
        .bind(at.partition);
    let row: Option<(f64, i64)> = if rand::random_bool(crash_rate) {
        let mut tx = db.begin().await?;
        let row: Option<(f64, i64)> = apply.fetch_optional(&mut *tx).await?;
        tx.rollback().await?;
        return Ok(match row {
            Some(_) => Commit::SimulatedCrash,
            None => Commit::Moved,
        });
    } else {
        apply.fetch_optional(db).await?
    };
    Ok(match row {
        Some((total_distance, ride_count)) => Commit::Done(Checkpoint {
            total_distance,
            ride_count,
            last_seq,
        }),
        None => Commit::Moved,
    })
}
