//! Partitions: which one a record's key picks, and each one's stream.
//!
//! A key picks its partition as Kafka's default partitioner does: the 32-bit murmur2 hash of
//! its bytes, made positive, modulo the partition count. The api sends the positive hash; the
//! insert takes it modulo `log_head.partitions`, so the count is read where it is fixed.

use rocket_rides_platform::{health::Soundness, retry::Backoff, shutdown::CancellationToken};

/// The stream of partition `partition` of the log streamed to `stream`: `<stream>:{<p>}`. The
/// braces are a Redis Cluster hash tag, so a partition's stream and its dead-letter stream share
/// a slot, and partitions spread over the cluster's masters.
pub fn stream_key(stream: &str, partition: i32) -> String {
    format!("{stream}:{{{partition}}}")
}

/// The positive murmur2 hash of `key` (Kafka's `toPositive(murmur2(bytes))`).
pub fn key_hash(key: &str) -> i32 {
    murmur2(key.as_bytes()) & 0x7fff_ffff
}

/// The partition `key` picks out of `partitions`.
pub fn of_key(key: &str, partitions: i32) -> i32 {
    key_hash(key) % partitions
}

/// MurmurHash2, 32-bit, with the seed Kafka uses.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The log's partition count, once Postgres answers (retrying with backoff meanwhile); None if
/// `cancel` comes first.
pub async fn count(pool: &sqlx::PgPool, cancel: &CancellationToken) -> Option<i32> {
    let mut backoff = Backoff::default();
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => return None,
            read = crate::archive::log(pool) => read,
        };
        match read {
            Ok((_, _, partitions)) => return Some(partitions),
            Err(e) => tracing::warn!(error = %e, "cannot read the log's partitions yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// The part of a service's soundness that a wrong `LOG_PARTITIONS` holds down.
pub const CONFIG_PART: i32 = -1;

/// The log's partition count, once Postgres answers, if it is what the service was configured
/// to expect (`configured`, from `LOG_PARTITIONS`). If not, says so, holds the service
/// NOT_SERVING and waits for `cancel`: a service must not work a log of another shape than it
/// was deployed for. None when cancelled.
pub async fn expected(
    pool: &sqlx::PgPool,
    configured: Option<i32>,
    sound: &Soundness,
    cancel: &CancellationToken,
) -> Option<i32> {
    let partitions = count(pool, cancel).await?;
    if let Some(wanted) = configured
        && wanted != partitions
    {
        tracing::error!(
            log_partitions = partitions,
            configured = wanted,
            "LOG_PARTITIONS does not match the log's partition count (fixed when the log was \
             created); standing still. Unset LOG_PARTITIONS or set it to {partitions}"
        );
        sound.set(CONFIG_PART, false);
        cancel.cancelled().await;
        return None;
    }
    Some(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_as_kafka_computes_it() {
        // Values from Kafka's own partitioner tests.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn keys_spread_over_partitions_and_stay_put() {
        let mut counts = [0; 4];
        for rider in 0..4000 {
            counts[of_key(&format!("rider-{rider}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(of_key("rider-7", 4), of_key("rider-7", 4));
        assert_eq!(stream_key("rides", 3), "rides:{3}");
    }
}
