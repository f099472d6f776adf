//! The database schema (rides, the outbox, the log's sequence, consumers' checkpoints), as
//! migrations embedded in every binary that needs them.

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
