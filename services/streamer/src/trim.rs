//! Keeping the stream bounded. Once it is longer than `STREAM_MAX_LEN`, entries every consumer
//! reading from Redis has applied are removed (`XTRIM MINID`); with none reading from Redis,
//! the newest `STREAM_MAX_LEN` are kept. A Redis consumer group (the history service) holds
//! the stream at its oldest pending entry, or after the last entry it was delivered.
//! Consumers behind the stream's first entry, and consumers (or groups with no member) silent
//! for longer than `CONSUMER_EXPIRY`, do not hold the stream back: the archive in Postgres has
//! what they need.

use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingReply};
use rocket_rides_log::{StreamId, partition, stream};
use rocket_rides_platform::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::{Config, streamer::StreamError};

/// Checkpoints of the consumers that still hold the stream back.
pub const LIVE_CHECKPOINTS: &str = "
    SELECT last_seq FROM consumer_positions
    WHERE stream = $1 AND partition = $3 AND updated_at > now() - make_interval(secs => $2)";

/// Trims partition `p`'s stream if it is longer than `STREAM_MAX_LEN`; returns its length
/// afterwards.
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
    let mut checkpoints: Vec<i64> = sqlx::query_scalar(LIVE_CHECKPOINTS)
        .bind(&config.stream)
        .bind(config.consumer_expiry.as_secs_f64())
        .bind(p)
        .fetch_all(pool)
        .await?;
    checkpoints.extend(live_groups(redis, stream, config.consumer_expiry).await?);
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

/// Where the stream's consumer groups with a member seen within `expiry` are, as checkpoints
/// (the last seq done): before their oldest pending entry, else at the last entry delivered.
async fn live_groups(
    redis: &mut RedisConnection,
    stream: &str,
    expiry: std::time::Duration,
) -> Result<Vec<i64>, redis::RedisError> {
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await?;
    let mut positions = Vec::new();
    for group in groups.groups {
        let members: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&group.name)
            .query_async(redis)
            .await?;
        if !members
            .consumers
            .iter()
            .any(|m| (m.idle as u128) < expiry.as_millis())
        {
            continue;
        }
        let pending: StreamPendingReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&group.name)
            .query_async(redis)
            .await?;
        let position = match pending {
            StreamPendingReply::Data(data) => {
                data.start_id.parse::<StreamId>().map(|id| id.log_seq() - 1)
            }
            _ => group
                .last_delivered_id
                .parse::<StreamId>()
                .map(StreamId::log_seq),
        };
        positions.push(position.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Parse, "XINFO GROUPS", e.to_string()))
        })?);
    }
    Ok(positions)
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
