//! The history service: members of Redis consumer groups projecting every ride once into the
//! read model, claiming what a killed member left pending, dead-lettering a poison entry,
//! recreating the group after Redis lost it; HistoryService through the real grpcurl; and the
//! `rocket-rides-log` tool against a running system.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{aio::ConnectionLike, streams::StreamPendingCountReply};
use rocket_rides_proto::v1::CreateRideRequest;
use rocket_rides_tests::{History, System, grpcurl, stream, wait_until};
use serde_json::Value;

use crate::CAUGHT_UP;

const CLAIM_IDLE_S: u64 = 2;

fn history_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CLAIM_IDLE", "2"),
        ("MAX_DELIVERIES", "3"),
        ("BATCH_SIZE", "20"),
    ]
}

/// Waits until the read model holds every ride once, as `rides` has it.
async fn wait_history_complete(sys: &System) {
    sys.wait_history_exact(CAUGHT_UP).await;
}

/// Entries pending in partition 0's group, for `member` or all.
async fn pending(redis: &mut impl ConnectionLike, member: Option<&str>) -> Result<usize, String> {
    let mut xpending = redis::cmd("XPENDING");
    xpending
        .arg(stream(0))
        .arg("history")
        .arg("-")
        .arg("+")
        .arg(100_000);
    if let Some(member) = member {
        xpending.arg(member);
    }
    let reply: StreamPendingCountReply = xpending
        .query_async(redis)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reply.ids.len())
}

/// A counter summed over `members`.
async fn counted(members: &[History], counter: &str) -> f64 {
    let mut sum = 0.0;
    for member in members {
        sum += member
            .metrics()
            .await
            .unwrap()
            .get(counter, &[])
            .unwrap_or(0.0);
    }
    sum
}

async fn start_members(sys: &System, names: &[&str], env: &[(&str, &str)]) -> Vec<History> {
    let mut members = Vec::new();
    for name in names {
        let mut member = sys.history(name, env);
        member.start_ready().await;
        members.push(member);
    }
    members
}

