//! A consumer's row per partition in `consumer_positions`: its running totals from the
//! partition and its checkpoint there, which therefore always commit together, and which
//! instance of the consumer owns the partition. Ownership is a lease (`CONSUMER_LEASE`),
//! fenced by `owner_epoch`: every commit carries the owner's epoch, so an instance that lost the
//! partition (it froze, or the group gave the partition to another) can never apply again.

use std::time::Duration;

use rocket_rides_log::{StreamId, reader::plan::Run};
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
    /// The row was not where this process left it: another instance owns the partition now,
    /// or another process with the same name and instance moved it.
    Moved,
}

const REGISTER: &str = "
    INSERT INTO consumer_positions (stream, name, partition) VALUES ($1, $2, $3)
    ON CONFLICT (stream, name, partition) DO NOTHING";
const LOAD: &str = "
    SELECT total_distance::float8, ride_count, last_seq
    FROM consumer_positions
    WHERE stream = $1 AND name = $2 AND partition = $3 AND kind = 'checkpoint'";
/// How long an instance owns a partition without renewing (every commit, and every idle read,
/// renews): how long the others wait for one that died.
pub const CONSUMER_LEASE: Duration = Duration::from_secs(10);

/// Adds the batch (exact NUMERIC sum) and moves the checkpoint, only from where we left it and
/// only while we own the partition (renewing the lease).
const APPLY: &str = "
    UPDATE consumer_positions SET
        total_distance = total_distance
            + (SELECT COALESCE(SUM(d::numeric), 0) FROM unnest($3::text[]) AS d),
        ride_count = ride_count + cardinality($3::text[]),
        last_seq = $4,
        epoch = $5,
        updated_at = now(),
        lease_until = now() + make_interval(secs => $10)
    WHERE stream = $1 AND name = $2 AND partition = $7 AND last_seq = $6
        AND owner = $8 AND owner_epoch = $9
    RETURNING total_distance::float8, ride_count";
/// Applies the archived records `$4 < seq <= $5` of the partition, as `APPLY` does, but only
/// if they are exactly the ones the consumer read from the stream: as many as the range holds,
/// with the same digest (`$10`, see `archive::digest`). The sum comes from the archive itself.
const APPLY_RANGE: &str = concat!(
    "
    WITH archived AS (
        SELECT count(*) AS n, COALESCE(sum(r.distance), 0) AS distance, ",
    rocket_rides_log::digest_sql!(),
    " AS digest
        FROM log_records r CROSS JOIN log_head h
        WHERE r.partition = $3 AND r.seq > $4 AND r.seq <= $5
    )
    UPDATE consumer_positions SET
        total_distance = total_distance + archived.distance,
        ride_count = ride_count + archived.n,
        last_seq = $5,
        epoch = $6,
        updated_at = now(),
        lease_until = now() + make_interval(secs => $9)
    FROM archived
    WHERE stream = $1 AND name = $2 AND partition = $3 AND last_seq = $4
        AND owner = $7 AND owner_epoch = $8
        AND archived.n = $5 - $4 AND archived.digest = $10
    RETURNING total_distance::float8, ride_count"
);
/// Takes the partition if nobody owns it, or its owner's lease ran out; a new owner epoch.
const OWN: &str = "
    UPDATE consumer_positions SET
        owner = $4, owner_epoch = owner_epoch + 1,
        lease_until = now() + make_interval(secs => $5)
    WHERE stream = $1 AND name = $2 AND partition = $3
        AND (owner IS NULL OR owner = $4 OR lease_until < now())
    RETURNING owner_epoch";
/// Renews the lease while idle; returns the checkpoint Postgres holds.
const RENEW: &str = "
    UPDATE consumer_positions SET lease_until = now() + make_interval(secs => $6)
    WHERE stream = $1 AND name = $2 AND partition = $3 AND owner = $4 AND owner_epoch = $5
    RETURNING last_seq";
const RELEASE: &str = "
    UPDATE consumer_positions SET owner = NULL, lease_until = '-infinity'
    WHERE stream = $1 AND name = $2 AND partition = $3 AND owner = $4 AND owner_epoch = $5";

/// Where a consumer is: the log's name, the consumer's, the partition, and this instance.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub name: &'a str,
    pub partition: i32,
    pub instance: &'a str,
}

/// Takes ownership of the partition for this instance; returns the owner epoch every commit
/// must carry, or None while another instance holds it.
pub async fn own(pool: &PgPool, at: Position<'_>) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(OWN)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .bind(at.instance)
        .bind(CONSUMER_LEASE.as_secs_f64())
        .fetch_optional(pool)
        .await
}

/// Renews ownership; returns the checkpoint Postgres holds, or None if the partition is no
/// longer this instance's.
pub async fn renew(
    db: &mut PgConnection,
    at: Position<'_>,
    owner_epoch: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(RENEW)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .bind(at.instance)
        .bind(owner_epoch)
        .bind(CONSUMER_LEASE.as_secs_f64())
        .fetch_optional(db)
        .await
}

/// Gives the partition up, so another instance takes it at once.
pub async fn release(
    db: &mut PgConnection,
    at: Position<'_>,
    owner_epoch: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(RELEASE)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .bind(at.instance)
        .bind(owner_epoch)
        .execute(db)
        .await?;
    Ok(())
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
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "CONSUMER_NAME={:?} is already the name of a consumer group of {:?}: give the \
                 consumer a name of its own",
                at.name, at.stream
            ))
        })?;
    Ok(Checkpoint {
        total_distance,
        ride_count,
        last_seq,
    })
}

/// Applies `run` (the records after `from`, as read from the stream) from the archive if the
/// archive holds exactly them; None if it does not (or the partition is no longer ours): the
/// caller then checks the batch record by record. Simulated crashes as in `commit`.
pub async fn commit_run(
    db: &mut PgConnection,
    at: Position<'_>,
    owner_epoch: i64,
    from: &Checkpoint,
    run: &Run<'_>,
    crash_rate: f64,
) -> Result<Option<Commit>, sqlx::Error> {
    let apply = sqlx::query_as(APPLY_RANGE)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .bind(from.last_seq)
        .bind(run.upto)
        .bind(run.epoch)
        .bind(at.instance)
        .bind(owner_epoch)
        .bind(CONSUMER_LEASE.as_secs_f64())
        .bind(&run.digest);
    if rand::random_bool(crash_rate) {
        let mut tx = db.begin().await?;
        let row: Option<(f64, i64)> = apply.fetch_optional(&mut *tx).await?;
        tx.rollback().await?;
        return Ok(row.map(|_| Commit::SimulatedCrash));
    }
    let row: Option<(f64, i64)> = apply.fetch_optional(db).await?;
    Ok(row.map(|(total_distance, ride_count)| {
        Commit::Done(Checkpoint {
            total_distance,
            ride_count,
            last_seq: run.upto,
        })
    }))
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
    owner_epoch: i64,
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
        .bind(at.partition)
        .bind(at.instance)
        .bind(owner_epoch)
        .bind(CONSUMER_LEASE.as_secs_f64());
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
