//! Keeping the stream bounded without ever dropping an entry a registered consumer still
//! needs: once the stream is longer than `STREAM_MAX_LEN`, entries older than the oldest
//! consumer checkpoint are removed (`XTRIM MINID`). A lagging consumer therefore holds
//! entries back instead of losing them; with no consumer registered the newest
//! `STREAM_MAX_LEN` entries are kept.

use redis::aio::ConnectionManager;
use rocket_rides_log::StreamId;
use sqlx::PgPool;

use crate::streamer::{Settings, StreamError};

pub async fn trim(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    settings: &Settings,
) -> Result<(), StreamError> {
    let stream = &settings.stream;
    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(redis).await?;
    if len <= u64::from(settings.max_len) {
        return Ok(());
    }
    let checkpoints: Vec<String> =
        sqlx::query_scalar("SELECT last_stream_id FROM consumers WHERE stream = $1")
            .bind(stream)
            .fetch_all(pool)
            .await?;
    let oldest = oldest_checkpoint(&checkpoints);
    let mut xtrim = redis::cmd("XTRIM");
    xtrim.arg(stream);
    match oldest {
        Some(id) => xtrim.arg("MINID").arg("=").arg(id.to_string()),
        None => xtrim.arg("MAXLEN").arg("=").arg(settings.max_len),
    };
    let removed: u64 = xtrim.query_async(redis).await?;
    tracing::debug!(removed, len, oldest_checkpoint = ?oldest.map(|id| id.to_string()), "stream trimmed");
    Ok(())
}

/// The oldest checkpoint among registered consumers; an unreadable one counts as the start of
/// the stream, so it blocks trimming rather than letting it drop entries.
fn oldest_checkpoint(checkpoints: &[String]) -> Option<StreamId> {
    checkpoints
        .iter()
        .map(|id| id.parse().unwrap_or(StreamId::ZERO))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_consumer_bounds_the_trim() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(oldest_checkpoint(&[]), None);
        assert_eq!(
            oldest_checkpoint(&ids(&["20-1", "9-7", "100-0"])),
            Some("9-7".parse().unwrap())
        );
        assert_eq!(
            oldest_checkpoint(&ids(&["20-1", "garbage"])),
            Some(StreamId::ZERO)
        );
    }
}
