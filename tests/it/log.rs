//! The log is never silently wrong, and it can be repaired: Postgres going back in time, Redis
//! losing its data, a frozen leader, a transaction left open elsewhere, a consumer added late.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use rocket_rides_tests::{ServingStatus, System, stream, wait_until};
use sqlx::Connection;

use crate::CAUGHT_UP;

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restored_from_an_earlier_copy_stops_the_log_until_rewound() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    assert_eq!(p.api.load(100, 4).await, 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    let copy = sys.pg.snapshot().await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Back in time: the stream holds seqs 101..150 for rides Postgres no longer has, and the
    // same seqs are given again to new rides.
    sys.pg.restore(&copy).await;
    assert_eq!(p.api.load(50, 4).await, 50);
    for consumer in &p.consumers {
        let labels = [("consumer", consumer.name())];
        consumer
            .wait_halted("rocket_rides_consumer_gap", &labels)
            .await;
        consumer.wait_until_status(ServingStatus::NotServing).await;
        // Stopped at its restored checkpoint: nothing of the old or the new seqs applied.
        assert_eq!(
            consumer.total().await.ride_count,
            100,
            "{}",
            consumer.name()
        );
    }
    p.streamer
        .wait_halted("rocket_rides_streamer_halted", &[])
        .await;
    p.streamer
        .wait_until_status(ServingStatus::NotServing)
        .await;

    sys.repair_ok("rewind");
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(sys.committed().await.rides, 150);
    for consumer in &p.consumers {
        consumer.wait_until_status(ServingStatus::Serving).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_left_open_in_another_database_delays_no_ride() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    // One INSERT in another database, then idle in the transaction: it holds an xid.
    let mut admin = sqlx::PgConnection::connect(&sys.pg.url_for("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE elsewhere")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut idle = sqlx::PgConnection::connect(&sys.pg.url_for("elsewhere"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut idle)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (1)")
        .execute(&mut idle)
        .await
        .unwrap();

    assert_eq!(p.api.load(50, 4).await, 50);
    // Counted within seconds, not when that transaction ends (it is still open).
    sys.wait_exact(&p.consumers, Duration::from_secs(5)).await;
    sqlx::query("ROLLBACK").execute(&mut idle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_leader_is_replaced_and_fenced() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    let mut standby = sys.streamer("standby", &[]);
    standby.start_ready().await;
    p.streamer.wait_until_leading().await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Frozen, its connections still open (as a hung process or a partition leaves them).
    p.streamer.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let load = tokio::spawn(p.api.load(100, 4));
    standby.wait_until_leading().await;
    let took = frozen_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the standby took over after {took:?}"
    );
    assert_eq!(load.await.unwrap(), 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Woken up, the old leader finds itself fenced: nothing it writes is applied.
    p.streamer.signal(libc::SIGCONT);
    p.streamer
        .wait_metrics("the old leader to know it no longer leads", |m| {
            match m.get("rocket_rides_streamer_leader", &[]) {
                Some(0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(sys.committed().await.rides, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_wiped_stops_the_consumers_until_republished() {
    let mut sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    assert_eq!(p.api.load(100, 4).await, 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    // consumer1 is away while 30 more rides pass: it still needs them from the stream.
    p.consumers[1].terminate().await;
    assert_eq!(p.api.load(30, 4).await, 30);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;

    sys.redis.wipe().await;
    assert_eq!(p.api.load(20, 4).await, 20);
    p.consumers[1].start();
    for consumer in &p.consumers {
        let labels = [("consumer", consumer.name())];
        consumer
            .wait_halted("rocket_rides_consumer_gap", &labels)
            .await;
        consumer.wait_until_status(ServingStatus::NotServing).await;
    }
    assert_eq!(p.consumers[1].total().await.ride_count, 100);

    sys.repair_ok("republish");
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(sys.committed().await.rides, 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_added_late_catches_up_from_the_archive_and_never_pins_the_stream() {
    const MAX_LEN: usize = 50;
    const BATCH: usize = 20;
    let sys = System::start().await;
    let env = [("STREAM_MAX_LEN", "50"), ("BATCH_SIZE", "20")];
    let p = sys.pipeline(&["consumer0"], &env).await;
    assert_eq!(p.api.load(3 * MAX_LEN, 4).await, 3 * MAX_LEN);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    let mut late = sys.consumer("late", &env);
    late.start_ready().await;
    let load = tokio::spawn(p.api.load(100, 2));
    // Throughout its catch-up and the new load, the stream stays within its bound (a trim
    // follows each batch that takes it past STREAM_MAX_LEN).
    let longest = AtomicUsize::new(0);
    wait_until("the late consumer to catch up", CAUGHT_UP, || async {
        longest.fetch_max(sys.stream_len(&stream(0)).await, Ordering::Relaxed);
        match late.try_total().await {
            Ok(total) if total.ride_count == sys.committed().await.rides && load.is_finished() => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let longest = longest.into_inner();
    assert!(
        longest <= MAX_LEN + BATCH,
        "the stream reached {longest} entries"
    );
    sys.wait_exact([&p.consumers[0], &late], CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_backlog_is_numbered_by_the_plan_of_a_warm_one() {
    let sys = System::start().await;
    // Statistics as in steady state (the staged records nearly gone), then a backlog piles up
    // while no streamer runs, and nobody runs ANALYZE.
    sqlx::raw_sql(
        "INSERT INTO rides (distance) VALUES (5);
         INSERT INTO log_records (ride_id, distance) SELECT id, distance FROM rides;
         ANALYZE log_records;
         INSERT INTO rides (distance) SELECT 1 + g % 100 FROM generate_series(1, 20000) g;
         INSERT INTO log_records (ride_id, distance)
             SELECT id, distance FROM rides WHERE id > 1 ORDER BY id;
         ALTER DATABASE rocketrides SET session_preload_libraries = 'auto_explain';
         ALTER DATABASE rocketrides SET auto_explain.log_min_duration = 0;
         ALTER DATABASE rocketrides SET auto_explain.log_nested_statements = on;",
    )
    .execute(&sys.db)
    .await
    .unwrap();
    let p = sys.pipeline(&["consumer0"], &[]).await;
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Every numbering statement the streamer ran found the picked rows by their address: no
    // plan that scans the backlog once per record (a join filter on the ids).
    let log = sys.pg.log_tail(usize::MAX);
    let numbering: Vec<&str> = log
        .split("plan:")
        .filter(|plan| plan.contains("Update on log_records"))
        .collect();
    assert!(!numbering.is_empty(), "no numbering plan was logged");
    for plan in numbering {
        assert!(
            plan.contains("picked.at") && !plan.contains("Join Filter"),
            "{plan}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_streamers_append_writes_nothing_unless_the_stream_ends_where_expected() {
    use rocket_rides_log::{LogRecord, StreamId, stream::append_after};
    let sys = System::start().await;
    let mut redis = sys.redis.connection().await;
    let key = stream(0);
    let record = |seq| LogRecord {
        log: "l1".into(),
        partition: 0,
        epoch: 1,
        seq,
        ride_id: seq,
        distance: "1.5".into(),
        trace: Default::default(),
    };
    let top = |redis| async move {
        let mut redis = redis;
        rocket_rides_log::stream::last_id(&mut redis, &stream(0))
            .await
            .unwrap()
    };

    // A missing stream ends at 0.
    let appended = append_after(&mut redis, &key, 0, &[record(1), record(2)]).await;
    assert_eq!(appended.unwrap(), None);
    assert_eq!(top(redis.clone()).await, StreamId::of_seq(2));
    // Expecting an earlier end (a previous attempt's entries, or Redis lost some): nothing.
    let moved = append_after(&mut redis, &key, 1, &[record(2), record(3)]).await;
    assert_eq!(moved.unwrap(), Some(StreamId::of_seq(2)));
    assert_eq!(top(redis.clone()).await, StreamId::of_seq(2));
    // An entry another program added after the log's own does not stop the log.
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("2-1")
        .arg("junk")
        .arg("1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        append_after(&mut redis, &key, 2, &[record(3)])
            .await
            .unwrap(),
        None
    );
    let read = rocket_rides_log::stream::read_range(&mut redis, &key, 3, 3)
        .await
        .unwrap();
    assert_eq!(read[0].record.as_ref().unwrap(), &record(3));
}
