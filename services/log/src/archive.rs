//! The log's head and archive in Postgres: the numbered records, kept for `LOG_RETENTION`, from
//! which lost stream entries are republished and late consumers catch up.

use redis::aio::ConnectionLike;
use sqlx::{PgExecutor, PgPool};

use crate::{LogRecord, stream};

/// The log's head row (see the schema).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Head {
    pub log_id: String,
    pub stream: Option<String>,
    pub epoch: i64,
    pub last_seq: i64,
    pub streamed_seq: i64,
}

pub async fn head(db: impl PgExecutor<'_>) -> Result<Head, sqlx::Error> {
    sqlx::query_as("SELECT log_id, stream, epoch, last_seq, streamed_seq FROM log_head")
        .fetch_one(db)
        .await
}

/// Numbered records with `after < seq <= upto`, in order, at most `limit`.
pub async fn range(
    db: impl PgExecutor<'_>,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<LogRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.log_id AS log, r.epoch, r.seq, r.ride_id, r.distance::text AS distance,
                r.traceparent, r.tracestate
         FROM log_records r CROSS JOIN log_head h
         WHERE r.seq > $1 AND r.seq <= $2
         ORDER BY r.seq LIMIT $3",
    )
    .bind(after)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The oldest seq the archive still holds, if any.
pub async fn first_seq(db: impl PgExecutor<'_>) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(seq) FROM log_records WHERE seq IS NOT NULL")
        .fetch_one(db)
        .await
}

/// Where the stream stops being the archive: the entry's seq and what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub seq: i64,
    pub reason: String,
}

/// The first of the stream's entries `after < seq <= upto` that is not the archived record (an
/// unreadable entry, one the archive lacks, one whose content differs), reading `chunk` at a
/// time. Records whose entries were trimmed or deleted have nothing to compare.
pub async fn first_divergence<E>(
    pool: &PgPool,
    redis: &mut impl ConnectionLike,
    stream_name: &str,
    after: i64,
    upto: i64,
    chunk: i64,
) -> Result<Option<Divergence>, E>
where
    E: From<sqlx::Error> + From<redis::RedisError>,
{
    let mut from = after;
    while from < upto {
        let last = (from + chunk).min(upto);
        let archived = range(pool, from, last, chunk).await?;
        let entries = stream::read_range(redis, stream_name, from + 1, last).await?;
        let mut archived = archived.into_iter().peekable();
        for entry in entries {
            let seq = entry.id.log_seq();
            while archived.next_if(|kept| kept.seq < seq).is_some() {}
            let reason = match (&entry.record, archived.next_if(|kept| kept.seq == seq)) {
                (Err(e), _) => format!("the entry is unreadable: {e}"),
                (Ok(_), None) => "the archive has no such record".to_string(),
                (Ok(record), Some(kept)) if !record.same_as(&kept) => format!(
                    "the stream has {}, the archive {}",
                    record.describe(),
                    kept.describe()
                ),
                _ => continue,
            };
            return Ok(Some(Divergence { seq, reason }));
        }
        from = last;
    }
    Ok(None)
}
