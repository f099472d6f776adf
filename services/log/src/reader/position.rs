//! A consumer group's durable position per partition, a row of `consumer_positions` (kind
//! `group`): the seq up to which everything was done, and when the group last showed life.
//! Redis's own view of a group (last delivered, pending) is lost with Redis's data and goes
//! back with a restored Redis; this row is what the group resumes from, what holds trimming
//! and pruning back, and what `republish` restores from.

use sqlx::PgExecutor;

/// Where a group is: the log's name (STREAM_NAME), the group's, the partition.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub stream: &'a str,
    pub name: &'a str,
    pub partition: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(
        "{name:?} is already the name of a checkpointed consumer of {stream:?}: a consumer group \
         needs a name of its own (rename the group or the consumer)"
    )]
    NameTaken { stream: String, name: String },
    #[error(
        "the group's position in Postgres went back from seq {known} to {database} (Postgres \
         restored, or the group reset): the group goes back there and does the rest again"
    )]
    WentBack { known: i64, database: i64 },
}

const REGISTER: &str = "
    INSERT INTO consumer_positions (stream, name, partition, kind) VALUES ($1, $2, $3, 'group')
    ON CONFLICT (stream, name, partition) DO UPDATE SET updated_at = now()
        WHERE consumer_positions.kind = 'group'
    RETURNING last_seq";

/// Registers the group in the partition (it holds the stream and the archive from now on) and
/// returns its position.
pub async fn register(db: impl PgExecutor<'_>, at: At<'_>) -> Result<i64, PositionError> {
    let row: Option<i64> = sqlx::query_scalar(REGISTER)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .fetch_optional(db)
        .await?;
    row.ok_or_else(|| PositionError::NameTaken {
        stream: at.stream.to_string(),
        name: at.name.to_string(),
    })
}

/// Moves the position forward to `done` (never back) and marks the group alive; `known` is
/// the position this process saw last. Fails if Postgres holds less than `known`: it went
/// back, and the group must too.
const ADVANCE: &str = "
    UPDATE consumer_positions c SET last_seq = GREATEST(c.last_seq, $4), updated_at = now()
    FROM (SELECT last_seq FROM consumer_positions
          WHERE stream = $1 AND name = $2 AND partition = $3 AND kind = 'group' FOR UPDATE) old
    WHERE c.stream = $1 AND c.name = $2 AND c.partition = $3 AND old.last_seq >= $5
    RETURNING c.last_seq";
const CURRENT: &str = "
    SELECT last_seq FROM consumer_positions
    WHERE stream = $1 AND name = $2 AND partition = $3 AND kind = 'group'";

/// Records that everything up to `done` is done; returns the position now held.
pub async fn advance(
    db: &sqlx::PgPool,
    at: At<'_>,
    known: i64,
    done: i64,
) -> Result<i64, PositionError> {
    let moved: Option<i64> = sqlx::query_scalar(ADVANCE)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .bind(done)
        .bind(known)
        .fetch_optional(db)
        .await?;
    if let Some(now) = moved {
        return Ok(now);
    }
    let database = current(db, at).await?;
    Err(PositionError::WentBack {
        known,
        database: database.unwrap_or(0),
    })
}

/// The position Postgres holds for the group, if it has one.
pub async fn current(db: impl PgExecutor<'_>, at: At<'_>) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(CURRENT)
        .bind(at.stream)
        .bind(at.name)
        .bind(at.partition)
        .fetch_optional(db)
        .await
}
