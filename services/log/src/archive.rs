//! The log's head and archive in Postgres: the numbered records, kept for `LOG_RETENTION`, from
//! which lost stream entries are republished and late consumers catch up.

use sqlx::PgExecutor;

use crate::LogRecord;

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
