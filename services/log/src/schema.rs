//! The database schema (rides, the log's records, head and partitions, readers' positions), as
//! migrations embedded in every binary that needs them, and the one owner of the DDL that runs
//! after migrations: a log's partitions (`set_partitions`), and the archive's range partitions
//! that the streamer creates ahead of the numbers it gives and drops after `LOG_RETENTION`
//! (`ensure_archive`, `prune_archive`).
//!
//! Archive DDL takes an ACCESS EXCLUSIVE lock on the log partition's table, and a lock request
//! that waits blocks every later one on that table: queued behind a long reader (a `pg_dump`
//! holds ACCESS SHARE on every table it dumps), it would block every CreateRide. So it runs with
//! a `lock_timeout` in its own transaction and, when the lock is not granted in time, gives up
//! for this round (`LockTimeout`): the caller retries later, and nothing waits meanwhile.

use std::time::Duration;

use sqlx::{
    AssertSqlSafe, PgPool,
    migrate::{MigrateError, Migrator},
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Applies every pending migration. Safe to run twice, and from several processes at once
/// (sqlx serialises them with an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionsError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(
        "the log has {has} partitions and holds records; LOG_PARTITIONS={wanted} cannot change \
         that (a log's partition count is fixed: unset LOG_PARTITIONS or set it to {has})"
    )]
    Fixed { has: i32, wanted: i32 },
    #[error("LOG_PARTITIONS={0} is out of range (1 to 1024)")]
    OutOfRange(i32),
}

/// Gives the log `partitions` partitions: possible while it holds no records, a no-op when it
/// already has them. Creates each partition's tables (a LIST partition of `log_records`, with
/// its DEFAULT sub-partition for staged records) and its row in `log_partitions`.
pub async fn set_partitions(pool: &PgPool, partitions: i32) -> Result<(), PartitionsError> {
    if !(1..=1024).contains(&partitions) {
        return Err(PartitionsError::OutOfRange(partitions));
    }
    let mut tx = pool.begin().await?;
    let has: i32 = sqlx::query_scalar("SELECT partitions FROM log_head FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    if has != partitions {
        let holds: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM log_records) OR EXISTS (SELECT 1 FROM log_partitions WHERE last_seq > 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if holds {
            return Err(PartitionsError::Fixed {
                has,
                wanted: partitions,
            });
        }
        sqlx::query("DELETE FROM log_partitions WHERE partition >= $1")
            .bind(partitions)
            .execute(&mut *tx)
            .await?;
        for p in partitions..has {
            sqlx::query(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS log_records_{p}"
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE log_head SET partitions = $1")
            .bind(partitions)
            .execute(&mut *tx)
            .await?;
    }
    for p in 0..partitions {
        // Identifiers cannot be bound; `p` is a number in range.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS log_records_{p} PARTITION OF log_records
                 FOR VALUES IN ({p}) PARTITION BY RANGE (seq);
             CREATE TABLE IF NOT EXISTS log_records_{p}_staged PARTITION OF log_records_{p} DEFAULT;
             INSERT INTO log_partitions (partition) VALUES ({p}) ON CONFLICT DO NOTHING;"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// How long archive DDL waits for its lock before giving up for the round. Rides queue behind a
/// waiting DDL for at most this long.
pub const ARCHIVE_LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// Postgres' SQLSTATE for `lock_timeout` expiring (`lock_not_available`).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Archive DDL that gave up waiting for its lock. Not a failure of the log: the statement is
/// retried later, and meanwhile rides go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{statement}` waited {timeout:?} for its lock and gave up (SQLSTATE 55P03): a transaction \
     holds a lock on the log's tables (a pg_dump, a long query on log_records); rides go on and \
     it is retried shortly. If this repeats, find the holder in pg_locks and pg_stat_activity"
)]
pub struct LockTimeout {
    pub statement: String,
    pub timeout: Duration,
}

/// How far a log partition's archive partitions reach after `ensure_archive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The highest seq the archive partitions cover, contiguously from the partition's
    /// `last_seq`: numbering must not go past it (a record numbered past them would land in the
    /// staged partition and block creating its range for good).
    pub upto: i64,
    /// Set when a partition could not be created this round.
    pub locked: Option<LockTimeout>,
}

/// What `prune_archive` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Archive partitions dropped.
    pub dropped: usize,
    /// Set when a partition due to be dropped could not be this round.
    pub locked: Option<LockTimeout>,
}

/// The range partition `k` of log partition `p`'s archive: seqs `k * size + 1 ..= (k + 1) * size`.
pub fn archive_table(p: i32, k: i64) -> String {
    format!("log_records_{p}_{k}")
}

/// The archive partitions (`k`) that the next `ahead` seqs after `last_seq` need, and one more.
fn needed_range(last_seq: i64, ahead: i64, size: i64) -> std::ops::RangeInclusive<i64> {
    last_seq / size..=(last_seq + ahead) / size + 1
}

