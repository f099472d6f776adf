//! Operating the log beside its users: archive DDL that gives way to a long reader instead of
//! blocking CreateRide, and a `republish` that repairs every partition it can, waits for no
//! expired reader, and reports what it could not do.

use std::time::{Duration, Instant};

use rocket_rides_tests::{ServingStatus, Streamer, System, stream, wait_until};
use sqlx::{Connection, PgConnection};

use crate::CAUGHT_UP;

/// How long one CreateRide may take while archive DDL waits for its lock (it waits at most
/// `ARCHIVE_LOCK_TIMEOUT`, 200 ms, at a time).
const RIDE_BOUND: Duration = Duration::from_secs(3);

/// Times partition 0's leader gave archive DDL up for a lock held elsewhere.
async fn ddl_gave_way(streamer: &Streamer) -> Result<f64, String> {
    Ok(streamer
        .metrics()
        .await?
        .get(
            "rocket_rides_streamer_errors_total",
            &[("kind", "archive_lock_timeout"), ("partition", "0")],
        )
        .unwrap_or(0.0))
}

async fn table_exists(sys: &System, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&sys.db)
        .await
        .unwrap()
}

/// A transaction that has read `table` and stays open: it holds ACCESS SHARE on it (and on
/// its partitions) until it ends, as a `pg_dump` does.
async fn long_reader(sys: &System, table: &str) -> PgConnection {
    let mut reader = PgConnection::connect(&sys.pg.url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT count(*) FROM {table}"
    )))
    .execute(&mut reader)
    .await
    .unwrap();
    reader
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_ddl_gives_way_to_a_long_reader_and_never_blocks_create_ride() {
    let sys = System::start().await;
    // Archive partitions of 10 seqs (the log is empty: its first one goes), so the leader
    // creates one every few batches, and drops them one second after their records were
    // numbered.
    sqlx::raw_sql("DROP TABLE log_records_0_0; UPDATE log_head SET partition_size = 10")
        .execute(&sys.db)
        .await
        .unwrap();
    let env = [("BATCH_SIZE", "5"), ("LOG_RETENTION", "1s")];
    let mut p = sys.pipeline(&["consumer0"], &env).await;
    assert_eq!(p.api.load(40, 4).await, 40);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    wait_until(
        "the archive's partitions to reach seq 60",
        CAUGHT_UP,
        || async {
            match table_exists(&sys, "log_records_0_5").await {
                true => Ok(()),
                false => Err("not yet"),
            }
        },
    )
    .await;
    wait_until(
        "records 1..10 to be older than LOG_RETENTION",
        CAUGHT_UP,
        || async {
            let old: bool = sqlx::query_scalar(
                "SELECT max(numbered_at) < now() - interval '1 second' FROM log_records_0_0",
            )
            .fetch_one(&sys.db)
            .await
            .map_err(|e| e.to_string())?;
            if old {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;

    // A long reader of the whole log (as a pg_dump), and one of the oldest archive partition
    // only. A restarted leader prunes at once: dropping log_records_0_0 has to wait for both.
    p.streamer.terminate().await;
    let mut whole = long_reader(&sys, "log_records").await;
    let mut oldest = long_reader(&sys, "log_records_0_0").await;
    p.streamer.start_ready().await;

    // Rides go on while the leader's DDL (the drop, then creating log_records_0_6) gives way,
    // again and again: each CreateRide answers within a bound, never after the readers.
    let deadline = Instant::now() + CAUGHT_UP;
    let (mut rides, mut slowest) = (0, Duration::ZERO);
    while rides < 40 || ddl_gave_way(&p.streamer).await.unwrap_or(0.0) < 3.0 {
        assert!(Instant::now() < deadline, "the leader never tried its DDL");
        let started = Instant::now();
        tokio::time::timeout(RIDE_BOUND, p.api.create(10.0 + rides as f64))
            .await
            .expect("CreateRide waited behind archive DDL")
            .unwrap();
        slowest = slowest.max(started.elapsed());
        rides += 1;
    }
    assert!(slowest < RIDE_BOUND, "a ride took {slowest:?}");
    assert!(
        p.streamer
            .log_count("gave way to a lock held on the log's tables")
            > 0,
        "{}",
        p.streamer.log_tail(20)
    );
    assert!(table_exists(&sys, "log_records_0_0").await);
    assert!(!table_exists(&sys, "log_records_0_6").await);
    // Numbered only as far as the archive's partitions reach (60): the rest waits, staged.
    assert!(sys.staged().await > 0);
    let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM log_partitions")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert!(last_seq <= 60, "numbered up to {last_seq}");

    // The whole-log reader ends: the next partitions are created and everything streamed; the
    // drop still gives way to the other reader.
    sqlx::query("COMMIT").execute(&mut whole).await.unwrap();
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert!(table_exists(&sys, "log_records_0_6").await);
    assert!(table_exists(&sys, "log_records_0_0").await);

    // And once that one ends too, the pruned partition goes, without a restart.
    sqlx::query("COMMIT").execute(&mut oldest).await.unwrap();
    wait_until("log_records_0_0 to be dropped", CAUGHT_UP, || async {
        match table_exists(&sys, "log_records_0_0").await {
            false => Ok(()),
            true => Err("still there"),
        }
    })
    .await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
}

/// `name`'s position in `partition`.
async fn position(sys: &System, name: &str, partition: i32) -> i64 {
    sqlx::query_scalar("SELECT last_seq FROM consumer_positions WHERE name = $1 AND partition = $2")
        .bind(name)
        .bind(partition)
        .fetch_one(&sys.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn republish_repairs_every_partition_it_can_skips_expired_readers_and_reports_the_rest() {
    let mut sys = System::start().await;
    let migrated = sys.migrate(&[("LOG_PARTITIONS", "2")]);
    assert!(migrated.status.success(), "{migrated:?}");
    let mut p = sys
        .pipeline(&["consumer0", "consumer1", "consumer2"], &[])
        .await;
    assert_eq!(p.api.load(100, 4).await, 100);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    // consumer2 leaves first, consumer1 later; consumer0 stays.
    p.consumers[2].terminate().await;
    assert_eq!(p.api.load(60, 4).await, 60);
    sys.wait_exact(&p.consumers[..2], CAUGHT_UP).await;
    p.consumers[1].terminate().await;
    assert_eq!(p.api.load(60, 4).await, 60);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;

    // consumer2 has been silent past CONSUMER_EXPIRY (a day by default).
    sqlx::query(
        "UPDATE consumer_positions SET updated_at = now() - interval '2 days' WHERE name = 'consumer2'",
    )
    .execute(&sys.db)
    .await
    .unwrap();
    // Pruned from the archive: in partition 0, three records consumer1 still needs; in
    // partition 1, only records the expired consumer2 needs.
    let (c1_p0, c1_p1) = (
        position(&sys, "consumer1", 0).await,
        position(&sys, "consumer1", 1).await,
    );
    let c2_p1 = position(&sys, "consumer2", 1).await;
    assert!(c2_p1 < c1_p1, "consumer2 {c2_p1}, consumer1 {c1_p1}");
    sqlx::query(
        "DELETE FROM log_records WHERE (partition = 0 AND seq <= $1) OR (partition = 1 AND seq <= $2)",
    )
    .bind(c1_p0 + 3)
    .bind(c1_p1)
    .execute(&sys.db)
    .await
    .unwrap();

    sys.redis.wipe().await;
    let out = sys.repair("republish");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "republish could not repair partition 0 yet exited 0: {stdout}{stderr}"
    );
    // Named, with why and what to do; partition 1 repaired.
    for expected in [
        "1 of 2 partitions could not be repaired",
        &format!("partition 0: records {}..={}", c1_p0 + 1, c1_p0 + 3),
        &format!("consumer1 (at {c1_p0})"),
        "reset",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in: {stderr}");
    }
    assert!(!stderr.contains("partition 1:"), "{stderr}");
    assert!(!stderr.contains("consumer2 (at"), "{stderr}");

    // Both partitions stream again and consumer0 (which needed nothing lost) ends exact; the
    // stream was written from consumer1's position on, not from the expired consumer2's.
    assert_eq!(p.api.load(20, 4).await, 20);
    sys.wait_exact(&p.consumers[..1], CAUGHT_UP).await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
    let mut redis = sys.redis.connection().await;
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream(1))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(first[0].0, format!("{}-0", c1_p1 + 1));
    // consumer1 comes back to a hole in partition 0: it halts there, it does not skip it.
    p.consumers[1].start();
    p.consumers[1]
        .wait_until_status(ServingStatus::NotServing)
        .await;
}
