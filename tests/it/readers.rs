//! The fault-by-reader matrix: every kind of reader (checkpointed consumers and the history's
//! consumer group together) under each fault ends exact after the documented repair, or halts
//! loudly (NOT_SERVING, a gauge) until it. Never SERVING and wrong.

use rocket_rides_tests::{
    History, Kind, Pipeline, Service, ServingStatus, System, stream, wait_until,
};

use crate::CAUGHT_UP;

fn history_env() -> Vec<(&'static str, &'static str)> {
    vec![("CLAIM_IDLE", "2"), ("BATCH_SIZE", "20")]
}

async fn wait_history_exact(sys: &System) {
    sys.wait_history_exact(CAUGHT_UP).await;
}

/// Waits until `service` says by `metric` that it halted, and is NOT_SERVING.
async fn halted<K: Kind>(service: &Service<K>, metric: &str, labels: &[(&str, &str)]) {
    service.wait_halted(metric, labels).await;
    service.wait_until_status(ServingStatus::NotServing).await;
}

async fn history_halted(member: &History) {
    halted(member, "history_halted", &[("partition", "0")]).await;
}

/// The group's durable position in partition 0.
async fn group_position(sys: &System) -> i64 {
    sqlx::query_scalar(
        "SELECT last_seq FROM consumer_positions
         WHERE name = 'history' AND kind = 'group' AND partition = 0",
    )
    .fetch_one(&sys.db)
    .await
    .unwrap()
}

