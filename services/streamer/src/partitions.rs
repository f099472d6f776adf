//! The archive's table partitions (see the schema): for each log partition `p`, range
//! sub-partitions `log_records_<p>_<k>` of `log_records_<p>` by seq, created
//! ahead of the numbers the leader gives (a record numbered past them would land in the staged
//! partition and block creating its range), and dropped whole once every record in one is
//! older than `LOG_RETENTION` and every consumer that has not expired is past it.

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};

/// Creates log partition `p`'s range partitions for the next `ahead` seqs after its
/// `last_seq` (and one more), if missing; returns the highest seq they cover.
pub async fn ensure(pool: &PgPool, p: i32, ahead: i64) -> Result<i64, sqlx::Error> {
    let (size, last_seq): (i64, i64) = sqlx::query_as(
        "SELECT h.partition_size, p.last_seq FROM log_head h, log_partitions p WHERE p.partition = $1",
    )
    .bind(p)
    .fetch_one(pool)
    .await?;
    let last = (last_seq + ahead) / size + 1;
    for k in last_seq / size..=last {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name(p, k))
            .fetch_one(pool)
            .await?;
        if !exists {
            // Identifiers cannot be bound; `k` is a number we made.
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF log_records_{p} FOR VALUES FROM ({}) TO ({})",
                name(p, k),
                k * size + 1,
                (k + 1) * size + 1
            )))
            .execute(pool)
            .await?;
            tracing::info!(table = %name(p, k), "archive partition created");
        }
    }
    Ok((last + 1) * size)
}

/// Drops log partition `p`'s range partitions nobody needs any more; returns how many.
pub async fn prune(
    pool: &PgPool,
    p: i32,
    stream: &str,
    retention: Duration,
    expiry: Duration,
) -> Result<usize, sqlx::Error> {
    let (size, needed): (i64, i64) = sqlx::query_as(
        "SELECT h.partition_size,
                LEAST(p.streamed_seq, COALESCE(
                    (SELECT min(last_seq) FROM consumer_positions
                     WHERE stream = $1 AND partition = $3
                         AND updated_at > now() - make_interval(secs => $2)),
                    p.streamed_seq))
         FROM log_head h, log_partitions p WHERE p.partition = $3",
    )
    .bind(stream)
    .bind(expiry.as_secs_f64())
    .bind(p)
    .fetch_one(pool)
    .await?;
    let mut dropped = 0;
    // Oldest first; stop at the first one still needed.
    for k in 0..needed / size {
        let partition = name(p, k);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&partition)
            .fetch_one(pool)
            .await?;
        if !exists {
            continue;
        }
        let expired: bool = sqlx::query_scalar(
            "SELECT COALESCE(max(numbered_at) < now() - make_interval(secs => $1), true)
             FROM log_records WHERE partition = $4 AND seq BETWEEN $2 AND $3",
        )
        .bind(retention.as_secs_f64())
        .bind(k * size + 1)
        .bind((k + 1) * size)
        .bind(p)
        .fetch_one(pool)
        .await?;
        if !expired {
            break;
        }
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {partition}")))
            .execute(pool)
            .await?;
        tracing::info!(%partition, "archive partition older than LOG_RETENTION dropped");
        dropped += 1;
    }
    Ok(dropped)
}

fn name(p: i32, k: i64) -> String {
    format!("log_records_{p}_{k}")
}
