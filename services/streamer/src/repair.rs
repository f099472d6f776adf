//! Operator repairs, run as `rocket-rides-streamer republish` and `rocket-rides-streamer
//! rewind` while the services keep running; each repairs every partition.
//!
//! `republish` (Redis lost data): rewrites, from the archive and at their original ids, every
//! record that the stream lacks and a registered consumer still needs, and at least the last
//! one streamed, so the stream ends where the log does again. Halted consumers and the streamer
//! then resume by themselves.
//!
//! `rewind` (Postgres was restored, or failed over, to an older state): deletes the stream's
//! entries from the first one the archive does not hold as it is, and moves the stream's end
//! back to match, so the streamer re-sends what Postgres has. The rides Postgres lost are gone
//! from the log too; consumers, whose checkpoints were restored with the database, end exact.

use rocket_rides_log::{StreamId, archive, partition::stream_key, stream};
use rocket_rides_platform::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::Config;

const CHUNK: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(
        "records {first}..{last} are no longer in the archive (pruned after LOG_RETENTION); \
         consumers behind them must be rebuilt"
    )]
    Pruned { first: i64, last: i64 },
}

/// Rewrites what the partitions' streams lack; returns how many entries were written.
pub async fn republish(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
) -> Result<u64, RepairError> {
    let (_, _, partitions) = archive::log(pool).await?;
    let mut written = 0;
    for p in 0..partitions {
        written += republish_partition(config, pool, redis, p).await?;
    }
    Ok(written)
}

/// Drops the entries the archive does not hold as they are, in every partition's stream;
/// returns how many were dropped.
pub async fn rewind(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
) -> Result<u64, RepairError> {
    let (_, _, partitions) = archive::log(pool).await?;
    let mut dropped = 0;
    for p in 0..partitions {
        dropped += rewind_partition(config, pool, redis, p).await?;
    }
    Ok(dropped)
}

async fn republish_partition(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
    p: i32,
) -> Result<u64, RepairError> {
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
        return Ok(0);
    }
    let needed: Option<i64> = sqlx::query_scalar(
        "SELECT min(last_seq) FROM consumer_positions WHERE stream = $1 AND partition = $2",
    )
    .bind(&config.stream)
    .bind(p)
    .fetch_one(pool)
    .await?;
    // Write from the first record a consumer needs, and at least the last one streamed.
    let mut after = needed
        .unwrap_or(head.streamed_seq)
        .max(top)
        .min(head.streamed_seq - 1);
    if let Some(first) = archive::first_seq(pool, p).await?
        && first > after + 1
    {
        return Err(RepairError::Pruned {
            first: after + 1,
            last: first - 1,
        });
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
    tracing::info!(
        partition = p,
        written,
        stream_top = after,
        "republished the archived records the stream lacked"
    );
    Ok(written)
}

async fn rewind_partition(
    config: &Config,
    pool: &PgPool,
    redis: &mut RedisConnection,
    p: i32,
) -> Result<u64, RepairError> {
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
        tracing::info!(
            partition = p,
            stream_top = top,
            "the stream holds nothing the archive lacks"
        );
        return Ok(0);
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
    tracing::info!(
        partition = p,
        dropped,
        stream_top = keep,
        "rewound the stream to what Postgres holds"
    );
    Ok(dropped)
}