#[tokio::test(flavor = "multi_thread")]
async fn members_share_the_log_and_claim_what_a_killed_member_left_pending() {
    let sys = System::start().await;
    let p = sys.pipeline(&[], &[]).await;
    let env = history_env();
    let mut members = start_members(&sys, &["history-a", "history-b", "history-c"], &env).await;
    let load = tokio::spawn(p.api.load(3000, 8));

    // Catch history-c between a delivery and its XACK: stopped, it holds pending entries.
    let victim = &mut members[2];
    let pid = victim.pid().unwrap();
    let held = wait_until("history-c to hold pending entries", CAUGHT_UP, || async {
        rocket_rides_tests::signal(pid, libc::SIGSTOP);
        match pending(&mut sys.redis.connection().await, Some("history-c")).await? {
            0 => {
                rocket_rides_tests::signal(pid, libc::SIGCONT);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err("nothing pending".to_string())
            }
            n => Ok(n),
        }
    })
    .await;
    victim.kill().await;
    let killed = Instant::now();
    let claimed_within = Duration::from_secs(CLAIM_IDLE_S + 5);
    wait_until(
        "the others to claim history-c's entries",
        claimed_within,
        || async {
            match pending(&mut sys.redis.connection().await, Some("history-c")).await? {
                0 => Ok(()),
                n => Err(format!("{n} still pending for history-c")),
            }
        },
    )
    .await;
    eprintln!(
        "{held} entries pending for the killed member were claimed after {:?}",
        killed.elapsed()
    );
    assert_eq!(load.await.unwrap(), 3000);
    wait_history_complete(&sys).await;
    wait_until("the group's pending list to drain", CAUGHT_UP, || async {
        match pending(&mut sys.redis.connection().await, None).await? {
            0 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    let claims = counted(&members[..2], "history_claims_total").await;
    assert!(
        claims >= held as f64,
        "{claims} claims for {held} entries left pending"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_entry_is_dead_lettered_after_max_deliveries_and_the_group_goes_on() {
    // On a Redis Cluster: the group's commands, and the dead letter written with its XACK in
    // one transaction (the dead-letter stream shares the partition's slot), work there too.
    let sys = System::start_on_cluster().await;
    let p = sys.pipeline(&[], &[]).await;
    let members = start_members(&sys, &["history-a", "history-b"], &history_env()).await;
    assert_eq!(p.api.load(10, 2).await, 10);
    wait_history_complete(&sys).await;

    // An entry that is no log record, at an id the streamer's next one still follows.
    let mut redis = sys.cluster.as_ref().unwrap().connection().await;
    let poison = rocket_rides_tests::add_poison(&mut redis, &stream(0)).await;
    assert_eq!(p.api.load(10, 2).await, 10);
    wait_history_complete(&sys).await;

    let dead_letters = format!("{}:dead-letter", stream(0));
    let letter: Vec<(String, Vec<(String, String)>)> =
        wait_until("the poison entry to be dead-lettered", CAUGHT_UP, || {
            let mut redis = redis.clone();
            let dead_letters = dead_letters.clone();
            async move {
                let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&dead_letters)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut redis)
                    .await
                    .map_err(|e| e.to_string())?;
                if letters.is_empty() {
                    Err("no dead letter".to_string())
                } else {
                    Ok(letters)
                }
            }
        })
        .await;
    assert_eq!(letter.len(), 1, "{letter:?}");
    let fields: std::collections::HashMap<_, _> = letter[0].1.iter().cloned().collect();
    assert_eq!(fields["source_id"], poison);
    assert_eq!(fields["group"], "history");
    assert_eq!(fields["deliveries"], "3");
    assert!(fields["error"].contains("not a log record"), "{fields:?}");
    assert_eq!(pending(&mut redis, None).await.unwrap(), 0);
    assert_eq!(counted(&members, "history_dead_letters_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_wiped_and_republished_the_group_is_recreated_and_the_history_complete() {
    let mut sys = System::start().await;
    let p = sys.pipeline(&[], &[]).await;
    let _members = start_members(&sys, &["history-a", "history-b"], &history_env()).await;
    assert_eq!(p.api.load(100, 4).await, 100);
    wait_history_complete(&sys).await;

    sys.redis.wipe().await;
    assert_eq!(p.api.load(30, 4).await, 30);
    let republished = sys.repair("republish");
    assert!(republished.status.success(), "{republished:?}");
    assert_eq!(p.api.load(20, 4).await, 20);
    wait_history_complete(&sys).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ride_history")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(rows, 150);
    wait_until("the group's pending list to drain", CAUGHT_UP, || async {
        match pending(&mut sys.redis.connection().await, None).await? {
            0 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
}

/// A ride of `rider` for the grpcurl test.
fn ride(rider: &str, distance: f64) -> CreateRideRequest {
    CreateRideRequest {
        distance: Some(distance),
        idempotency_key: String::new(),
        rider_id: rider.to_string(),
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_ride_and_list_rides_through_grpcurl() {
    let sys = System::start().await;
    let p = sys.pipeline(&[], &[]).await;
    let members = start_members(&sys, &["history-a"], &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            p.api
                .create_ride(ride("rider-g", 10.0 + i as f64))
                .await
                .unwrap()
                .ride_id,
        );
    }
    let other = p
        .api
        .create_ride(ride("rider-h", 3.5))
        .await
        .unwrap()
        .ride_id;
    wait_history_complete(&sys).await;
    let addr = members[0].listen_addr().to_string();
    let call = |method: &str, body: &str| {
        grpcurl::run(&[
            "-plaintext",
            "-d",
            body,
            &addr,
            &format!("rocketrides.v1.HistoryService/{method}"),
        ])
    };

    let got = json(&call("GetRide", &format!(r#"{{"ride_id": {other}}}"#)));
    assert_eq!(got["rideId"], other.to_string());
    assert_eq!(got["riderId"], "rider-h");
    assert_eq!(got["distance"], 3.5);
    assert!(got["createdAt"].as_str().unwrap().ends_with('Z'), "{got}");
    assert!(got["streamId"].as_str().unwrap().ends_with("-0"), "{got}");

    let missing = grpcurl::output(&[
        "-plaintext",
        "-d",
        r#"{"ride_id": 987654321}"#,
        &addr,
        "rocketrides.v1.HistoryService/GetRide",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{missing:?}"
    );

    // Two pages of two and one of one, newest first.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = json(&call(
            "ListRides",
            &format!(r#"{{"rider_id": "rider-g", "page_size": 2, "page_token": "{token}"}}"#),
        ));
        pages += 1;
        for r in page["rides"].as_array().unwrap() {
            listed.push(r["rideId"].as_str().unwrap().parse::<i64>().unwrap());
        }
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => break,
        }
    }
    ids.reverse();
    assert_eq!((listed, pages), (ids, 3));

    let bad = grpcurl::output(&[
        "-plaintext",
        "-d",
        r#"{"rider_id": "rider-g", "page_token": "nope"}"#,
        &addr,
        "rocketrides.v1.HistoryService/ListRides",
    ]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"),
        "{bad:?}"
    );
}

/// The lag `rocket-rides-log consumers --json` reports for checkpointed consumer `name`.
fn consumer_lag(sys: &System, name: &str) -> i64 {
    let out = sys.log_tool(&["--json", "consumers"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    doc["checkpointed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["consumer"] == name)
        .map(|c| c["lag_entries"].as_i64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_tool_tails_reads_and_shows_consumers_on_a_running_system() {
    let mut sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0"], &[]).await;
    let _members = start_members(&sys, &["history-a"], &[]).await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;

    // tail: a new ride is printed as it is streamed. Following from the next seq, so the ride
    // is printed even if it is streamed before tail's first read.
    let errors = sys.dir().join("tail.err");
    let mut tail = sys
        .log_tool(&["tail", "--from", "21"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stdout, lines) = (tail.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let created = Instant::now();
    let printed = |id: i64, distance: &str| {
        let needle = format!("ride {id} {distance} m");
        let (lines, errors) = (&lines, &errors);
        wait_until("tail to print the new ride", CAUGHT_UP, move || {
            let needle = needle.clone();
            async move {
                let lines = lines.lock().unwrap();
                match lines.iter().any(|l| l.contains(&needle)) {
                    true => Ok(()),
                    false => Err((lines.clone(), std::fs::read_to_string(errors))),
                }
            }
        })
    };
    let id = p.api.create(42.5).await.unwrap().ride_id;
    printed(id, "42.5").await;
    eprintln!(
        "tail printed ride {id} {:?} after CreateRide",
        created.elapsed()
    );
    // A Redis restart is waited out: tail goes on where it was.
    sys.redis.kill().await;
    sys.redis.restart().await;
    let id = p.api.create(7.25).await.unwrap().ride_id;
    printed(id, "7.25").await;
    tail.kill().unwrap();
    tail.wait().unwrap();
    reader.join().unwrap();

    // range and info as JSON.
    let out = sys
        .log_tool(&["--json", "range", "--count", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json)
        .collect();
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let out = sys.log_tool(&["--json", "info"]).output().unwrap();
    let info = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(info["partitions"][0]["last_seq"], 22, "{info}");

    // consumers: a stopped consumer's lag rises with every ride; the group is listed.
    sys.wait_exact(&p.consumers, CAUGHT_UP).await;
    assert_eq!(consumer_lag(&sys, "consumer0"), 0);
    p.consumers[0].terminate().await;
    assert_eq!(p.api.load(7, 1).await, 7);
    wait_until(
        "consumer0's lag to show the 7 new rides",
        CAUGHT_UP,
        || async {
            match consumer_lag(&sys, "consumer0") {
                7 => Ok(()),
                lag => Err(lag),
            }
        },
    )
    .await;
    let out = sys.log_tool(&["--json", "consumers"]).output().unwrap();
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == "history"),
        "{doc}"
    );
    let text = sys.log_tool(&["consumers"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("checkpoint") && text.contains("consumer0"),
        "{text}"
    );
}
