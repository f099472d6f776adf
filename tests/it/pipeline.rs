//! Exactly once in effect: every consumer's total equals the committed rides, exactly.

use std::time::Duration;

use rocket_rides_tests::{ServingStatus, System, stream};

use crate::CAUGHT_UP;

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_exact_with_double_sends_and_simulated_crashes() {
    let sys = System::start().await;
    let env = [
        ("DOUBLE_SEND_RATE", "0.3"),
        ("CRASH_RATE", "0.3"),
        ("BATCH_SIZE", "10"),
    ];
    let p = sys.pipeline(&["consumer0", "consumer1"], &env).await;

    assert_eq!(p.api.load(600, 16).await, 600);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Both failure simulations really happened.
    let double_sends = p.streamer.metrics().await.unwrap();
    let double_sends = double_sends.get("rocket_rides_double_sends_total", &[]);
    assert!(double_sends > Some(0.0), "double sends: {double_sends:?}");
    for consumer in &p.consumers {
        let crashes = consumer
            .metric("rocket_rides_simulated_crashes_total")
            .await
            .unwrap();
        assert!(
            crashes > Some(0.0),
            "{}: simulated crashes {crashes:?}",
            consumer.name()
        );
    }
    // Re-sent batches were verified against the archive and adopted; Redis refused every
    // duplicate (ids are <seq>-0), so the stream holds each record once.
    assert_eq!(sys.stream_len(&stream(0)).await, 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_exact_under_concurrent_load() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;

    // 48 callers: many API transactions commit out of id order.
    assert_eq!(p.api.load(2400, 48).await, 2400);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(sys.committed().await.rides, 2400);
    // Batches that are just the records after the checkpoint were checked against the archive
    // as a range: the digests computed in Rust and in Postgres agree.
    for consumer in &p.consumers {
        let applied = consumer.metric("rocket_rides_records_applied_total").await;
        let by_range = consumer
            .metric("rocket_rides_records_applied_by_range_total")
            .await;
        match (applied, by_range) {
            (Ok(Some(all)), Ok(Some(range))) if range >= all / 2.0 => {}
            other => panic!("{}: (applied, by range) = {other:?}", consumer.name()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_consumer_loses_nothing_while_the_stream_is_trimmed() {
    let sys = System::start().await;
    let env = [("STREAM_MAX_LEN", "50"), ("BATCH_SIZE", "20")];
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &env).await;

    assert_eq!(p.api.load(40, 4).await, 40);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // consumer1 is away while far more rides than STREAM_MAX_LEN go through.
    let status = p.consumers[1].terminate().await;
    assert!(status.success(), "SIGTERM should exit 0, got {status:?}");
    assert_eq!(p.api.load(300, 8).await, 300);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;
    let held = sys.stream_len(&stream(0)).await;
    assert!(
        held >= 300,
        "entries consumer1 needs were trimmed: {held} left"
    );

    // Back, it catches up exactly; then trimming brings the stream back under the bound.
    p.consumers[1].start_ready().await;
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(p.api.load(30, 2).await, 30);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    sys.wait_stream_within(50, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_consumer_stays_serving() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    assert_eq!(p.api.load(1, 1).await, 1);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    // Nothing arrives for several XREAD blocks: health checks must not queue behind the
    // blocked read and report Redis as down. Sampled over 6 s on purpose: the property is
    // that no sample in that span is anything but SERVING.
    for _ in 0..30 {
        let status = p.consumers[0].health().await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
