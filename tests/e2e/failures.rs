//! Real failures: processes killed with SIGKILL, Redis and Postgres going down, two streamers,
//! lost stream entries and malformed ones. Totals stay exact or the system says why not.

use std::time::Duration;

use rocket_rides_tests::{
    Bin, System,
    process::Process,
    system::{self, load, load_at, total},
    wait_until,
};
use tonic_health::pb::health_check_response::ServingStatus;

const CAUGHT_UP: Duration = Duration::from_secs(120);

/// Waits until `consumer` has counted at least `more` rides beyond `from`.
async fn progressed(consumer: &Process, from: i64, more: i64) -> i64 {
    wait_until("the consumer to make progress", CAUGHT_UP, || async {
        let now = total(consumer).await.ride_count;
        if now >= from + more {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_streamer_and_consumer_mid_batch_loses_nothing() {
    let sys = System::start().await;
    let env = [("BATCH_SIZE", "25")];
    let (api, mut streamer, mut consumers) = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    let api_addr = system::addr_of(&api);
    let load_task = tokio::spawn(load_at(api_addr, 3000, 16));
    let mut seen = 0;
    for round in 0..3 {
        seen = progressed(&consumers[0], seen, 100).await;
        streamer.kill().await;
        sys.start_ready(&mut streamer).await;
        let victim = &mut consumers[round % 2];
        victim.kill().await;
        sys.start_ready(victim).await;
    }
    assert_eq!(load_task.await.unwrap(), 3000);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_and_restarted_on_its_data_loses_nothing() {
    let mut sys = System::start().await;
    let (api, _streamer, consumers) = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    let api_addr = system::addr_of(&api);
    let load_task = tokio::spawn(load_at(api_addr, 2000, 8));
    let seen = progressed(&consumers[0], 0, 200).await;
    sys.redis.kill().await;
    sys.redis.restart().await;
    progressed(&consumers[0], seen, 200).await;
    sys.redis.kill().await;
    sys.redis.restart().await;
    assert_eq!(load_task.await.unwrap(), 2000);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_is_unavailable_then_recovers_without_restarts() {
    let mut sys = System::start().await;
    let (api, _streamer, consumers) = sys.pipeline(&["consumer0"], &[]).await;
    let mut client = system::rides(&api).await;
    system::create(&mut client, 10.0).await.unwrap();

    sys.pg.stop_immediate().await;
    let status = system::create(&mut client, 11.0).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    wait_until(
        "the api to report NOT_SERVING",
        Duration::from_secs(30),
        || async {
            match system::health(&api).await {
                Ok(ServingStatus::NotServing) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    sys.pg.restart().await;
    wait_until(
        "CreateRide to succeed again",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            async move { system::create(&mut client, 12.0).await }
        },
    )
    .await;
    system::wait_serving(&api).await;
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    let (sum, count) = sys.committed().await;
    assert_eq!(
        (sum, count),
        (22.0, 2),
        "the failed call must have written nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_streamers_one_leader_and_the_standby_takes_over() {
    let sys = System::start().await;
    let (api, mut first, consumers) = sys.pipeline(&["consumer0"], &[]).await;
    let mut second = sys.service(Bin::Streamer, "streamer2", &[]);
    sys.start_ready(&mut second).await;
    wait_until(
        "the second streamer to stand by",
        Duration::from_secs(30),
        || async {
            if second.log().contains("standing by") {
                Ok(())
            } else {
                Err(second.log_tail(3))
            }
        },
    )
    .await;
    assert!(first.log().contains("leading"));

    assert_eq!(load(&api, 300, 8).await, 300);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    first.kill().await;
    assert_eq!(load(&api, 300, 8).await, 300);
    wait_until("the standby to lead", Duration::from_secs(30), || async {
        if second.log().contains("leading") {
            Ok(())
        } else {
            Err(second.log_tail(3))
        }
    })
    .await;
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_in_the_log_stops_the_consumer_loudly() {
    let sys = System::start().await;
    let (api, _streamer, mut consumers) = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    assert_eq!(load(&api, 50, 4).await, 50);
    sys.wait_exact(&[&consumers[0], &consumers[1]], CAUGHT_UP)
        .await;

    // consumer1 is away when the stream loses entries it has not read (as if Redis lost data).
    consumers[1]
        .stop(libc::SIGTERM, Duration::from_secs(15))
        .await;
    assert_eq!(load(&api, 20, 2).await, 20);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    let mut redis = sys.redis.connection().await;
    let newest = sys.newest_ids(5).await;
    let keep_from = newest.last().unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg("rocket-rides-log")
        .arg("MINID")
        .arg(keep_from)
        .query_async(&mut redis)
        .await
        .unwrap();

    consumers[1].start();
    wait_until(
        "consumer1 to report the gap",
        Duration::from_secs(30),
        || async {
            if consumers[1].log().contains("gap in the log") {
                Ok(())
            } else {
                Err(consumers[1].log_tail(3))
            }
        },
    )
    .await;
    wait_until(
        "consumer1 to report NOT_SERVING",
        Duration::from_secs(10),
        || async {
            match system::health(&consumers[1]).await {
                Ok(ServingStatus::NotServing) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // It stopped where the log was still whole: nothing skipped, nothing invented.
    let stuck = total(&consumers[1]).await;
    assert_eq!(stuck.ride_count, 50);
    assert!(
        consumers[1].is_running(),
        "a gap must not crash-loop the consumer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_entry_goes_to_the_dead_letter_stream() {
    let sys = System::start().await;
    let (api, _streamer, consumers) = sys.pipeline(&["consumer0"], &[]).await;
    assert_eq!(load(&api, 10, 2).await, 10);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    let mut redis = sys.redis.connection().await;
    let _: String = redis::cmd("XADD")
        .arg("rocket-rides-log")
        .arg("*")
        .arg("distance")
        .arg("lots")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(load(&api, 10, 2).await, 10);
    sys.wait_exact(&[&consumers[0]], CAUGHT_UP).await;
    let dead = sys.stream_len("rocket-rides-log:dead-letter").await;
    assert_eq!(dead, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_service_with_exit_code_zero() {
    let sys = System::start().await;
    let (api, streamer, consumers) = sys.pipeline(&["consumer0"], &[]).await;
    let mut simulator = sys.service(
        Bin::Simulator,
        "simulator",
        &[
            ("API_URL", &system::addr_of(&api)),
            ("RIDES_PER_SECOND", "50"),
        ],
    );
    sys.start_ready(&mut simulator).await;
    progressed(&consumers[0], 0, 20).await;
    for mut process in [simulator, api, streamer].into_iter().chain(consumers) {
        let status = process.stop(libc::SIGTERM, Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "{} exited with {status:?}",
            process.name()
        );
    }
}