/// Creates log partition `p`'s archive partitions for the next `ahead` seqs after its `last_seq`
/// (and one more), oldest first, each with `lock_timeout`; stops at the first whose lock is not
/// granted in time. Returns how far the archive partitions reach.
pub async fn ensure_archive(
    pool: &PgPool,
    p: i32,
    ahead: i64,
    lock_timeout: Duration,
) -> Result<Coverage, sqlx::Error> {
    let (size, last_seq): (i64, i64) = sqlx::query_as(
        "SELECT h.partition_size, p.last_seq FROM log_head h, log_partitions p WHERE p.partition = $1",
    )
    .bind(p)
    .fetch_one(pool)
    .await?;
    let mut upto = last_seq;
    for k in needed_range(last_seq, ahead, size) {
        let table = archive_table(p, k);
        if !exists(pool, &table).await? {
            // Identifiers cannot be bound; `p` and `k` are numbers.
            let statement = format!(
                "CREATE TABLE IF NOT EXISTS {table} PARTITION OF log_records_{p} FOR VALUES FROM ({}) TO ({})",
                k * size + 1,
                (k + 1) * size + 1
            );
            if let Err(locked) = ddl(pool, statement, lock_timeout).await? {
                return Ok(Coverage {
                    upto,
                    locked: Some(locked),
                });
            }
            tracing::info!(%table, "archive partition created");
        }
        upto = (k + 1) * size;
    }
    Ok(Coverage { upto, locked: None })
}

/// Drops log partition `p`'s archive partitions that nobody needs any more, oldest first: every
/// record in one is older than `retention`, and Redis holds everything in it (`streamed_seq`),
/// and every reader of `stream` that has not expired (`positions::slowest_live`) is past it.
/// Stops at the first one still needed, or whose lock is not granted within `lock_timeout`.
pub async fn prune_archive(
    pool: &PgPool,
    p: i32,
    stream: &str,
    retention: Duration,
    expiry: Duration,
    lock_timeout: Duration,
) -> Result<Pruned, sqlx::Error> {
    let (size, streamed): (i64, i64) = sqlx::query_as(
        "SELECT h.partition_size, p.streamed_seq FROM log_head h, log_partitions p WHERE p.partition = $1",
    )
    .bind(p)
    .fetch_one(pool)
    .await?;
    let slowest = crate::positions::slowest_live(pool, stream, p, expiry).await?;
    let needed = slowest.map_or(streamed, |s| s.min(streamed));
    let mut pruned = Pruned::default();
    for k in 0..needed / size {
        let table = archive_table(p, k);
        if !exists(pool, &table).await? {
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
        if let Err(locked) = ddl(pool, format!("DROP TABLE {table}"), lock_timeout).await? {
            pruned.locked = Some(locked);
            break;
        }
        tracing::info!(%table, "archive partition older than LOG_RETENTION dropped");
        pruned.dropped += 1;
    }
    Ok(pruned)
}

async fn exists(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
}

/// Runs one DDL statement in its own transaction with `lock_timeout`; `Ok(Err(_))` when the
/// lock was not granted in time (the statement then did nothing).
async fn ddl(
    pool: &PgPool,
    statement: String,
    lock_timeout: Duration,
) -> Result<Result<(), LockTimeout>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    match sqlx::query(AssertSqlSafe(statement.clone()))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {
            tx.commit().await?;
            Ok(Ok(()))
        }
        Err(e) if is_lock_timeout(&e) => {
            tx.rollback().await?;
            Ok(Err(LockTimeout {
                statement,
                timeout: lock_timeout,
            }))
        }
        Err(e) => Err(e),
    }
}

/// Whether `e` is Postgres giving up on a lock (`lock_timeout`).
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == LOCK_NOT_AVAILABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_made_for_the_next_batch_and_one_more() {
        // seqs 1..=10 are partition 0, 11..=20 partition 1, ...
        assert_eq!(needed_range(0, 5, 10), 0..=1);
        assert_eq!(needed_range(9, 5, 10), 0..=2);
        assert_eq!(needed_range(10, 5, 10), 1..=2);
        assert_eq!(needed_range(25, 1000, 1_000_000), 0..=1);
        assert_eq!(archive_table(3, 7), "log_records_3_7");
    }

    #[test]
    fn a_lock_timeout_says_what_waited_and_what_to_do() {
        let locked = LockTimeout {
            statement: "DROP TABLE log_records_0_0".into(),
            timeout: ARCHIVE_LOCK_TIMEOUT,
        };
        let message = locked.to_string();
        assert!(message.contains("DROP TABLE log_records_0_0"), "{message}");
        assert!(
            message.contains("55P03") && message.contains("pg_locks"),
            "{message}"
        );
        assert!(!is_lock_timeout(&sqlx::Error::RowNotFound));
    }
}
