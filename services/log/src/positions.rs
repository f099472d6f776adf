//! Readers' positions (`consumer_positions`): the one place that reads them to decide what the
//! log must keep, for trimming the stream, pruning the archive, `republish` and the lag gauges.
//!
//! A row is one reader's position in one partition: `last_seq` is the seq up to which the reader
//! has done everything, `updated_at` its last sign of life. Every kind of reader (a checkpointed
//! consumer, a Redis consumer group with a durable position, any future kind) is read alike:
//! nothing here looks at what kind of reader a row belongs to. A reader silent for longer than
//! `CONSUMER_EXPIRY` (`expiry`, measured from `updated_at`) has expired: it no longer holds the
//! stream or the archive back, and catches up from the archive (or halts on a gap) when it
//! returns.

use std::time::Duration;

use sqlx::PgExecutor;

/// The positions of `stream`'s readers in `partition` that have not expired, in no order.
pub async fn live_positions(
    db: impl PgExecutor<'_>,
    stream: &str,
    partition: i32,
    expiry: Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT last_seq FROM consumer_positions
         WHERE stream = $1 AND partition = $2 AND updated_at > now() - make_interval(secs => $3)",
    )
    .bind(stream)
    .bind(partition)
    .bind(expiry.as_secs_f64())
    .fetch_all(db)
    .await
}

/// The position of the slowest of `stream`'s readers in `partition` that has not expired: every
/// record after it is still needed by someone. None when no reader is live there.
pub async fn slowest_live(
    db: impl PgExecutor<'_>,
    stream: &str,
    partition: i32,
    expiry: Duration,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(last_seq) FROM consumer_positions
         WHERE stream = $1 AND partition = $2 AND updated_at > now() - make_interval(secs => $3)",
    )
    .bind(stream)
    .bind(partition)
    .bind(expiry.as_secs_f64())
    .fetch_one(db)
    .await
}

/// A reader and its position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Position {
    pub name: String,
    pub last_seq: i64,
}

/// `stream`'s live readers in `partition` that still need record `seq` (their position is
/// before it), slowest first.
pub async fn live_needing(
    db: impl PgExecutor<'_>,
    stream: &str,
    partition: i32,
    expiry: Duration,
    seq: i64,
) -> Result<Vec<Position>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, last_seq FROM consumer_positions
         WHERE stream = $1 AND partition = $2 AND updated_at > now() - make_interval(secs => $3)
             AND last_seq < $4
         ORDER BY last_seq, name",
    )
    .bind(stream)
    .bind(partition)
    .bind(expiry.as_secs_f64())
    .bind(seq)
    .fetch_all(db)
    .await
}

/// `stream`'s readers in `partition` that have expired (silent for longer than `expiry`),
/// slowest first: they hold nothing back.
pub async fn expired(
    db: impl PgExecutor<'_>,
    stream: &str,
    partition: i32,
    expiry: Duration,
) -> Result<Vec<Position>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, last_seq FROM consumer_positions
         WHERE stream = $1 AND partition = $2 AND updated_at <= now() - make_interval(secs => $3)
         ORDER BY last_seq, name",
    )
    .bind(stream)
    .bind(partition)
    .bind(expiry.as_secs_f64())
    .fetch_all(db)
    .await
}

/// One reader's lag over all its partitions.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Lag {
    pub name: String,
    /// Records numbered after its positions, summed over its partitions.
    pub behind: i64,
    /// How long ago the oldest record it has not done was numbered (0 when caught up or when
    /// the archive no longer has that record).
    pub seconds: f64,
    /// Silent for longer than the expiry while behind, in any of its partitions.
    pub expired: bool,
}

/// Every reader of `stream` with its lag, by name.
pub async fn lags(
    db: impl PgExecutor<'_>,
    stream: &str,
    expiry: Duration,
) -> Result<Vec<Lag>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.name,
                sum(GREATEST(p.last_seq - c.last_seq, 0))::bigint AS behind,
                COALESCE(max((SELECT EXTRACT(epoch FROM now() - r.numbered_at)::float8
                              FROM log_records r
                              WHERE r.partition = c.partition AND r.seq = c.last_seq + 1)), 0)
                    AS seconds,
                bool_or(c.updated_at < now() - make_interval(secs => $2)
                        AND c.last_seq < p.last_seq) AS expired
         FROM consumer_positions c JOIN log_partitions p USING (partition)
         WHERE c.stream = $1
         GROUP BY c.name ORDER BY c.name",
    )
    .bind(stream)
    .bind(expiry.as_secs_f64())
    .fetch_all(db)
    .await
}
