//! `rocket-rides-log dead-letters` on a running system: letters written by the history group
//! itself are listed with their reasons, a ride's letter is redriven into the group once (the
//! read model ends exact, a re-run changes nothing), a letter that holds no record is skipped and
//! then dropped, and the streamer's gauge follows; on a Redis Cluster.

use std::process::Output;

use rocket_rides_tests::{History, System, stream, wait_until};
use serde_json::Value;

use crate::CAUGHT_UP;

fn run(sys: &System, args: &[&str]) -> (Output, Value) {
    let out = sys.log_tool(args).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, doc)
}

/// `dead-letters ARGS --json`, which must succeed.
fn dead_letters(sys: &System, args: &[&str]) -> Value {
    let mut all = vec!["--json", "dead-letters"];
    all.extend(args);
    let (out, doc) = run(sys, &all);
    assert!(out.status.success(), "{all:?}: {out:?}");
    doc
}

fn letters(doc: &Value) -> &Vec<Value> {
    doc["dead_letters"].as_array().unwrap()
}

/// The outcome per letter id of a redrive or drop.
fn outcomes(doc: &Value) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = letters(doc)
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_string(),
                o["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

async fn start_member(sys: &System) -> History {
    let env = [
        ("CLAIM_IDLE", "1"),
        ("MAX_DELIVERIES", "3"),
        ("BATCH_SIZE", "20"),
    ];
    let mut member = sys.history("history-a", &env);
    member.start_ready().await;
    member
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_redriven_once_and_dropped() {
    // On a Redis Cluster: the redrive script touches the partition's stream and its dead-letter
    // stream, which share a slot.
    let sys = System::start_on_cluster().await;
    let p = sys.pipeline(&[], &[]).await;
    let mut member = start_member(&sys).await;
    assert_eq!(p.api.load(5, 2).await, 5);
    sys.wait_history_exact(CAUGHT_UP).await;
    member.terminate().await;

    // A ride the history cannot project while its row disagrees with the record (a cause an
    // operator fixes), streamed while no member runs; then an entry that is no log record.
    let ride = p.api.create(12.5).await.unwrap().ride_id;
    let (partition, seq) = wait_until("the ride to be streamed", CAUGHT_UP, || async {
        let row: Option<(i32, i64, i64)> = sqlx::query_as(
            "SELECT r.partition, r.seq, p.streamed_seq FROM log_records r
             JOIN log_partitions p USING (partition) WHERE r.ride_id = $1 AND r.seq IS NOT NULL",
        )
        .bind(ride)
        .fetch_optional(&sys.db)
        .await
        .map_err(|e| e.to_string())?;
        match row {
            Some((partition, seq, streamed)) if streamed >= seq => Ok((partition, seq)),
            other => Err(format!("not yet streamed: {other:?}")),
        }
    })
    .await;
    sqlx::query("UPDATE rides SET distance = distance + 1 WHERE id = $1")
        .bind(ride)
        .execute(&sys.db)
        .await
        .unwrap();
    let mut redis = sys.cluster.as_ref().unwrap().connection().await;
    let poison = rocket_rides_tests::add_poison(&mut redis, &stream(partition)).await;
    let _member = start_member(&sys).await;

    // list: both letters, with their readers, reasons, deliveries and original entries.
    let listed = wait_until("two dead letters", CAUGHT_UP, || async {
        let doc = dead_letters(&sys, &["list"]);
        match letters(&doc).len() {
            2 => Ok(doc),
            n => Err(format!("{n} dead letters: {doc}")),
        }
    })
    .await;
    let of = |source: &str| {
        letters(&listed)
            .iter()
            .find(|l| l["source_id"] == source)
            .unwrap_or_else(|| panic!("no letter for {source}: {listed}"))
            .clone()
    };
    let ride_letter = of(&format!("{seq}-0"));
    assert_eq!(ride_letter["partition"], partition, "{ride_letter}");
    assert_eq!(ride_letter["group"], "history");
    assert_eq!(ride_letter["deliveries"], 3);
    assert!(
        ride_letter["error"]
            .as_str()
            .unwrap()
            .contains("could not be projected"),
        "{ride_letter}"
    );
    assert_eq!(ride_letter["record"]["ride_id"], ride);
    assert_eq!(ride_letter["record"]["seq"], seq);
    assert!(ride_letter["age_seconds"].as_f64().unwrap() >= 0.0);
    let poison_letter = of(&poison);
    assert_eq!(poison_letter["entry"]["junk"], "1", "{poison_letter}");
    assert_eq!(poison_letter["record"], Value::Null);
    let ride_id = ride_letter["id"].as_str().unwrap().to_string();
    let poison_id = poison_letter["id"].as_str().unwrap().to_string();

    // The same as text, one row a letter under a header.
    let (out, _) = run(&sys, &["dead-letters", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = text
        .lines()
        .find(|l| l.contains(&ride_id))
        .unwrap_or_else(|| panic!("no row for {ride_id}:\n{text}"));
    for part in [
        "group history (history-a)",
        "could not be projected",
        &format!("ride {ride}"),
    ] {
        assert!(row.contains(part), "{part:?} not in {row:?}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");

    // The gauge counts them.
    let gauge = |want: f64| {
        let streamer = &p.streamer;
        let label = partition.to_string();
        async move {
            wait_until("the dead-letter gauge", CAUGHT_UP, || async {
                let metrics = streamer.metrics().await?;
                match metrics.get("rocket_rides_dead_letters", &[("partition", &label)]) {
                    Some(v) if v == want => Ok(()),
                    other => Err(format!("{other:?}, want {want}")),
                }
            })
            .await
        }
    };
    gauge(2.0).await;

    // A dry run changes nothing.
    let mut sorted = vec![
        (ride_id.clone(), "would redrive".to_string()),
        (poison_id.clone(), "skipped".to_string()),
    ];
    sorted.sort();
    assert_eq!(outcomes(&dead_letters(&sys, &["redrive"])), sorted);
    assert_eq!(letters(&dead_letters(&sys, &["list"])).len(), 2);
    assert!(sys.history_exact().await.is_err(), "the ride was projected");

    // The cause fixed, redrive: the group projects the ride, the letter goes, the poison stays.
    sqlx::query("UPDATE rides SET distance = distance - 1 WHERE id = $1")
        .bind(ride)
        .execute(&sys.db)
        .await
        .unwrap();
    let mut sorted = vec![
        (ride_id.clone(), "redriven".to_string()),
        (poison_id.clone(), "skipped".to_string()),
    ];
    sorted.sort();
    assert_eq!(
        outcomes(&dead_letters(&sys, &["redrive", "--execute"])),
        sorted
    );
    sys.wait_history_exact(CAUGHT_UP).await;
    let left = dead_letters(&sys, &["list"]);
    assert_eq!(letters(&left).len(), 1, "{left}");
    assert_eq!(letters(&left)[0]["id"], poison_id.as_str());
    let redriven_again = dead_letters(&sys, &["redrive", "--execute", &ride_id]);
    assert_eq!(
        outcomes(&redriven_again),
        vec![(ride_id.clone(), "gone".to_string())]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ride_history WHERE ride_id = $1")
        .bind(ride)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    wait_until("the group's pending list to drain", CAUGHT_UP, || async {
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(stream(partition))
            .arg("history")
            .query_async(&mut redis.clone())
            .await
            .map_err(|e| e.to_string())?;
        match pending.count() {
            0 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    gauge(1.0).await;

    // drop: a dry run, then for real.
    assert_eq!(
        outcomes(&dead_letters(&sys, &["drop", &poison_id])),
        vec![(poison_id.clone(), "would drop".to_string())]
    );
    assert_eq!(
        outcomes(&dead_letters(&sys, &["drop", "--execute"])),
        vec![(poison_id.clone(), "dropped".to_string())]
    );
    assert!(letters(&dead_letters(&sys, &["list"])).is_empty());
    gauge(0.0).await;

    // Bad usage exits 2.
    let (out, _) = run(&sys, &["dead-letters", "list", "--partition", "99"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (out, _) = run(&sys, &["dead-letters", "drop", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
