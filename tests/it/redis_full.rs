//! A full Redis (`maxmemory` with `noeviction`) refuses the streamer's XADD while a stopped
//! reader holds the stream back. Nothing is lost and the log recovers by itself, with no manual
//! XTRIM, once that reader is back and caught up, or once it has expired.

use std::time::Instant;

use rocket_rides_tests::{Pipeline, ServingStatus, Streamer, System, stream};

use crate::CAUGHT_UP;

/// The streamer keeps the stream this short when nothing holds it.
const MAX_LEN: usize = 100;
const BATCH: usize = 200;
const ENV: [(&str, &str); 3] = [
    ("STREAM_MAX_LEN", "100"),
    ("BATCH_SIZE", "200"),
    // NOT_SERVING soon after streaming stops.
    ("PROGRESS_TIMEOUT", "2s"),
];

/// Times the streamer's leader of partition 0 found Redis full.
async fn refused(streamer: &Streamer) -> Result<f64, String> {
    let metrics = streamer.metrics().await?;
    Ok(metrics
        .get(
            "rocket_rides_streamer_errors_total",
            &[("kind", "redis_full"), ("partition", "0")],
        )
        .unwrap_or(0.0))
}

/// Starts a pipeline with two consumers, stops `consumer1` (its checkpoint, a day from
/// expiring, holds the stream), gives Redis little room, and creates rides until Redis refuses
/// the streamer's XADD. Returns the pipeline, `consumer1` stopped.
async fn fill_redis(sys: &System) -> Pipeline {
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &ENV).await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    p.consumers[1].terminate().await;
    squeeze(sys, &p).await;
    p
}

/// Gives Redis little room and creates rides until Redis refuses the streamer's XADD (50 rides
/// already created); the streamer says so, and rides are still acknowledged.
async fn squeeze(sys: &System, p: &Pipeline) {
    let mut redis = sys.redis.connection().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory");
    for (name, value) in [
        ("maxmemory-policy", "noeviction".to_string()),
        ("maxmemory", (used + 512 * 1024).to_string()),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    // CreateRide does not need Redis: rides go on, and pile up in the stream until Redis is
    // full.
    let deadline = Instant::now() + CAUGHT_UP;
    let mut created = 50;
    while refused(&p.streamer).await.unwrap_or(0.0) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "Redis never refused the streamer's XADD ({created} rides created)"
        );
        created += p.api.load(250, 8).await;
    }
    p.streamer
        .wait_until_status(ServingStatus::NotServing)
        .await;
    assert!(
        p.streamer.log_count("Redis is full") > 0,
        "the streamer does not say why it stopped: {}",
        p.streamer.log_tail(20)
    );
    // Still acknowledged (staged in Postgres), and held there while Redis stays full.
    assert_eq!(p.api.load(20, 2).await, 20);
    assert!(sys.staged().await > 0, "Redis refused nothing");
}

/// Both consumers exact, the streamer SERVING and the stream trimmed back to its bound.
async fn recovered(sys: &System, p: &Pipeline) {
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
    sys.wait_stream_within(MAX_LEN + BATCH, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_recovers_by_itself_once_the_reader_holding_it_is_back() {
    let sys = System::start().await;
    let mut p = fill_redis(&sys).await;
    let held = sys.stream_len(&stream(0)).await;

    // Back, consumer1 reads what the stream holds; the streamer, retrying, trims behind it,
    // which frees Redis, and streams the rest.
    p.consumers[1].start_ready().await;
    recovered(&sys, &p).await;
    assert!(
        sys.stream_len(&stream(0)).await < held,
        "the stream was never trimmed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_recovers_by_itself_once_the_reader_holding_it_expires() {
    let sys = System::start().await;
    let mut p = fill_redis(&sys).await;

    // consumer1 stays away past CONSUMER_EXPIRY (its last sign of life made older than the
    // default day): it stops holding the stream, which is trimmed, and streaming resumes
    // without it.
    sqlx::query(
        "UPDATE consumer_positions SET updated_at = now() - interval '2 days' WHERE name = 'consumer1'",
    )
    .execute(&sys.db)
    .await
    .unwrap();
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
    sys.wait_stream_within(MAX_LEN + BATCH, CAUGHT_UP).await;

    // Back later, it catches up from the archive.
    p.consumers[1].start_ready().await;
    recovered(&sys, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_held_by_a_consumer_group_recovers_once_the_group_is_back() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &ENV).await;
    let mut history = sys.history("history-a", &[("CLAIM_IDLE", "2"), ("BATCH_SIZE", "50")]);
    history.start_ready().await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    sys.wait_history_exact(CAUGHT_UP).await;
    // Shut down cleanly, the group holds the stream by its position in Postgres.
    history.terminate().await;
    squeeze(&sys, &p).await;

    history.start_ready().await;
    recovered(&sys, &p).await;
    sys.wait_history_exact(CAUGHT_UP).await;
}
