//! Gauges measured once a second from the outside of the pipeline, so they keep moving when a
//! consumer is down: the staged backlog, the stream's length, and each registered consumer's
//! lag, in log entries and in seconds (how much older its checkpoint is than the newest entry).

use std::time::Duration;

use redis::aio::ConnectionManager;
use rocket_rides_log::StreamId;
use rocket_rides_platform::shutdown::CancellationToken;
use sqlx::PgPool;

use crate::{metrics::Metrics, streamer::StreamError};

const EVERY: Duration = Duration::from_secs(1);

const CONSUMERS: &str = "
    SELECT c.name, COALESCE(s.last_seq, 0) - c.last_seq, c.last_stream_id
    FROM consumers c LEFT JOIN log_sequences s USING (stream)
    WHERE c.stream = $1";

pub async fn run(
    pool: PgPool,
    mut redis: ConnectionManager,
    stream: String,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        if let Err(e) = measure(&pool, &mut redis, &stream, &metrics).await {
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
    redis: &mut ConnectionManager,
    stream: &str,
    metrics: &Metrics,
) -> Result<(), StreamError> {
    let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM staged_log_records")
        .fetch_one(pool)
        .await?;
    metrics.staged.set(staged as f64);

    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(redis).await?;
    metrics.stream_length.set(len as f64);
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    let newest: Option<StreamId> = newest.first().and_then(|(id, _)| id.parse().ok());

    let consumers: Vec<(String, i64, String)> = sqlx::query_as(CONSUMERS)
        .bind(stream)
        .fetch_all(pool)
        .await?;
    for (name, behind, checkpoint) in consumers {
        let behind = behind.max(0);
        let seconds = match (newest, checkpoint.parse::<StreamId>()) {
            (Some(newest), Ok(at)) if behind > 0 => newest.ms.saturating_sub(at.ms) as f64 / 1000.0,
            _ => 0.0,
        };
        let lag = Metrics::lag(&name);
        lag.entries.set(behind as f64);
        lag.seconds.set(seconds);
    }
    Ok(())
}
