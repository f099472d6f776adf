//! Operator repairs, run as `rocket-rides-streamer republish` and `rocket-rides-streamer
//! rewind` while the services keep running. Each goes over every partition, whatever happens
//! to one, and then fails (`RepairError::Incomplete`) naming every partition it could not
//! repair, why, and what to do; running it again redoes only what is still missing.
//!
//! `republish` (Redis lost data): rewrites, from the archive and at their original ids, every
//! record that the stream lacks and a live reader (of any kind, see `positions`) still needs,
//! and at least the last one streamed, so the stream ends where the log does again. Readers
//! silent for longer than `CONSUMER_EXPIRY` are not waited for: they catch up from the archive
//! when they return. Records a live reader needs that were pruned from the archive cannot come
//! back: the rest is republished and the partition reported. Halted readers and the streamer
//! then resume by themselves.
//!
//! `rewind` (Postgres was restored, or failed over, to an older state): deletes the stream's
//! entries from the first one the archive does not hold as it is, and moves the stream's end
//! back to match, so the streamer re-sends what Postgres has. The rides Postgres lost are gone
//! from the log too; consumers, whose checkpoints were restored with the database, end exact.

use rocket_rides_log::{
    StreamId, archive,
    partition::stream_key,
    positions::{self, Position},
    reader::{self, group::GroupError},
    stream,
};
use rocket_rides_platform::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::Config;

const CHUNK: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("Postgres: {0}; run it again once Postgres answers (it redoes only what is missing)")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}; run it again once Redis answers (it redoes only what is missing)")]
    Redis(#[from] redis::RedisError),
    #[error("moving consumer groups back: {0}; run it again (it redoes only what is missing)")]
    Groups(#[from] GroupError),
    #[error(
        "records {first}..={last} are no longer in the archive (pruned after LOG_RETENTION), and \
         live readers still need them: {}. What the archive still has was republished; those \
         readers halt on the gap until moved past it (`rocket-rides-log reset NAME --partition \
         {partition} --to-seq {last} --execute`), or until they expire (CONSUMER_EXPIRY) and \
         stop holding the log",
        describe(.needing)
    )]
    Pruned {
        partition: i32,
        first: i64,
        last: i64,
        needing: Vec<Position>,
    },
    #[error(
        "{done} entries, but {} of {partitions} partitions could not be repaired (the others \
         were):{}",
        .failed.len(),
        list(.failed)
    )]
    Incomplete {
        done: u64,
        partitions: i32,
        failed: Vec<(i32, RepairError)>,
    },
}

fn describe(readers: &[Position]) -> String {
    let readers: Vec<String> = readers
        .iter()
        .map(|r| format!("{} (at {})", r.name, r.last_seq))
        .collect();
    readers.join(", ")
}

fn list(failed: &[(i32, RepairError)]) -> String {
    failed
        .iter()
        .map(|(p, e)| format!("\n  partition {p}: {e}"))
        .collect()
}

/// Rewrites what the partitions' streams lack; returns how many entries were written. Goes on
/// over every partition whatever happens to one, then reports those it could not repair.
pub async fn republish(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
) -> Result<u64, RepairError> {
    let (_, _, partitions) = archive::log(pool).await?;
    let mut outcomes = Vec::new();
    for p in 0..partitions {
        outcomes.push((p, republish_partition(config, pool, redis, p).await));
    }
    summarize(partitions, outcomes)
}

/// Drops the entries the archive does not hold as they are, in every partition's stream;
/// returns how many were dropped. Goes on over every partition, as `republish` does.
pub async fn rewind(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
) -> Result<u64, RepairError> {
    let (_, _, partitions) = archive::log(pool).await?;
    let mut outcomes = Vec::new();
    for p in 0..partitions {
        outcomes.push((p, rewind_partition(config, pool, redis, p).await));
    }
    summarize(partitions, outcomes)
}

/// What one partition's repair did: entries written or dropped, and why it is not whole.
type Outcome = (u64, Option<RepairError>);

