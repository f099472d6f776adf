//! `make bench`: how fast the pipeline is next to what its parts can do on this machine.
//! Every figure is the median of repeated runs in this one process, against references run on
//! the same Postgres and Redis: pgbench running the API's own SQL, redis-benchmark's XADD.
//! Writes target/bench/report.md with SVG charts beside it.

mod chart;

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use redis::streams::StreamReadReply;
use rocket_rides_log::StreamId;
use rocket_rides_proto::v1::{
    CreateRideRequest, GetTotalRequest, consumer_service_client::ConsumerServiceClient,
    ride_service_client::RideServiceClient,
};
use rocket_rides_tests::{
    Bin, System,
    process::Process,
    system::{self, LOG},
    wait_until,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const RUNS: usize = 3;
const CALLERS: [usize; 4] = [1, 8, 32, 64];
const BACKLOG: i64 = 100_000;

/// The statement CreateRide runs, for pgbench (`:d` is the distance).
const RIDE_SQL: &str = "WITH ride AS (INSERT INTO rides (distance, idempotency_key) \
    VALUES (:d::numeric, NULL) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, distance) \
    INSERT INTO staged_log_records (ride_id, distance, traceparent, tracestate) \
    SELECT id, distance, NULL, NULL FROM ride RETURNING ride_id;";

#[derive(Clone, Copy, Debug)]
struct Measured {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn median_of(runs: &[Measured]) -> Measured {
    Measured {
        per_second: median(runs.iter().map(|m| m.per_second).collect()),
        p50_ms: median(runs.iter().map(|m| m.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|m| m.p99_ms).collect()),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn reset(sys: &System) {
    sqlx::query("TRUNCATE rides, staged_log_records")
        .execute(&sys.db)
        .await
        .unwrap();
}

/// An empty log: no rides, no staged records, no stream, no consumers, sequence back at 0.
async fn reset_log(sys: &System) {
    reset(sys).await;
    sqlx::query("UPDATE log_sequences SET last_seq = 0")
        .execute(&sys.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM consumers")
        .execute(&sys.db)
        .await
        .unwrap();
    let mut redis = sys.redis.connection().await;
    let _: () = redis::cmd("DEL")
        .arg(LOG)
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Closed loop: `callers` tasks each calling CreateRide as soon as the last call returned.
async fn api_run(api: &Process, callers: usize, secs: u64) -> Measured {
    let channel = system::channel(api).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let mut client = RideServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = CreateRideRequest {
                        distance: Some(5.0 + ((i * 31 + latencies.len()) % 995) as f64),
                        idempotency_key: String::new(),
                    };
                    client
                        .create_ride(request)
                        .await
                        .expect("CreateRide failed");
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Measured {
        per_second: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    }
}

/// pgbench running the same statement at the same concurrency, latencies from its log.
fn pgbench_run(sys: &System, callers: usize, secs: u64) -> Measured {
    let dir = sys
        .dir()
        .join(format!("pgbench-{callers}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("ride.sql");
    std::fs::write(&script, format!("\\set d random(5, 1000)\n{RIDE_SQL}\n")).unwrap();
    let out = Command::new("pgbench")
        .current_dir(&dir)
        .args(["-n", "-M", "prepared", "-l", "-c"])
        .arg(callers.to_string())
        .args([
            "-j",
            &callers.min(2).to_string(),
            "-T",
            &secs.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(sys.pg.url())
        .output()
        .expect("pgbench (from postgresql) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .expect("pgbench printed no tps");
    // Per-transaction log lines: client_id transaction_no latency_us script_no epoch epoch_us.
    let mut latencies: Vec<f64> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgbench_log"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Measured {
        per_second: tps,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// redis-benchmark's XADD of an entry like the streamer's, pipelined as the streamer does.
fn xadd_reference(sys: &System) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &sys.redis.port.to_string()])
        .args([
            "-n",
            "200000",
            "-c",
            "4",
            "-P",
            "250",
            "-q",
            "XADD",
            "bench-stream",
            "*",
        ])
        .args(["seq", "1", "ride_id", "1", "distance", "512.25"])
        .output()
        .expect("redis-benchmark (from redis-tools) is needed");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let rate = text
        .lines()
        .rfind(|l| l.contains("requests per second"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("redis-benchmark printed no rate: {text}"));
    let _: () = Command::new("redis-cli")
        .args(["-p", &sys.redis.port.to_string(), "DEL", "bench-stream"])
        .output()
        .map(|_| ())
        .unwrap();
    rate
}

/// Time for a fresh streamer to drain a pre-staged backlog into an empty stream.
async fn drain_run(sys: &System) -> f64 {
    reset_log(sys).await;
    sqlx::query(
        "INSERT INTO staged_log_records (ride_id, distance)
         SELECT g, (5 + g % 995)::numeric FROM generate_series(1, $1) g",
    )
    .bind(BACKLOG)
    .execute(&sys.db)
    .await
    .unwrap();
    let mut streamer = sys.service(
        Bin::Streamer,
        "bench-streamer",
        &[("STREAM_MAX_LEN", "10000000")],
    );
    let started = Instant::now();
    streamer.start();
    wait_until("the backlog to drain", Duration::from_secs(600), || async {
        match sys.staged().await {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let rate = BACKLOG as f64 / started.elapsed().as_secs_f64();
    streamer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    rate
}

/// Time for a new consumer to apply the whole stream left by `drain_run`.
async fn apply_run(sys: &System, name: &str) -> f64 {
    let mut consumer = sys.service(Bin::Consumer, name, &[]);
    let started = Instant::now();
    consumer.start();
    wait_until(
        "the consumer to apply the stream",
        Duration::from_secs(600),
        || async {
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM consumers WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&sys.db)
                    .await
                    .unwrap();
            match seq {
                Some(s) if s >= BACKLOG => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    let rate = BACKLOG as f64 / started.elapsed().as_secs_f64();
    consumer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    rate
}

/// Open loop at `rate` rides/s for `secs`; every 10th ride is followed until both consumers'
/// checkpoints (GetTotal's `last_stream_id`) have passed its stream entry. One task tails the
/// stream to learn each ride's entry, one polls the consumers every millisecond, so following
/// adds little load. Returns the latencies (ms) from acknowledgement to counted, sorted.
async fn end_to_end(
    api: &Process,
    consumers: &[&Process],
    sys: &System,
    rate: f64,
    secs: u64,
) -> Vec<f64> {
    let rides = RideServiceClient::new(system::channel(api).await);
    let mut totals = Vec::new();
    for c in consumers {
        totals.push(ConsumerServiceClient::new(system::channel(c).await));
    }
    let entries: Arc<Mutex<HashMap<String, StreamId>>> = Arc::default();
    let pending: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let done = CancellationToken::new();

    let tail = {
        let (entries, done) = (entries.clone(), done.clone());
        let mut redis = sys.redis.connection().await;
        let mut from = sys
            .newest_ids(1)
            .await
            .pop()
            .unwrap_or_else(|| "0-0".into());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                let read: Option<StreamReadReply> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(LOG)
                    .arg(&from)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                let mut entries = entries.lock().await;
                for entry in read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    if let Some(ride) = entry.get::<String>("ride_id") {
                        entries
                            .entry(ride)
                            .or_insert_with(|| entry.id.parse().unwrap());
                    }
                    from = entry.id;
                }
            }
        })
    };
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let watch = {
        let (entries, pending, samples, done) = (
            entries.clone(),
            pending.clone(),
            samples.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            loop {
                let mut counted = None::<StreamId>;
                for total in &mut totals {
                    let at: StreamId = total
                        .get_total(GetTotalRequest {})
                        .await
                        .unwrap()
                        .into_inner()
                        .last_stream_id
                        .parse()
                        .unwrap();
                    counted = Some(counted.map_or(at, |c| c.min(at)));
                }
                let now = Instant::now();
                let entries = entries.lock().await;
                let mut pending = pending.lock().await;
                let mut samples = samples.lock().await;
                pending.retain(|(ride, acked)| match (entries.get(ride), counted) {
                    (Some(entry), Some(counted)) if *entry <= counted => {
                        samples.push(now.duration_since(*acked).as_secs_f64() * 1000.0);
                        false
                    }
                    _ => true,
                });
                drop((entries, pending, samples));
                if done.is_cancelled() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut calls = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let (mut rides, pending) = (rides.clone(), pending.clone());
        calls.push(tokio::spawn(async move {
            let request = CreateRideRequest {
                distance: Some(100.0),
                idempotency_key: String::new(),
            };
            let ride = rides
                .create_ride(request)
                .await
                .unwrap()
                .into_inner()
                .ride_id;
            if n.is_multiple_of(10) {
                pending
                    .lock()
                    .await
                    .push((ride.to_string(), Instant::now()));
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    wait_until(
        "every followed ride to be counted",
        Duration::from_secs(60),
        || async {
            match pending.lock().await.len() {
                0 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    done.cancel();
    tail.await.unwrap();
    watch.await.unwrap();
    let mut all = samples.lock().await.clone();
    all.sort_by(f64::total_cmp);
    all
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let sys = System::start_durable().await;
    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    writeln!(report, "# Rocket Rides Log: benchmark report\n").unwrap();
    writeln!(report, "Machine: {} cores, {cpu}. Postgres and Redis as in production (fsync on, AOF `appendfsync always`), all on this machine, release builds. Each figure is the median of {RUNS} runs of {secs} s (or of {RUNS} drains of {BACKLOG} records).\n", std::thread::available_parallelism().map_or(0, |n| n.get())).unwrap();

    // 1. CreateRide against pgbench running the same statement.
    let mut api = sys.service(Bin::Api, "bench-api", &[("RUST_LOG", "warn")]);
    sys.start_ready(&mut api).await;
    let mut rows = Vec::new();
    for callers in CALLERS {
        let mut api_runs = Vec::new();
        let mut pg_runs = Vec::new();
        for _ in 0..RUNS {
            reset(&sys).await;
            api_runs.push(api_run(&api, callers, secs).await);
            reset(&sys).await;
            pg_runs.push(pgbench_run(&sys, callers, secs));
        }
        let (a, p) = (median_of(&api_runs), median_of(&pg_runs));
        eprintln!(
            "{callers:>3} callers: api {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), pgbench {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            a.per_second, a.p50_ms, a.p99_ms, p.per_second, p.p50_ms, p.p99_ms
        );
        rows.push((callers, a, p));
    }
    writeln!(
        report,
        "## CreateRide next to pgbench running the same SQL\n"
    )
    .unwrap();
    writeln!(report, "The API alone (no streamer or consumer running), closed loop; pgbench `-M prepared` with the identical statement (trigger and NOTIFY included) at the same concurrency.\n").unwrap();
    writeln!(report, "| callers | api rides/s | pgbench tx/s | ratio | api p50 ms | api p99 ms | pgbench p50 ms | pgbench p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for (c, a, p) in &rows {
        writeln!(
            report,
            "| {c} | {:.0} | {:.0} | **{:.2}x** | {:.2} | {:.2} | {:.2} | {:.2} |",
            a.per_second,
            p.per_second,
            a.per_second / p.per_second,
            a.p50_ms,
            a.p99_ms,
            p.p50_ms,
            p.p99_ms
        )
        .unwrap();
    }
    let at32 = rows.iter().find(|r| r.0 == 32).unwrap();
    let ratio32 = at32.1.per_second / at32.2.per_second;
    writeln!(
        report,
        "\nTarget: api >= 0.8x pgbench at 32 callers: **{:.2}x, {}**.\n",
        ratio32,
        if ratio32 >= 0.8 { "met" } else { "missed" }
    )
    .unwrap();
    let xs: Vec<f64> = CALLERS.iter().map(|c| *c as f64).collect();
    type Row = (usize, Measured, Measured);
    let line = |name, colour, pick: fn(&Row) -> f64| chart::Series {
        name,
        colour,
        points: rows.iter().map(|r| (r.0 as f64, pick(r))).collect(),
    };
    let charts = [
        (
            "throughput.svg",
            "CreateRide throughput",
            "per second",
            vec![
                line("api", "#1f77b4", |r| r.1.per_second),
                line("pgbench", "#ff7f0e", |r| r.2.per_second),
            ],
        ),
        (
            "latency.svg",
            "CreateRide latency",
            "ms",
            vec![
                line("api p50", "#1f77b4", |r| r.1.p50_ms),
                line("api p99", "#aec7e8", |r| r.1.p99_ms),
                line("pgbench p50", "#ff7f0e", |r| r.2.p50_ms),
                line("pgbench p99", "#ffbb78", |r| r.2.p99_ms),
            ],
        ),
    ];
    for (file, title, unit, series) in charts {
        let svg = chart::line_chart(title, "concurrent callers", unit, &xs, &series);
        std::fs::write(out_dir.join(file), svg).unwrap();
    }
    writeln!(
        report,
        "![throughput](throughput.svg) ![latency](latency.svg)\n"
    )
    .unwrap();

    // 2. Streamer drain and consumer apply rates, next to redis-benchmark's XADD.
    let mut drains = Vec::new();
    let mut applies = Vec::new();
    for run in 0..RUNS {
        drains.push(drain_run(&sys).await);
        applies.push(apply_run(&sys, &format!("bench-consumer-{run}")).await);
        eprintln!(
            "drain {:.0} records/s, apply {:.0} records/s",
            drains[run], applies[run]
        );
    }
    let xadds: Vec<f64> = (0..RUNS).map(|_| xadd_reference(&sys)).collect();
    let (drain, apply, xadd) = (median(drains), median(applies), median(xadds));
    writeln!(report, "## Streamer and consumer rates\n").unwrap();
    writeln!(report, "| what | records/s | target |\n|---|---:|---:|").unwrap();
    writeln!(
        report,
        "| streamer: drain {BACKLOG} staged records into the stream | {drain:.0} | 50,000 ({}) |",
        if drain >= 50_000.0 { "met" } else { "missed" }
    )
    .unwrap();
    writeln!(
        report,
        "| consumer: apply {BACKLOG} stream entries | {apply:.0} | 50,000 ({}) |",
        if apply >= 50_000.0 { "met" } else { "missed" }
    )
    .unwrap();
    writeln!(report, "| reference: redis-benchmark XADD, same entry shape, pipelined, same Redis | {xadd:.0} | |\n").unwrap();

    // 3. End to end at half the measured maximum.
    let max = rows.iter().map(|r| r.1.per_second).fold(0.0, f64::max);
    let rate = max / 2.0;
    reset_log(&sys).await;
    let mut streamer = sys.service(Bin::Streamer, "e2e-streamer", &[("RUST_LOG", "warn")]);
    let mut c0 = sys.service(Bin::Consumer, "e2e-consumer0", &[("RUST_LOG", "warn")]);
    let mut c1 = sys.service(Bin::Consumer, "e2e-consumer1", &[("RUST_LOG", "warn")]);
    for p in [&mut streamer, &mut c0, &mut c1] {
        sys.start_ready(p).await;
    }
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..RUNS {
        let samples = end_to_end(&api, &[&c0, &c1], &sys, rate, secs.max(5)).await;
        p50s.push(percentile(&samples, 0.5));
        p99s.push(percentile(&samples, 0.99));
        eprintln!(
            "end to end at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
            p50s.last().unwrap(),
            p99s.last().unwrap(),
            samples.len()
        );
    }
    let (p50, p99) = (median(p50s), median(p99s));
    writeln!(report, "## End to end\n").unwrap();
    writeln!(report, "CreateRide acknowledged -> both consumers' checkpoints past the ride's entry (GetTotal's `last_stream_id`), every 10th ride followed, at {rate:.0} rides/s (half the best CreateRide rate above), streamer and two consumers running.\n").unwrap();
    writeln!(report, "| p50 ms | p99 ms | target |\n|---:|---:|---:|\n| {p50:.2} | {p99:.2} | p99 <= 50 ms ({}) |\n", if p99 <= 50.0 { "met" } else { "missed" }).unwrap();

    std::fs::write(out_dir.join("report.md"), &report).unwrap();
    println!("{report}");
    println!("written to {}", out_dir.join("report.md").display());
}