/// A checkpointed consumer and a history member, both exact after 100 rides.
async fn both_readers_caught_up(sys: &System) -> (Pipeline, History) {
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let mut member = sys.history("history-a", &history_env());
    member.start_ready().await;
    assert_eq!(p.api.load(100, 4).await, 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(sys).await;
    (p, member)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_wiped_while_the_readers_are_away_then_republished() {
    let mut sys = System::start().await;
    let (mut p, mut member) = both_readers_caught_up(&sys).await;

    // Both away while 30 rides pass, then Redis loses everything, then 20 more.
    member.terminate().await;
    p.consumers[0].terminate().await;
    assert_eq!(p.api.load(30, 4).await, 30);
    sys.redis.wipe().await;
    assert_eq!(p.api.load(20, 4).await, 20);
    member.start();
    p.consumers[0].start();
    history_halted(&member).await;
    halted(
        &p.consumers[0],
        "rocket_rides_consumer_gap",
        &[("consumer", "consumer0")],
    )
    .await;
    assert!(sys.history_exact().await.is_err());

    sys.repair_ok("republish");
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;
    member.wait_until_status(ServingStatus::Serving).await;
    assert_eq!(sys.committed().await.rides, 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restored_then_rewound_every_reader_ends_exact() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let mut member = sys.history("history-a", &history_env());
    member.start_ready().await;
    assert_eq!(p.api.load(100, 4).await, 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;
    let copy = sys.pg.snapshot().await;
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;

    // Back in time, with the history stopped meanwhile: its group in Redis has delivered
    // seqs Postgres no longer knows, and the same seqs go to 50 new rides.
    member.terminate().await;
    sys.pg.restore(&copy).await;
    assert_eq!(p.api.load(50, 4).await, 50);
    member.start();
    history_halted(&member).await;

    sys.repair_ok("rewind");
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;
    member.wait_until_status(ServingStatus::Serving).await;
    assert_eq!(sys.committed().await.rides, 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restored_under_a_running_group_then_rewound_before_new_rides() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let member = {
        let mut member = sys.history("history-a", &history_env());
        member.start_ready().await;
        member
    };
    assert_eq!(p.api.load(100, 4).await, 100);
    wait_history_exact(&sys).await;
    let copy = sys.pg.snapshot().await;
    assert_eq!(p.api.load(50, 4).await, 50);
    wait_history_exact(&sys).await;

    // Back in time under the running member: it goes back to its restored position and halts
    // on the first entry Postgres no longer has, holding it pending. `rewind` removes those
    // entries before any new ride takes their seqs: the group must not count them delivered.
    sys.pg.restore(&copy).await;
    history_halted(&member).await;
    sys.repair_ok("rewind");
    assert_eq!(p.api.load(50, 4).await, 50);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;
    member.wait_until_status(ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_away_holds_the_stream_and_halts_at_a_hole_instead_of_skipping_it() {
    let sys = System::start().await;
    let env = [("STREAM_MAX_LEN", "20")];
    let p = sys.pipeline(&["consumer0"], &env).await;
    let mut member = sys.history("history-a", &history_env());
    member.start_ready().await;
    assert_eq!(p.api.load(30, 2).await, 30);
    wait_history_exact(&sys).await;

    // Shut down cleanly, the group still holds the stream: nothing it needs is trimmed.
    member.terminate().await;
    let position = group_position(&sys).await;
    assert_eq!(position, 30);
    assert_eq!(p.api.load(60, 2).await, 60);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    let mut redis = sys.redis.connection().await;
    let first = rocket_rides_log::stream::read_first(&mut redis, &stream(0))
        .await
        .unwrap();
    assert_eq!(first, Some(31), "the stream was trimmed past the group");
    member.start_ready().await;
    wait_history_exact(&sys).await;

    // Away again, and this time what it needs next is gone from the stream and the archive
    // (as after CONSUMER_EXPIRY and LOG_RETENTION): it halts there and never moves over it.
    member.terminate().await;
    let position = group_position(&sys).await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    sqlx::query("DELETE FROM log_records WHERE partition = 0 AND seq = $1")
        .bind(position + 1)
        .execute(&sys.db)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg(stream(0))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();
    member.start();
    history_halted(&member).await;
    assert!(
        member
            .log()
            .contains(&format!("record {} is in neither", position + 1)),
        "{}",
        member.log_tail(20)
    );
    assert_eq!(group_position(&sys).await, position);
    assert!(member.is_running(), "a hole must not crash-loop the member");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_stream_name_halts_every_reader_and_creates_nothing() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    assert_eq!(p.api.load(5, 1).await, 5);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    let mut env = history_env();
    env.push(("STREAM_NAME", "rocket-rides-lgo"));
    let mut member = sys.history("history-a", &env);
    member.start();
    history_halted(&member).await;
    assert!(
        member
            .log()
            .contains("STREAM_NAME=\\\"rocket-rides-log\\\"")
            || member.log().contains("STREAM_NAME=\"rocket-rides-log\""),
        "{}",
        member.log_tail(20)
    );
    let mut redis = sys.redis.connection().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("rocket-rides-lgo:{0}")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a stream was created under the wrong name");

    // The same for a partition count the log does not have.
    let mut env = history_env();
    env.push(("LOG_PARTITIONS", "3"));
    let mut member = sys.history("history-b", &env);
    member.start();
    member.wait_until_status(ServingStatus::NotServing).await;
    assert!(
        member.log().contains("LOG_PARTITIONS does not match"),
        "{}",
        member.log_tail(20)
    );

    let mut consumer = sys.consumer("consumer1", &[("STREAM_NAME", "rocket-rides-lgo")]);
    consumer.start();
    halted(
        &consumer,
        "rocket_rides_consumer_gap",
        &[("consumer", "consumer1")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_killed_between_its_commit_and_its_ack_loses_and_doubles_nothing() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&[], &[]).await;
    let mut member = sys.history("history-a", &history_env());
    member.start_ready().await;
    assert_eq!(p.api.load(10, 2).await, 10);
    wait_history_exact(&sys).await;

    // The projection waits on a lock while the member holds the next rides delivered...
    let mut lock = sys.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE ride_history IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(p.api.load(10, 2).await, 10);
    let redis = sys.redis.connection().await;
    let held = wait_until("the member to hold delivered entries", CAUGHT_UP, || {
        let mut redis = redis.clone();
        async move {
            let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(stream(0))
                .arg("history")
                .arg("-")
                .arg("+")
                .arg(100)
                .arg("history-a")
                .query_async(&mut redis)
                .await
                .map_err(|e| e.to_string())?;
            match reply.ids.len() {
                0 => Err("nothing pending".to_string()),
                n => Ok(n as i64),
            }
        }
    })
    .await;
    // ...then Redis dies (its AOF keeps the pending list), the projection commits, and the
    // XACK that follows cannot get through: the member is killed right there.
    sys.redis.kill().await;
    lock.commit().await.unwrap();
    wait_until("the projection to commit", CAUGHT_UP, || async {
        match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ride_history")
            .fetch_one(&sys.db)
            .await
        {
            Ok(n) if n == 10 + held => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    member.kill().await;
    sys.redis.restart().await;
    let mut redis = sys.redis.connection().await;
    let unacked: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream(0))
        .arg("history")
        .arg("-")
        .arg("+")
        .arg(100)
        .arg("history-a")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        unacked.ids.len() as i64,
        held,
        "committed, never acknowledged"
    );

    // Another member claims the entries, projects them again (changing nothing) and
    // acknowledges them; the group's position passes them.
    let mut other = sys.history("history-b", &history_env());
    other.start_ready().await;
    assert_eq!(p.api.load(5, 1).await, 5);
    wait_history_exact(&sys).await;
    wait_until(
        "the group to be done with every entry",
        CAUGHT_UP,
        || async {
            let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(stream(0))
                .arg("history")
                .query_async(&mut redis.clone())
                .await
                .map_err(|e| e.to_string())?;
            match (pending.count(), group_position(&sys).await) {
                (0, 25) => Ok(()),
                other => Err(format!("(pending, position) = {other:?}")),
            }
        },
    )
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ride_history")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(rows, 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_lost_on_a_cluster_while_the_readers_are_away_then_republished() {
    let sys = System::start_on_cluster().await;
    let (mut p, mut member) = both_readers_caught_up(&sys).await;

    // Both away while 30 rides pass; then the master holding the stream loses it (with the
    // group), and 20 more rides come while no streamer runs.
    member.terminate().await;
    p.consumers[0].terminate().await;
    assert_eq!(p.api.load(30, 4).await, 30);
    wait_until("the 30 rides to be streamed", CAUGHT_UP, || async {
        match sys.staged().await {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    p.streamer.terminate().await;
    let mut redis = sys.cluster.as_ref().unwrap().connection().await;
    let _: i64 = redis::cmd("DEL")
        .arg(stream(0))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(p.api.load(20, 4).await, 20);
    member.start();
    p.consumers[0].start();
    history_halted(&member).await;
    halted(
        &p.consumers[0],
        "rocket_rides_consumer_gap",
        &[("consumer", "consumer0")],
    )
    .await;
    p.streamer.start_ready().await;

    sys.repair_ok("republish");
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_history_exact(&sys).await;
    member.wait_until_status(ServingStatus::Serving).await;
}