/// The total, or `Incomplete` naming each partition that could not be repaired and why.
fn summarize(
    partitions: i32,
    outcomes: Vec<(i32, Result<Outcome, RepairError>)>,
) -> Result<u64, RepairError> {
    let mut done = 0;
    let mut failed = Vec::new();
    for (p, outcome) in outcomes {
        match outcome {
            Ok((count, None)) => done += count,
            Ok((count, Some(e))) => {
                done += count;
                tracing::error!(partition = p, error = %e, "partition not fully repaired");
                failed.push((p, e));
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "partition not repaired");
                failed.push((p, e));
            }
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(RepairError::Incomplete {
            done,
            partitions,
            failed,
        })
    }
}

/// Where republishing a partition starts: after the slowest live reader's position (or the
/// stream's top, if that is further), and at least at the last record streamed.
fn republish_from(slowest_live: Option<i64>, stream_top: i64, streamed: i64) -> i64 {
    slowest_live
        .unwrap_or(streamed)
        .max(stream_top)
        .min(streamed - 1)
}

async fn republish_partition(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
    p: i32,
) -> Result<Outcome, RepairError> {
    let head = archive::head(pool, p).await?;
    let stream = stream_key(&config.stream, p);
    let top = stream::last_id(redis, &stream).await?.log_seq();
    if top >= head.streamed_seq {
        tracing::info!(
            partition = p,
            stream_top = top,
            streamed = head.streamed_seq,
            "the stream lacks nothing"
        );
        return Ok((0, None));
    }
    let expiry = config.consumer_expiry;
    let expired = positions::expired(pool, &config.stream, p, expiry).await?;
    if !expired.is_empty() {
        tracing::info!(
            partition = p,
            readers = %describe(&expired),
            "not republishing for readers silent longer than CONSUMER_EXPIRY: they catch up from \
             the archive when they return"
        );
    }
    let slowest = positions::slowest_live(pool, &config.stream, p, expiry).await?;
    let mut after = republish_from(slowest, top, head.streamed_seq);
    // The archive's first record; past the last streamed one when it holds none of them.
    let first = archive::first_seq(pool, p)
        .await?
        .unwrap_or(head.streamed_seq + 1);
    let mut hole = None;
    if first > after + 1 {
        let needing = positions::live_needing(pool, &config.stream, p, expiry, first - 1).await?;
        if !needing.is_empty() {
            hole = Some(RepairError::Pruned {
                partition: p,
                first: after + 1,
                last: first - 1,
                needing,
            });
        }
        after = first - 1;
    }
    let mut written = 0;
    while after < head.streamed_seq {
        let records = archive::range(pool, p, after, head.streamed_seq, CHUNK).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            break;
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in &records {
            stream::add(&mut pipe, &stream, record);
        }
        pipe.query_async::<()>(redis).await?;
        written += records.len() as u64;
        after = last;
    }
    if after < head.streamed_seq {
        // The last records streamed were pruned (nobody needed them): the stream still ends
        // where the log does, with no entry, so the streamer goes on after it.
        end_stream_at(redis, &stream, head.streamed_seq).await?;
        after = head.streamed_seq;
    }
    tracing::info!(
        partition = p,
        written,
        stream_top = after,
        "republished the archived records the stream lacked"
    );
    Ok((written, hole))
}

/// Moves the end of `stream` (its last id) up to `seq`, creating it empty if it is missing.
async fn end_stream_at(
    redis: &mut RedisConnection,
    stream: &str,
    seq: i64,
) -> Result<(), redis::RedisError> {
    const MAKER: &str = "rocket-rides-republish";
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(redis).await?;
    if !exists {
        // XSETID needs the stream; a group made with MKSTREAM creates it without an entry.
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(MAKER)
            .arg("$")
            .arg("MKSTREAM")
            .query_async::<()>(redis)
            .await?;
        redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream)
            .arg(MAKER)
            .query_async::<()>(redis)
            .await?;
    }
    redis::cmd("XSETID")
        .arg(stream)
        .arg(StreamId::of_seq(seq))
        .query_async(redis)
        .await
}

/// Groups delivered past the stream's end go back to their restored positions.
async fn rewind_groups(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
    p: i32,
    stream_top: i64,
) -> Result<(), RepairError> {
    let moved = reader::rewind_groups(pool, redis, &config.stream, p, stream_top).await?;
    if !moved.is_empty() {
        tracing::info!(partition = p, groups = ?moved, "moved consumer groups back to their positions in Postgres");
    }
    Ok(())
}

