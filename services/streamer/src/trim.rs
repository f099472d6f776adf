//! Keeping the stream bounded. Once it is longer than `STREAM_MAX_LEN`, entries every reader
//! reading from Redis has done are removed (`XTRIM MINID`); with none reading from Redis, the
//! newest `STREAM_MAX_LEN` are kept. Every reader counts by its position in Postgres: a
//! checkpointed consumer by its checkpoint, a Redis consumer group (the history) by its durable
//! position, never by what Redis says of the group. Readers behind the stream's first entry,
//! and readers silent for longer than `CONSUMER_EXPIRY`, do not hold the stream back: the
//! archive in Postgres has what they need.

use rocket_rides_log::{StreamId, partition, positions, stream};
use rocket_rides_platform::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::{Config, streamer::StreamError};

/// Trims partition `p`'s stream if it is longer than `STREAM_MAX_LEN`; returns its length
/// afterwards. Needs no memory in Redis (XTRIM is allowed at `maxmemory`), so it also frees a
/// full Redis once the readers holding the stream have moved on or expired.
pub async fn trim(
    pool: &PgPool,
    redis: &mut RedisConnection,
    config: &Config,
    p: i32,
) -> Result<u64, StreamError> {
    let stream = &partition::stream_key(&config.stream, p);
    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(redis).await?;
    if len <= u64::from(config.max_len) {
        return Ok(len);
    }
    let first = stream::read_first(redis, stream).await?;
    let checkpoints =
        positions::live_positions(pool, &config.stream, p, config.consumer_expiry).await?;
    let mut xtrim = redis::cmd("XTRIM");
    xtrim.arg(stream);
    match holding(&checkpoints, first) {
        Some(minid) => xtrim.arg("MINID").arg("=").arg(minid),
        None => xtrim.arg("MAXLEN").arg("=").arg(config.max_len),
    };
    let removed: u64 = xtrim.query_async(redis).await?;
    tracing::debug!(removed, len, "stream trimmed");
    Ok(len.saturating_sub(removed))
}

/// The first id to keep for the slowest consumer still reading from Redis (its checkpoint at
/// or past the stream's first entry `first`), if any.
fn holding(checkpoints: &[i64], first: Option<i64>) -> Option<StreamId> {
    let first = first?;
    checkpoints
        .iter()
        .filter(|&&c| c + 1 >= first)
        .min()
        .map(|c| StreamId::of_seq(c + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_consumer_reading_from_redis_bounds_the_trim() {
        assert_eq!(holding(&[], Some(5)), None);
        assert_eq!(holding(&[9, 20], None), None);
        assert_eq!(holding(&[20, 9, 100], Some(5)), Some(StreamId::of_seq(10)));
        // 2 is behind the stream (it reads the archive): it holds nothing back.
        assert_eq!(holding(&[2, 30], Some(10)), Some(StreamId::of_seq(31)));
        assert_eq!(holding(&[2], Some(10)), None);
    }
}
