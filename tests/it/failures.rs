//! Real failures: processes killed with SIGKILL, Redis and Postgres going down, two streamers,
//! lost stream entries and malformed ones. Totals stay exact or the system says why not.

use std::time::Duration;

use rocket_rides_log::{StreamId, stream::dead_letter_stream};
use rocket_rides_tests::{
    Committed, ServingStatus, System, redis_server::RedisServer, stream, wait_until,
};

use crate::CAUGHT_UP;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_streamer_and_consumer_mid_batch_loses_nothing() {
    let sys = System::start().await;
    let env = [("BATCH_SIZE", "25")];
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    let load = tokio::spawn(p.api.load(3000, 16));
    let mut seen = 0;
    for round in 0..3 {
        seen = p.consumers[0].wait_counted(seen + 100).await;
        p.streamer.kill().await;
        p.streamer.start_ready().await;
        let victim = &mut p.consumers[round % 2];
        victim.kill().await;
        victim.start_ready().await;
    }
    assert_eq!(load.await.unwrap(), 3000);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_and_restarted_on_its_data_loses_nothing() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    let load = tokio::spawn(p.api.load(2000, 8));
    let seen = p.consumers[0].wait_counted(200).await;
    sys.redis.kill().await;
    sys.redis.restart().await;
    p.consumers[0].wait_counted(seen + 200).await;
    sys.redis.kill().await;
    sys.redis.restart().await;
    assert_eq!(load.await.unwrap(), 2000);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_is_unavailable_then_recovers_without_restarts() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    p.api.create(10.0).await.unwrap();

    sys.pg.stop_immediate().await;
    let status = p.api.create(11.0).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    p.api.wait_until_status(ServingStatus::NotServing).await;

    sys.pg.restart().await;
    wait_until(
        "CreateRide to succeed again",
        Duration::from_secs(60),
        || p.api.create(12.0),
    )
    .await;
    p.api.wait_until_status(ServingStatus::Serving).await;
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(
        sys.committed().await,
        Committed {
            distance: 22.0,
            rides: 2
        },
        "the failed call must have written nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_streamers_one_leader_and_the_standby_takes_over() {
    let sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0"], &[]).await;
    p.streamer.wait_until_leading().await;
    // The standby is SERVING (it can take over at any time) but does not lead.
    let mut standby = sys.streamer("streamer2", &[]);
    standby.start_ready().await;

    assert_eq!(p.api.load(300, 8).await, 300);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(p.streamer.is_leading().await, Ok(true));
    assert_eq!(standby.is_leading().await, Ok(false));

    p.streamer.kill().await;
    assert_eq!(p.api.load(300, 8).await, 300);
    standby.wait_until_leading().await;
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_lost_from_the_stream_come_from_the_archive_and_a_record_in_neither_stops_the_consumer()
 {
    let sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // consumer1 is away when the stream loses entries it has not read: it reads them from
    // the archive and ends exact.
    p.consumers[1].terminate().await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;
    let mut redis = sys.redis.connection().await;
    let trim = |keep_from: StreamId| {
        redis::cmd("XTRIM")
            .arg(stream(0))
            .arg("MINID")
            .arg(keep_from)
            .to_owned()
    };
    let keep_from = *sys.newest_ids(5).await.last().unwrap();
    let _: u64 = trim(keep_from).query_async(&mut redis).await.unwrap();
    p.consumers[1].start_ready().await;
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Away again, and this time the record it needs next is gone from the archive too (as
    // after LOG_RETENTION): it stops there, loudly, rather than skip it.
    p.consumers[1].terminate().await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;
    sqlx::query("DELETE FROM log_records WHERE seq = 71")
        .execute(&sys.db)
        .await
        .unwrap();
    let keep_from = *sys.newest_ids(5).await.last().unwrap();
    let _: u64 = trim(keep_from).query_async(&mut redis).await.unwrap();
    let stopped = &mut p.consumers[1];
    stopped.start();
    stopped.wait_until_status(ServingStatus::NotServing).await;
    stopped
        .wait_metrics("consumer1's gap gauge to be 1", |m| {
            match m.get("rocket_rides_consumer_gap", &[("consumer", "consumer1")]) {
                Some(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    // It stopped where the log was still whole: nothing skipped, nothing invented.
    assert_eq!(stopped.total().await.ride_count, 70);
    assert!(
        stopped.is_running(),
        "a gap must not crash-loop the consumer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_entry_is_set_aside_and_its_archived_record_applied() {
    let sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0"], &[]).await;
    assert_eq!(p.api.load(10, 2).await, 10);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // Something else writes an unreadable entry where record 11 belongs.
    p.streamer.terminate().await;
    assert_eq!(p.api.load(5, 1).await, 5);
    let mut redis = sys.redis.connection().await;
    let _: String = redis::cmd("XADD")
        .arg(stream(0))
        .arg(StreamId::of_seq(11))
        .arg("distance")
        .arg("lots")
        .query_async(&mut redis)
        .await
        .unwrap();
    p.streamer.start();
    // The consumer sets the entry aside and applies the archived record 11 instead; the
    // streamer refuses to stream on past an entry that is not its record.
    p.consumers[0].wait_counted(11).await;
    let dead = sys.stream_len(&dead_letter_stream(&stream(0))).await;
    assert_eq!(dead, 1);
    p.streamer
        .wait_until_status(ServingStatus::NotServing)
        .await;

    let out = sys.repair("rewind");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_service_with_exit_code_zero() {
    let sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0"], &[]).await;
    let mut history = sys.history("history-a", &[]);
    history.start_ready().await;
    let mut simulator = sys.simulator(&p.api, &[("RIDES_PER_SECOND", "50")]);
    simulator.start_ready().await;
    p.consumers[0].wait_counted(20).await;

    // Under load: it finishes the batch Redis delivered and leaves the group with nothing
    // pending.
    let status = history.terminate().await;
    assert!(status.success(), "history exited with {status:?}");
    let members: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(rocket_rides_tests::stream(0))
        .arg("history")
        .query_async(&mut sys.redis.connection().await)
        .await
        .unwrap();
    assert!(
        members.is_empty(),
        "history-a is still a member: {members:?}"
    );

    let status = simulator.terminate().await;
    assert!(status.success(), "simulator exited with {status:?}");
    let status = p.api.terminate().await;
    assert!(status.success(), "api exited with {status:?}");
    let status = p.streamer.terminate().await;
    assert!(status.success(), "streamer exited with {status:?}");
    for consumer in &mut p.consumers {
        let status = consumer.terminate().await;
        assert!(
            status.success(),
            "{} exited with {status:?}",
            consumer.name()
        );
    }
}

/// `field` of `INFO <section>` of the Redis at `url`.
async fn redis_info(url: &str, section: &str, field: &str) -> Result<String, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("no {field} in INFO {section}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_adopted_after_a_restart_count_as_streamed_only_once_a_replica_holds_them() {
    let sys = System::start().await;
    let port = sys.redis.port.to_string();
    let replica =
        RedisServer::start_with(sys.dir(), "replica", &["--replicaof", "127.0.0.1", &port]).await;
    wait_until("the replica to be in sync", CAUGHT_UP, || async {
        match redis_info(&replica.url(), "replication", "master_link_status")
            .await?
            .as_str()
        {
            "up" => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let env = [("REDIS_WAIT_REPLICAS", "1"), ("PROGRESS_TIMEOUT", "2s")];
    let mut p = sys.pipeline(&["consumer0"], &env).await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // The replica freezes, its link open: the master still counts it as connected.
    let replica_pid: u32 = redis_info(&replica.url(), "server", "process_id")
        .await
        .unwrap()
        .parse()
        .unwrap();
    rocket_rides_tests::signal(replica_pid, libc::SIGSTOP);
    // Meanwhile 30 rides reach the master (a streamer that waits for no replica), and the
    // streamer dies before recording them as streamed: Postgres knows Redis holds up to 20.
    p.streamer.terminate().await;
    p.streamer.set_env("REDIS_WAIT_REPLICAS", "0");
    p.streamer.start_ready().await;
    assert_eq!(p.api.load(30, 2).await, 30);
    wait_until("the master to hold seq 50", CAUGHT_UP, || async {
        match sys.newest_ids(1).await.first() {
            Some(id) if *id == StreamId::of_seq(50) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    p.streamer.terminate().await;
    sqlx::query("UPDATE log_partitions SET streamed_seq = 20")
        .execute(&sys.db)
        .await
        .unwrap();

    // Restarted, the streamer finds 21..50 in the stream. No replica has them: it does not
    // count them as streamed, and says why.
    p.streamer.set_env("REDIS_WAIT_REPLICAS", "1");
    p.streamer.start();
    p.streamer
        .wait_metrics(
            "the streamer to find no replica holding the entries",
            |m| match m.get(
                "rocket_rides_streamer_errors_total",
                &[("kind", "not_replicated"), ("partition", "0")],
            ) {
                Some(n) if n > 0.0 => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    p.streamer
        .wait_until_status(ServingStatus::NotServing)
        .await;
    let streamed: i64 = sqlx::query_scalar("SELECT streamed_seq FROM log_partitions")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(
        streamed, 20,
        "entries no replica holds were counted as streamed"
    );

    // The replica wakes up and catches up: now they count.
    rocket_rides_tests::signal(replica_pid, libc::SIGCONT);
    wait_until(
        "the adopted entries to count as streamed",
        CAUGHT_UP,
        || async {
            match sqlx::query_scalar::<_, i64>("SELECT streamed_seq FROM log_partitions")
                .fetch_one(&sys.db)
                .await
            {
                Ok(50) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
    assert_eq!(p.api.load(10, 2).await, 10);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
}
