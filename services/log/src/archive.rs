//! The log's head and archive in Postgres: the numbered records, kept for `LOG_RETENTION`, from
//! which lost stream entries are republished and late consumers catch up.

use redis::aio::ConnectionLike;
use sqlx::{PgExecutor, PgPool};

use crate::{LogRecord, stream};

/// A partition's head: the log's identity and stream with the partition's own state (see the
/// schema).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Head {
    pub log_id: String,
    pub stream: Option<String>,
    pub partition: i32,
    pub epoch: i64,
    pub last_seq: i64,
    pub streamed_seq: i64,
}

pub async fn head(db: impl PgExecutor<'_>, partition: i32) -> Result<Head, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.log_id, h.stream, p.partition, p.epoch, p.last_seq, p.streamed_seq
         FROM log_head h CROSS JOIN log_partitions p WHERE p.partition = $1",
    )
    .bind(partition)
    .fetch_one(db)
    .await
}

/// The log's identity: its id, the stream it is claimed for (if yet), its partition count.
pub async fn log(db: impl PgExecutor<'_>) -> Result<(String, Option<String>, i32), sqlx::Error> {
    sqlx::query_as("SELECT log_id, stream, partitions FROM log_head")
        .fetch_one(db)
        .await
}

/// The archive's records as LogRecords, for `concat!`.
macro_rules! records {
    () => {
        "SELECT h.log_id AS log, r.partition, r.epoch, r.seq, r.ride_id,
                r.distance::text AS distance, r.traceparent, r.tracestate
         FROM log_records r CROSS JOIN log_head h
         WHERE r.partition = $1 AND r.seq > $2 AND r.seq <= $3 "
    };
}

/// A partition's numbered records with `after < seq <= upto`, in order, at most `limit`.
pub async fn range(
    db: impl PgExecutor<'_>,
    partition: i32,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<LogRecord>, sqlx::Error> {
    let sql = concat!(records!(), "ORDER BY r.seq LIMIT $4");
    records_in(db, sql, partition, (after, upto), limit).await
}

/// As `range`, newest first.
pub async fn range_back(
    db: impl PgExecutor<'_>,
    partition: i32,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<LogRecord>, sqlx::Error> {
    let sql = concat!(records!(), "ORDER BY r.seq DESC LIMIT $4");
    records_in(db, sql, partition, (after, upto), limit).await
}

async fn records_in(
    db: impl PgExecutor<'_>,
    sql: &'static str,
    partition: i32,
    (after, upto): (i64, i64),
    limit: i64,
) -> Result<Vec<LogRecord>, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(partition)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// The oldest seq a partition's archive still holds, if any.
pub async fn first_seq(
    db: impl PgExecutor<'_>,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(seq) FROM log_records WHERE partition = $1 AND seq IS NOT NULL")
        .bind(partition)
        .fetch_one(db)
        .await
}

/// A digest of records as the archive holds them (log, partition, epoch, seq, ride, distance;
/// not the trace context, which each hop rewrites), in seq order: equal digests mean the same
/// records, so a batch is checked against the archive in one comparison. `DIGEST` computes the
/// same in Postgres.
pub fn digest<'a>(records: impl IntoIterator<Item = &'a LogRecord>) -> String {
    use md5::Digest as _;
    let mut hash = md5::Md5::new();
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 {
            hash.update(b"\n");
        }
        hash.update(
            format!(
                "{}|{}|{}|{}|{}|{}",
                r.log, r.partition, r.epoch, r.seq, r.ride_id, r.distance
            )
            .as_bytes(),
        );
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `digest` computed by Postgres, over `log_records r CROSS JOIN log_head h`, for `concat!`.
#[macro_export]
macro_rules! digest_sql {
    () => {
        "md5(string_agg(concat_ws('|', h.log_id, r.partition, r.epoch, r.seq, r.ride_id,
             r.distance::text), E'\\n' ORDER BY r.seq))"
    };
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
    partition: i32,
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
        let archived = range(pool, partition, from, last, chunk).await?;
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
