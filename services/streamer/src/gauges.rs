//! Gauges measured once a second from the outside of the pipeline, so they keep moving when a
//! consumer is down: the staged backlog and its oldest record's age, the archive's age, the
//! stream's length, the
//! dead letters waiting in each partition, and each registered consumer's lag, in records and in seconds (how long ago the record after its
//! checkpoint was numbered), and whether it has expired.

use std::time::Duration;

use rocket_rides_log::{
    archive, partition,
    positions::{self, Lag},
    stream::dead_letter_stream,
};
use rocket_rides_platform::redis_conn::RedisConnection;
use rocket_rides_platform::shutdown::CancellationToken;
use sqlx::PgPool;

use crate::{metrics::Metrics, streamer::StreamError};

const EVERY: Duration = Duration::from_secs(1);

const STAGED: &str = "
    SELECT count(*), COALESCE(EXTRACT(epoch FROM now() - min(created_at)), 0)::float8
    FROM log_records WHERE seq IS NULL";

/// Age of the archive's oldest record, over all partitions (what a republish or a late
/// consumer can still reach).
const ARCHIVE_AGE: &str = "
    SELECT COALESCE(max(EXTRACT(epoch FROM now() - (
        SELECT numbered_at FROM log_records r
        WHERE r.partition = p.partition AND r.seq IS NOT NULL ORDER BY r.seq LIMIT 1
    ))::float8), 0)
    FROM log_partitions p";

pub async fn run(
    pool: PgPool,
    mut redis: RedisConnection,
    stream: String,
    expiry: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut expired = std::collections::HashSet::new();
    loop {
        if let Err(e) = measure(&pool, &mut redis, &stream, expiry, &metrics, &mut expired).await {
            tracing::debug!(error = %e, "measuring backlog and lag failed");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn measure(
    pool: &PgPool,
    redis: &mut RedisConnection,
    stream: &str,
    expiry: Duration,
    metrics: &Metrics,
    expired: &mut std::collections::HashSet<String>,
) -> Result<(), StreamError> {
    let (staged, oldest): (i64, f64) = sqlx::query_as(STAGED).fetch_one(pool).await?;
    metrics.staged.set(staged as f64);
    metrics.oldest_staged.set(oldest);
    let archive_age: f64 = sqlx::query_scalar(ARCHIVE_AGE).fetch_one(pool).await?;
    metrics.archive_age.set(archive_age);
    let (_, _, partitions) = archive::log(pool).await?;
    let mut len = 0;
    for p in 0..partitions {
        let key = partition::stream_key(stream, p);
        len += redis::cmd("XLEN")
            .arg(&key)
            .query_async::<u64>(redis)
            .await?;
        let dead = redis::cmd("XLEN")
            .arg(dead_letter_stream(&key))
            .query_async::<u64>(redis)
            .await?;
        Metrics::dead_letters(p).set(dead as f64);
    }
    metrics.stream_length.set(len as f64);

    for Lag {
        name,
        behind,
        seconds,
        expired: is_expired,
    } in positions::lags(pool, stream, expiry).await?
    {
        let lag = Metrics::lag(&name);
        lag.entries.set(behind as f64);
        lag.seconds.set(if behind > 0 { seconds } else { 0.0 });
        lag.expired.set(if is_expired { 1.0 } else { 0.0 });
        if is_expired && expired.insert(name.clone()) {
            tracing::warn!(consumer = %name, behind, "consumer silent for longer than CONSUMER_EXPIRY: it no longer holds the stream back and will catch up from the archive");
        } else if !is_expired {
            expired.remove(&name);
        }
    }
    Ok(())
}
