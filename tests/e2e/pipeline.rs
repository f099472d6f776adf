//! Exactly once in effect: every consumer's total equals the committed rides, exactly.

use std::time::Duration;

use rocket_rides_tests::{
    System,
    system::{self, LOG, load},
};
use tonic_health::pb::health_check_response::ServingStatus;

const CAUGHT_UP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_exact_with_double_sends_and_simulated_crashes() {
    let sys = System::start().await;
    let env = [
        ("DOUBLE_SEND_RATE", "0.3"),
        ("CRASH_RATE", "0.3"),
        ("BATCH_SIZE", "10"),
    ];
    let (api, streamer, consumers) = sys.pipeline(&["consumer0", "consumer1"], &env).await;

    assert_eq!(load(&api, 600, 16).await, 600);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;

    // Both failure simulations really happened, and re-sends really reached the stream.
    assert!(
        streamer
            .log()
            .contains("simulated failure: batch sent twice")
    );
    for consumer in &consumers {
        assert!(
            consumer
                .log()
                .contains("simulated failure: crashed before commit")
        );
    }
    let entries = sys.stream_len(LOG).await;
    assert!(
        entries > 600,
        "expected re-sent entries, the stream holds {entries}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_exact_under_concurrent_load() {
    let sys = System::start().await;
    let (api, _streamer, consumers) = sys.pipeline(&["consumer0", "consumer1"], &[]).await;

    // 48 callers: many API transactions commit out of id order.
    assert_eq!(load(&api, 2400, 48).await, 2400);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rides")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(count, 2400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_consumer_loses_nothing_while_the_stream_is_trimmed() {
    let sys = System::start().await;
    let env = [("STREAM_MAX_LEN", "50"), ("BATCH_SIZE", "20")];
    let (api, _streamer, mut consumers) = sys.pipeline(&["consumer0", "consumer1"], &env).await;

    assert_eq!(load(&api, 40, 4).await, 40);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;

    // consumer1 is away while far more rides than STREAM_MAX_LEN go through.
    let status = consumers[1]
        .stop(libc::SIGTERM, Duration::from_secs(15))
        .await;
    assert!(status.success(), "SIGTERM should exit 0, got {status:?}");
    assert_eq!(load(&api, 300, 8).await, 300);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    let held = sys.stream_len(LOG).await;
    assert!(
        held >= 300,
        "entries consumer1 needs were trimmed: {held} left"
    );

    // Back, it catches up exactly; then trimming brings the stream back under the bound.
    sys.start_ready(&mut consumers[1]).await;
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;
    assert_eq!(load(&api, 30, 2).await, 30);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;
    sys.wait_stream_within(50, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_consumer_stays_serving() {
    let sys = System::start().await;
    let (api, _streamer, consumers) = sys.pipeline(&["consumer0"], &[]).await;
    assert_eq!(load(&api, 1, 1).await, 1);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    // Nothing arrives for several XREAD blocks: health checks must not queue behind the
    // blocked read and report Redis as down.
    for _ in 0..30 {
        let status = system::health(&consumers[0]).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