async fn rewind_partition(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
    p: i32,
) -> Result<Outcome, RepairError> {
    let head = archive::head(pool, p).await?;
    let stream = stream_key(&config.stream, p);
    let top = stream::last_id(redis, &stream).await?.log_seq();
    // Keep everything before the first entry, after what Postgres recorded as streamed, that
    // is not the archived record.
    let keep = archive::first_divergence::<RepairError>(
        pool,
        redis,
        p,
        &stream,
        head.streamed_seq.min(top),
        top,
        CHUNK,
    )
    .await?
    .map_or(top, |divergence| divergence.seq - 1);
    // Past what Postgres numbered the stream cannot be right, even where it holds no entries
    // to compare (trimmed once every consumer had them): its end goes back to what Postgres
    // knows Redis held, and the streamer re-sends the rest.
    let keep = if top > head.last_seq {
        keep.min(head.streamed_seq)
    } else {
        keep
    };
    if keep >= top {
        // Also on a run after one that failed between the stream and the groups.
        rewind_groups(config, pool, redis, p, top).await?;
        tracing::info!(
            partition = p,
            stream_top = top,
            "the stream holds nothing the archive lacks"
        );
        return Ok((0, None));
    }
    let doomed = stream::read_range(redis, &stream, keep + 1, top).await?;
    let mut dropped = 0;
    for chunk in doomed.chunks(CHUNK as usize) {
        let ids: Vec<StreamId> = chunk.iter().map(|e| e.id).collect();
        dropped += redis::cmd("XDEL")
            .arg(&stream)
            .arg(&ids)
            .query_async::<u64>(redis)
            .await?;
    }
    redis::cmd("XSETID")
        .arg(&stream)
        .arg(StreamId::of_seq(keep))
        .query_async::<()>(redis)
        .await?;
    sqlx::query(
        "UPDATE log_partitions SET streamed_seq = LEAST(streamed_seq, $1) WHERE partition = $2",
    )
    .bind(keep)
    .bind(p)
    .execute(pool)
    .await?;
    rewind_groups(config, pool, redis, p, keep).await?;
    tracing::info!(
        partition = p,
        dropped,
        stream_top = keep,
        "rewound the stream to what Postgres holds"
    );
    Ok((dropped, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn republishing_starts_at_the_slowest_live_reader_and_at_least_at_the_last_streamed() {
        // A live reader at 40, the stream empty, 100 streamed: from 41 on.
        assert_eq!(republish_from(Some(40), 0, 100), 40);
        // No live reader (none, or all expired): only the last one streamed.
        assert_eq!(republish_from(None, 0, 100), 99);
        // The stream still has up to 70: after it.
        assert_eq!(republish_from(Some(40), 70, 100), 70);
        // A reader at the end: still the last one streamed, so the stream ends where the log does.
        assert_eq!(republish_from(Some(100), 0, 100), 99);
    }

    #[test]
    fn an_incomplete_repair_names_each_partition_why_and_what_to_do() {
        let pruned = RepairError::Pruned {
            partition: 1,
            first: 1,
            last: 40,
            needing: vec![Position {
                name: "consumer1".into(),
                last_seq: 0,
            }],
        };
        let outcomes = vec![
            (0, Ok((5, None))),
            (1, Ok((60, Some(pruned)))),
            (2, Err(RepairError::Postgres(sqlx::Error::PoolTimedOut))),
        ];
        let err = summarize(3, outcomes).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("65 entries, but 2 of 3 partitions"),
            "{message}"
        );
        assert!(message.contains("partition 1: records 1..=40"), "{message}");
        assert!(message.contains("consumer1 (at 0)"), "{message}");
        assert!(message.contains("--partition 1 --to-seq 40"), "{message}");
        assert!(message.contains("partition 2: Postgres"), "{message}");
        assert!(message.contains("run it again"), "{message}");
        assert_eq!(summarize(1, vec![(0, Ok((7, None)))]).unwrap(), 7);
    }
}
