//! The chaos soak: the whole system as real processes under load while a seeded chaos driver
//! kills and restarts its parts (the local counterpart of the Kubernetes chaos CronJob), then
//! a check of every invariant. `SOAK_SECONDS` (default 45) sets how long the chaos lasts and
//! `SOAK_SEED` replays a run's sequence of actions. `make soak` runs it for 10 minutes.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rocket_rides_proto::v1::{CreateRideRequest, ride_service_client::RideServiceClient};
use rocket_rides_tests::{ServingStatus, System, stream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const MAX_LEN: usize = 500;

async fn newest_ride(sys: &System) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM rides")
        .fetch_one(&sys.db)
        .await
        .unwrap()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Callers creating rides until `stop`, retrying each with its idempotency key until it is
/// acknowledged; returns the acknowledged ride ids.
fn start_load(
    api: String,
    callers: usize,
    stop: CancellationToken,
    restores: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<(u64, i64)>>> {
    let channel = Channel::from_shared(api).unwrap().connect_lazy();
    (0..callers)
        .map(|caller| {
            let mut client = RideServiceClient::new(channel.clone());
            let (stop, restores) = (stop.clone(), restores.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let request = CreateRideRequest {
                        distance: Some(
                            5.0 + ((caller * 7919 + n * 104_729) % 99_500) as f64 / 100.0,
                        ),
                        idempotency_key: format!("soak-{caller}-{n}"),
                        rider_id: format!("rider-{}", n % 53),
                    };
                    loop {
                        match client.create_ride(request.clone()).await {
                            Ok(r) => {
                                let restore = restores.load(Ordering::SeqCst);
                                acked.push((restore, r.into_inner().ride_id));
                                break;
                            }
                            // Unacknowledged: it may or may not be committed; the consumers
                            // must agree with the database either way.
                            Err(_) if stop.is_cancelled() => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acked
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_soak_loses_nothing() {
    let seconds: u64 = env_or("SOAK_SECONDS", 45);
    let seed: u64 = env_or("SOAK_SEED", rand::random());
    eprintln!("soak: {seconds} s of chaos, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sys = System::start().await;
    let max_len = MAX_LEN.to_string();
    let env = [
        ("DOUBLE_SEND_RATE", "0.1"),
        ("CRASH_RATE", "0.1"),
        ("BATCH_SIZE", "50"),
        ("STREAM_MAX_LEN", max_len.as_str()),
    ];
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    let mut second_streamer = sys.streamer("streamer-b", &env);
    // A consumer group beside the checkpointed consumers, held to the same promise.
    let mut history = sys.history("history-a", &[("CLAIM_IDLE", "2"), ("BATCH_SIZE", "50")]);
    history.start_ready().await;

    let stop = CancellationToken::new();
    // Rides acknowledged before a restore of Postgres to an older copy may be lost with it:
    // each acknowledgement is tagged with how many restores came before it.
    let restores = Arc::new(AtomicU64::new(0));
    let load = start_load(p.api.url(), 8, stop.clone(), restores.clone());
    // (copy of Postgres' data, newest ride id in it)
    let mut snapshot: Option<(std::path::PathBuf, i64)> = None;
    let mut lost_before: Vec<i64> = Vec::new();
    let kills: Arc<Mutex<BTreeMap<&str, u32>>> = Arc::default();
    let count = |kind: &'static str| *kills.lock().unwrap().entry(kind).or_default() += 1;

    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        match rng.random_range(0..10) {
            0 => {
                p.api.kill().await;
                p.api.start();
                count("api SIGKILL");
            }
            1 => {
                p.streamer.kill().await;
                p.streamer.start();
                count("streamer SIGKILL");
            }
            2 => {
                let victim = &mut p.consumers[rng.random_range(0..2)];
                victim.kill().await;
                victim.start();
                count("consumer SIGKILL");
            }
            3 => {
                if second_streamer.is_running() {
                    second_streamer.kill().await;
                } else {
                    second_streamer.start();
                    count("two streamers at once");
                }
            }
            4 => {
                sys.redis.kill().await;
                sys.redis.restart().await;
                count("Redis SIGKILL");
            }
            5 => {
                sys.pg.stop_immediate().await;
                sys.pg.restart().await;
                count("Postgres immediate stop");
            }
            6 => {
                sys.redis.wipe().await;
                sys.repair_ok("republish");
                count("Redis wiped, republished");
            }
            7 => match snapshot.take() {
                None => {
                    // Read before the copy: a ride committed in between is in the copy but
                    // newer, so counted as one that may be lost (the check only loses reach).
                    let newest = newest_ride(&sys).await;
                    let copy = sys.pg.snapshot().await;
                    snapshot = Some((copy, newest));
                    count("Postgres copied");
                }
                Some((copy, newest)) => {
                    sys.pg.restore(&copy).await;
                    // Counted once restored: a ride acknowledged before this may be lost
                    // (its id is newer than the copy's), one acknowledged after may not.
                    lost_before.push(newest);
                    restores.fetch_add(1, Ordering::SeqCst);
                    sys.repair_ok("rewind");
                    count("Postgres restored, rewound");
                }
            },
            8 => {
                history.kill().await;
                history.start();
                count("history SIGKILL");
            }
            _ => {} // a quiet spell
        }
    }

    // Chaos over: stop the load, let everything catch up, and check the invariants.
    stop.cancel();
    let mut acked: Vec<(u64, i64)> = Vec::new();
    for caller in load {
        acked.extend(caller.await.unwrap());
    }
    p.api.wait_until_status(ServingStatus::Serving).await;
    p.streamer.wait_until_status(ServingStatus::Serving).await;
    for consumer in &p.consumers {
        consumer.wait_until_status(ServingStatus::Serving).await;
    }
    sys.wait_exact(&p.consumers, Duration::from_secs(300)).await;
    history.wait_until_status(ServingStatus::Serving).await;
    sys.wait_history_exact(Duration::from_secs(300)).await;

    // 1. Acknowledged means durable: every ride acknowledged since the last restore, and every
    // earlier one that the restored copies held.
    let kept: Vec<i64> = acked
        .iter()
        .filter(|(restore, id)| {
            lost_before[*restore as usize..]
                .iter()
                .all(|newest| id <= newest)
        })
        .map(|(_, id)| *id)
        .collect();
    let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rides WHERE id = ANY($1)")
        .bind(&kept)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(found as usize, kept.len(), "acknowledged rides are missing");
    // 2-3. Nothing lost, exactly once: wait_exact compared both consumers with the database.
    // 4-5. Bounded: the stream is trimmed back, de-duplication state is one row per consumer.
    sys.wait_stream_within(MAX_LEN, Duration::from_secs(60))
        .await;
    let states: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consumers")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(states, 2);
    let len = sys.stream_len(&stream(0)).await;

    let committed = sys.committed().await;
    // Counted in the logs, not the metrics: processes restarted by the chaos lost their counters.
    let double_sends = p.streamer.log_count("simulated failure: batch sent")
        + second_streamer.log_count("simulated failure: batch sent");
    let crashes: usize = p
        .consumers
        .iter()
        .map(|c| c.log_count("simulated failure: crashed"))
        .sum();
    let kills = kills.lock().unwrap();
    println!("\n==================== chaos soak: PASSED ====================");
    println!("seed {seed} (replay: SOAK_SEED={seed} SOAK_SECONDS={seconds} make soak)");
    println!(
        "duration          {:.0} s of chaos, {:.0} s in all",
        seconds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "rides             {} committed ({} acknowledged, {} of them lost with restores)",
        committed.rides,
        acked.len(),
        acked.len() - kept.len(),
    );
    for (kind, n) in kills.iter() {
        println!("{kind:<30}{n}");
    }
    println!("double sends      {double_sends} batches (sent, not recorded as sent)");
    println!("simulated crashes {crashes} batches rolled back");
    println!("stream length     {len} (bound {MAX_LEN}), staged 0, consumers exact");
    println!("=============================================================");
}
