//! The partitioned log: keys pick partitions, each partition numbered, streamed and consumed on
//! its own, and the totals exact over all of them.

use rocket_rides_proto::v1::CreateRideRequest;
use rocket_rides_tests::{ServingStatus, System};

use crate::CAUGHT_UP;

/// A fresh system whose log has `partitions` partitions.
async fn partitioned(partitions: u32) -> System {
    let sys = System::start().await;
    let migrated = sys.migrate(&[("LOG_PARTITIONS", &partitions.to_string())]);
    assert!(migrated.status.success(), "{migrated:?}");
    sys
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_exact_over_four_partitions_with_double_sends_and_crashes() {
    let sys = partitioned(4).await;
    let env = [("DOUBLE_SEND_RATE", "0.2"), ("CRASH_RATE", "0.2")];
    let p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    assert_eq!(p.api.load(1200, 16).await, 1200);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    let per_partition: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, count(*) FROM log_records GROUP BY partition ORDER BY partition",
    )
    .fetch_all(&sys.db)
    .await
    .unwrap();
    assert_eq!(per_partition.len(), 4, "{per_partition:?}");
    assert!(
        per_partition.iter().all(|(_, n)| *n > 100),
        "{per_partition:?}"
    );
    // GetTotal lists every partition, and each holds what the archive has for it.
    let total = p.consumers[0].total().await;
    let positions: Vec<(i32, i64)> = total
        .partitions
        .iter()
        .map(|p| (p.partition, p.ride_count))
        .collect();
    assert_eq!(positions, per_partition);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_riders_rides_stay_in_one_partition_in_creation_order() {
    let sys = partitioned(3).await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let riders: Vec<String> = (0..12).map(|r| format!("rider-{r}")).collect();
    // Each rider's rides one after another (each acknowledged before the next), all riders at
    // once: the order that must survive is each rider's own.
    let client = p.api.client().await;
    let calls = riders.iter().cloned().map(|rider| {
        let mut client = client.clone();
        tokio::spawn(async move {
            for n in 0..15 {
                let request = CreateRideRequest {
                    distance: Some(10.0 + n as f64),
                    rider_id: rider.clone(),
                    ..Default::default()
                };
                client.create_ride(request).await.unwrap();
            }
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // In the archive (what every consumer applies, in seq order per partition): one partition
    // per rider, and seqs rising with the rides' creation (their ids).
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT ride.rider_id, r.partition, r.seq FROM log_records r
         JOIN rides ride ON ride.id = r.ride_id ORDER BY ride.rider_id, ride.id",
    )
    .fetch_all(&sys.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 12 * 15);
    for rider in &riders {
        let mine: Vec<&(String, i32, i64)> = rows.iter().filter(|r| &r.0 == rider).collect();
        assert!(
            mine.iter().all(|r| r.1 == mine[0].1),
            "{rider} spans partitions: {mine:?}"
        );
        assert!(
            mine.windows(2).all(|w| w[0].2 < w[1].2),
            "{rider} out of order: {mine:?}"
        );
    }
    let used: std::collections::BTreeSet<i32> = rows.iter().map(|r| r.1).collect();
    assert!(
        used.len() > 1,
        "12 riders all in one of 3 partitions: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logs_partition_count_is_fixed_once_it_holds_records() {
    let sys = partitioned(2).await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    p.api.create(5.0).await.unwrap();
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    let refused = sys.migrate(&[("LOG_PARTITIONS", "4")]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stdout) + String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("fixed"), "{said}");
    assert!(sys.migrate(&[("LOG_PARTITIONS", "2")]).status.success());

    // A streamer told another count refuses to stream, and says so through its health.
    let mut streamer = sys.streamer("streamer-4", &[("LOG_PARTITIONS", "4")]);
    streamer.start();
    streamer.wait_until_status(ServingStatus::NotServing).await;
}
