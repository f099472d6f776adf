//! The rules every reader of the log follows, whatever records its progress (a checkpoint
//! committed with its effects, a Redis consumer group with a durable position): one place, so
//! no reader kind can miss one.
//!
//! - **Identity**: a reader works only the log its database holds, on the stream that log is
//!   streamed to (`LogIdentity::check_stream`); an entry of another log is never applied.
//! - **Entries against the archive**: the archive in Postgres decides what the log holds, the
//!   stream is how records arrive fast. An entry is applied only when it is the archived record
//!   (same log, partition, epoch, seq, ride and distance); an unreadable entry at a record's id
//!   is set aside and the archived record applied instead (`check`).
//! - **No gaps**: what the stream no longer holds comes from the archive; what neither holds
//!   halts the reader (`Halt`), it is never skipped. A halted reader is NOT_SERVING, says why
//!   and which repair to run, and resumes by itself once the log is repaired.
//!
//! `plan` applies these rules to a reader that reads the partition in order (a checkpointed
//! consumer); `group` and `group_reader` to members of a Redis consumer group, which see
//! the partition's entries shared out among them.

pub mod group;
pub mod group_reader;
pub mod plan;
pub mod position;

/// What `rewind` changes for consumer groups: a group that Redis counts as having been
/// delivered past `stream_top` (the stream's new end) goes back to its position in Postgres
/// (restored with the database), so what follows is delivered, and projected, again.
/// Returns the groups moved.
pub async fn rewind_groups(
    pool: &sqlx::PgPool,
    redis: &mut rocket_rides_platform::redis_conn::RedisConnection,
    log: &str,
    partition: i32,
    stream_top: i64,
) -> Result<Vec<String>, group::GroupError> {
    let stream = crate::partition::stream_key(log, partition);
    let mut moved = Vec::new();
    for (name, delivered) in group::groups_of(redis, &stream).await? {
        if delivered <= stream_top {
            continue;
        }
        let at = position::At {
            stream: log,
            name: &name,
            partition,
        };
        let back = position::current(pool, at)
            .await?
            .unwrap_or(stream_top)
            .min(stream_top);
        let group = group::Group {
            stream: stream.clone(),
            name: name.clone(),
        };
        group.set_id(redis, crate::StreamId::of_seq(back)).await?;
        moved.push(name);
    }
    Ok(moved)
}

use sqlx::PgExecutor;

use crate::{Entry, LogRecord, RecordError};

/// Why a reader stops: going on would make what it derives from the log wrong. Each message
/// says what diverged and what repairs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    #[error(
        "record {expected} is in neither the stream nor the archive (pruned after LOG_RETENTION \
         while this reader was away?): the records are gone; `rocket-rides-log reset` the \
         reader past them to accept the loss"
    )]
    Gap { expected: i64 },
    #[error(
        "stream entry {seq} is not the archived record: {reason}; if Postgres was restored, run \
         `rocket-rides-streamer rewind`, else `rocket-rides-streamer republish`"
    )]
    Diverged { seq: i64, reason: String },
    #[error(
        "the stream ends at seq {stream_top}, before this reader's position {checkpoint}: \
         Redis lost entries; run `rocket-rides-streamer republish`"
    )]
    RedisBehind { stream_top: i64, checkpoint: i64 },
    #[error(
        "this database's log streams to {log:?} but STREAM_NAME is {configured:?}; set \
         STREAM_NAME={log:?} (a log has one stream)"
    )]
    StreamName { log: String, configured: String },
}

/// Which log a database holds: its id (random per database), the stream it is claimed for
/// (once a streamer has claimed one), its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogIdentity {
    pub log_id: String,
    pub stream: Option<String>,
    pub partitions: i32,
}

impl LogIdentity {
    pub async fn read(db: impl PgExecutor<'_>) -> Result<Self, sqlx::Error> {
        let (log_id, stream, partitions) = crate::archive::log(db).await?;
        Ok(Self {
            log_id,
            stream,
            partitions,
        })
    }

    /// A reader configured for `configured` (STREAM_NAME) must not read another stream than
    /// the one its log is streamed to: it would wait for rides that never come there.
    pub fn check_stream(&self, configured: &str) -> Result<(), Halt> {
        match &self.stream {
            Some(log) if log != configured => Err(Halt::StreamName {
                log: log.clone(),
                configured: configured.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// What a reader does with one stream entry, given the archive's record at its seq.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The entry is the archived record: apply it (with the entry's trace context).
    Apply(LogRecord),
    /// The entry is unreadable, but the archive has the record at its id: set the entry aside
    /// (dead letters) and apply the archived record.
    SetAside(LogRecord, RecordError),
    /// The entry is not what the archive holds at its seq: halt.
    Diverged(String),
}

/// Checks `entry` against `kept`, the archive's record at the entry's seq (None if the
/// archive has none).
pub fn check(entry: &Entry, kept: Option<&LogRecord>) -> Verdict {
    match (&entry.record, kept) {
        (Err(e), Some(kept)) => Verdict::SetAside(kept.clone(), e.clone()),
        (Err(e), None) => Verdict::Diverged(format!(
            "the entry is unreadable ({e}) and the archive has no record there"
        )),
        (Ok(record), Some(kept)) if record.same_as(kept) => Verdict::Apply(LogRecord {
            trace: record.trace.clone(),
            ..kept.clone()
        }),
        (Ok(record), Some(kept)) => Verdict::Diverged(format!(
            "the stream has {}, the archive {}",
            record.describe(),
            kept.describe()
        )),
        (Ok(record), None) => Verdict::Diverged(format!(
            "the stream has {}, the archive has no record there (was Postgres restored?)",
            record.describe()
        )),
    }
}
