//! The measurements: CreateRide (from our client and from h2load) against pgbench running the
//! original's plain transaction, with CPU per ride; the api under 1,000 callers; the streamer's
//! drain and a consumer's apply rate against redis-benchmark's XADD; end-to-end latency and CPU
//! per record.
//! Each figure is the median of repeated runs in this one process, on the same Postgres and
//! Redis. Reporting is `report`'s job.

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rocket_rides_log::sql::ORIGINAL_RIDE_TRANSACTION;
use rocket_rides_proto::v1::{CreateRideRequest, ride_service_client::RideServiceClient};
use rocket_rides_tests::{Api, System, wait_until};
use tonic::Code;

use crate::cpu;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Concurrent CreateRide callers measured (and pgbench clients compared).
pub const CALLERS: [usize; 5] = [1, 8, 32, 64, 128];

/// Services as measured: quiet logs, and no metrics endpoint (the streamer would poll the
/// database for its gauges every second).
pub const QUIET: [(&str, &str); 2] = [("RUST_LOG", "warn"), ("METRICS_ADDR", "")];

/// How much to measure: `BENCH_SECONDS` per run (default 5), `BENCH_RUNS` runs per figure
/// (default 3), `BENCH_BACKLOG` records to drain and apply (default 100,000).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub secs: u64,
    pub runs: usize,
    pub backlog: i64,
}

impl Settings {
    pub fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }
        Self {
            secs: var("BENCH_SECONDS", 5),
            runs: var("BENCH_RUNS", 3).max(1),
            backlog: var("BENCH_BACKLOG", 100_000).max(1),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The middle of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
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

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn reset(sys: &System) {
    sqlx::query("TRUNCATE rides, log_records")
        .execute(&sys.db)
        .await
        .unwrap();
}

/// The most partitions a benchmark gives the log.
pub const MAX_PARTITIONS: i32 = 8;

/// An empty log of `partitions` partitions: no rides, no staged records, no streams, no
/// consumers, sequences back at 0.
async fn reset_log(sys: &System, partitions: i32) {
    reset(sys).await;
    sqlx::query(
        "UPDATE log_partitions SET last_seq = 0, streamed_seq = 0, leader = NULL,
             lease_until = '-infinity'",
    )
    .execute(&sys.db)
    .await
    .unwrap();
    sqlx::raw_sql("DELETE FROM consumer_positions; DELETE FROM log_members")
        .execute(&sys.db)
        .await
        .unwrap();
    // One key at a time: on a cluster the streams live in different slots.
    for p in 0..MAX_PARTITIONS {
        let del = redis::cmd("DEL").arg(rocket_rides_tests::stream(p)).clone();
        let deleted: redis::RedisResult<()> = match &sys.cluster {
            Some(cluster) => del.query_async(&mut cluster.connection().await).await,
            None => del.query_async(&mut sys.redis.connection().await).await,
        };
        deleted.unwrap();
    }
    let migrated = sys.migrate(&[("LOG_PARTITIONS", &partitions.to_string())]);
    assert!(migrated.status.success(), "{migrated:?}");
}

/// Closed loop: `callers` tasks each calling CreateRide as soon as the last call returned.
async fn api_run(api: &Api, callers: usize, secs: u64) -> Measured {
    let channel = api.channel().await;
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
                        ..Default::default()
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

/// The reference: the original's write as a pgbench script, a plain transaction with the two
/// INSERTs and none of the project's machinery (no group commit, no wake-up), with a random
/// distance.
fn pgbench_script() -> String {
    let [ride, record] = ORIGINAL_RIDE_TRANSACTION;
    format!(
        "\\set d random(5, 1000)\nBEGIN;\n{} \\gset\n{};\nCOMMIT;\n",
        substitute_binds(ride, &[":d"]),
        substitute_binds(record, &[":id", ":d"]),
    )
}

/// `sql` with each bind `$n` replaced by `binds[n - 1]`; panics on a bind with no value or a
/// value with no bind, so a change to the statement cannot go unnoticed.
fn substitute_binds(sql: &str, binds: &[&str]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut used = vec![false; binds.len()];
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest.len() - at - 1, |end| end);
        let n: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .unwrap_or_else(|_| panic!("a '$' that is not a bind in: {sql}"));
        out.push_str(
            binds
                .get(n - 1)
                .unwrap_or_else(|| panic!("no value for ${n}")),
        );
        used[n - 1] = true;
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    assert!(used.iter().all(|u| *u), "unused bind values for: {sql}");
    out
}

/// pgbench running `script` at `callers` clients; transactions per second, latencies from its
/// log.
fn pgbench_run(sys: &System, script: &str, callers: usize, secs: u64) -> Measured {
    let dir = sys
        .dir()
        .join(format!("pgbench-{callers}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let script_file = dir.join("script.sql");
    std::fs::write(&script_file, script).unwrap();
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
        .arg(&script_file)
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

/// Rides per transaction of the limit statement.
pub const LIMIT_ROWS: u32 = 64;
/// pgbench clients running the limit statement.
pub const LIMIT_CLIENTS: [usize; 2] = [4, 8];

/// The most this Postgres durably writes of "a ride and its record": one statement writing
/// `LIMIT_ROWS` rides and their records per transaction into two plain tables with primary keys
/// only (no partitions, no idempotency index, no sequence per partition).
fn limit_script() -> String {
    format!(
        "WITH ride AS (INSERT INTO limit_rides (distance) \
         SELECT (5 + random() * 995)::numeric(10, 2) FROM generate_series(1, {LIMIT_ROWS}) \
         RETURNING id, distance) \
         INSERT INTO limit_records (ride_id, distance) SELECT id, distance FROM ride;\n"
    )
}

/// The limit statement at one pgbench concurrency (medians of the runs).
pub struct LimitRow {
    pub clients: usize,
    pub rides_per_second: f64,
    /// Postgres CPU per ride, microseconds (pgbench's own CPU not counted).
    pub postgres_cpu_us: f64,
}

/// The limit statement at each of `LIMIT_CLIENTS`, on tables of its own beside the log's.
pub async fn limit(sys: &System, settings: &Settings) -> Vec<LimitRow> {
    let postgres = sys.pg.pid().expect("Postgres runs");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS limit_rides (id bigserial PRIMARY KEY, distance numeric NOT NULL);
         CREATE TABLE IF NOT EXISTS limit_records (id bigserial PRIMARY KEY, ride_id bigint NOT NULL,
             distance numeric NOT NULL)",
    )
    .execute(&sys.db)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for clients in LIMIT_CLIENTS {
        let (mut rates, mut cpu_us) = (Vec::new(), Vec::new());
        for _ in 0..settings.runs {
            sqlx::query("TRUNCATE limit_rides, limit_records")
                .execute(&sys.db)
                .await
                .unwrap();
            let before = cpu::family_used(postgres);
            let measured = pgbench_run(sys, &limit_script(), clients, settings.secs);
            let rides = measured.per_second * f64::from(LIMIT_ROWS);
            cpu_us
                .push((cpu::family_used(postgres) - before) / (rides * settings.secs as f64) * 1e6);
            rates.push(rides);
        }
        let row = LimitRow {
            clients,
            rides_per_second: median(rates),
            postgres_cpu_us: median(cpu_us),
        };
        eprintln!(
            "limit statement, {clients} clients: {:.0} rides/s, Postgres {:.1} µs/ride",
            row.rides_per_second, row.postgres_cpu_us
        );
        rows.push(row);
    }
    rows
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

/// An empty log whose statistics are those of steady state (autovacuum analysed the staged
/// partitions while nearly empty), then `backlog` staged records that piled up while no
/// streamer ran, which nobody analyses: what a user's log holds after an outage. With
/// `analyzed`, the reference: the same after a manual ANALYZE.
async fn stage_backlog(sys: &System, backlog: i64, partitions: i32, analyzed: bool) {
    reset_log(sys, partitions).await;
    sqlx::query("ANALYZE log_records")
        .execute(&sys.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO log_records (partition, ride_id, distance)
         SELECT g % $2, g, (5 + g % 995)::numeric FROM generate_series(1, $1) g",
    )
    .bind(backlog)
    .bind(partitions)
    .execute(&sys.db)
    .await
    .unwrap();
    if analyzed {
        sqlx::query("ANALYZE log_records")
            .execute(&sys.db)
            .await
            .unwrap();
    }
}

/// Time for a fresh streamer to drain a cold backlog (`stage_backlog`) into an empty stream.
async fn drain_run(sys: &System, backlog: i64, partitions: i32) -> f64 {
    stage_backlog(sys, backlog, partitions, false).await;
    let mut streamer = sys.streamer(
        "bench-streamer",
        &[("STREAM_MAX_LEN", "10000000"), QUIET[1]],
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
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    streamer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    rate
}

/// A backlog through the whole log: two consumers already running, then a streamer started on
/// `backlog` staged records; the rate at which both have applied them all. Cold (nobody ran
/// ANALYZE after the backlog piled up) or, as the reference, `analyzed`.
async fn whole_log_run(sys: &System, backlog: i64, analyzed: bool) -> f64 {
    stage_backlog(sys, backlog, 1, analyzed).await;
    let mut consumers = Vec::new();
    for name in ["backlog-a", "backlog-b"] {
        let mut consumer = sys.consumer(name, &[QUIET[1]]);
        consumer.start_ready().await;
        consumers.push(consumer);
    }
    let mut streamer = sys.streamer(
        "bench-streamer",
        &[("STREAM_MAX_LEN", "10000000"), QUIET[1]],
    );
    let started = Instant::now();
    streamer.start();
    wait_until(
        "both consumers to apply the backlog",
        Duration::from_secs(600),
        || async {
            let slowest: Option<i64> = sqlx::query_scalar(
                "SELECT min(last_seq) FROM consumer_positions WHERE name LIKE 'backlog-%'",
            )
            .fetch_one(&sys.db)
            .await
            .unwrap();
            match slowest {
                Some(s) if s >= backlog => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    streamer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    for mut consumer in consumers {
        consumer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    }
    rate
}

/// A cold backlog through the whole log, and the same after ANALYZE (medians of the runs).
pub struct Backlog {
    pub records: i64,
    pub cold: f64,
    pub analyzed: f64,
}

pub async fn backlog(sys: &System, settings: &Settings) -> Backlog {
    let (mut cold, mut analyzed) = (Vec::new(), Vec::new());
    for _ in 0..settings.runs {
        cold.push(whole_log_run(sys, settings.backlog, false).await);
        analyzed.push(whole_log_run(sys, settings.backlog, true).await);
        eprintln!(
            "backlog through the log: cold {:.0} rides/s, analysed {:.0} rides/s",
            cold.last().unwrap(),
            analyzed.last().unwrap()
        );
    }
    Backlog {
        records: settings.backlog,
        cold: median(cold),
        analyzed: median(analyzed),
    }
}

/// Time for a new consumer to apply the whole stream left by `drain_run`.
async fn apply_run(sys: &System, name: &str, backlog: i64) -> f64 {
    let mut consumer = sys.consumer(name, &[QUIET[1]]);
    let started = Instant::now();
    consumer.start();
    wait_until(
        "the consumer to apply the stream",
        Duration::from_secs(600),
        || async {
            // Records applied: the partitions' seqs add up to them.
            let seq: Option<i64> = sqlx::query_scalar(
                "SELECT COALESCE(sum(last_seq), 0)::bigint FROM consumer_positions WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&sys.db)
            .await
            .unwrap();
            match seq {
                Some(s) if s >= backlog => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    let rate = backlog as f64 / started.elapsed().as_secs_f64();
    consumer.stop(libc::SIGTERM, Duration::from_secs(30)).await;
    rate
}

/// One followed ride's way through the log, in milliseconds on this machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hops {
    /// CreateRide acknowledged -> both consumers' checkpoints past the ride's seq.
    pub end_to_end: f64,
    /// The ride's statement started (`rides.created_at`) -> the api's answer received.
    pub commit: f64,
    /// The ride's statement started -> the streamer's numbering statement started
    /// (`log_records.numbered_at`): its wake-up and the pass it waited behind.
    pub to_numbered: f64,
    /// Numbered -> both checkpoints past it: the XADD, the consumers' read and their commit.
    pub to_counted: f64,
}

/// Rides at `rate` for `secs`, every 10th followed; each followed ride's hops. Both consumers'
/// progress is polled every millisecond with one indexed query (not through GetTotal, whose
/// gRPC calls and reads would load the system measured), and matched to the rides afterwards.
async fn end_to_end_run(api: &Api, sys: &System, rate: f64, secs: u64) -> Vec<Hops> {
    let rides = RideServiceClient::new(api.channel().await);
    // Followed rides with when they were acknowledged.
    let followed: Arc<Mutex<Vec<(i64, SystemTime)>>> = Arc::default();
    let done = CancellationToken::new();
    // When both checkpoints of partition 0 reached which seq.
    // The newest seq both have counted, as the poller last saw it.
    let counted_upto = Arc::new(AtomicI64::new(0));
    let progress = {
        let (db, done, counted_upto) = (sys.db.clone(), done.clone(), counted_upto.clone());
        tokio::spawn(async move {
            let mut conn = db.acquire().await.unwrap();
            let mut seen: Vec<(SystemTime, i64)> = Vec::new();
            loop {
                let (both, counted): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT count(*), min(last_seq) FROM consumer_positions
                     WHERE partition = 0 AND kind = 'checkpoint'",
                )
                .fetch_one(&mut *conn)
                .await
                .unwrap();
                let now = SystemTime::now();
                if let (2, Some(counted)) = (both, counted)
                    && seen.last().is_none_or(|(_, last)| *last < counted)
                {
                    seen.push((now, counted));
                    counted_upto.store(counted, Ordering::Relaxed);
                }
                if done.is_cancelled() {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut calls = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let (mut rides, followed) = (rides.clone(), followed.clone());
        calls.push(tokio::spawn(async move {
            let request = CreateRideRequest {
                distance: Some(100.0),
                ..Default::default()
            };
            let ride = rides
                .create_ride(request)
                .await
                .unwrap()
                .into_inner()
                .ride_id;
            if n.is_multiple_of(10) {
                followed.lock().await.push((ride, SystemTime::now()));
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let followed = followed.lock().await.clone();
    let ids: Vec<i64> = followed.iter().map(|(id, _)| *id).collect();
    // Statement start, numbering start (seconds since the epoch) and seq of each followed ride,
    // once the streamer numbered them all.
    let stored: HashMap<i64, (f64, f64, i64)> = wait_until(
        "every followed ride to be numbered",
        Duration::from_secs(60),
        || async {
            let rows = sqlx::query_as::<_, (i64, f64, f64, i64)>(
                "SELECT r.id, extract(epoch FROM r.created_at)::float8,
                        extract(epoch FROM l.numbered_at)::float8, l.seq
                 FROM rides r JOIN log_records l ON l.ride_id = r.id
                 WHERE r.id = ANY($1) AND l.seq IS NOT NULL",
            )
            .bind(&ids)
            .fetch_all(&sys.db)
            .await
            .unwrap();
            match rows.len() == ids.len() {
                true => Ok(HashMap::from_iter(rows.into_iter().map(
                    |(id, created, numbered, seq)| (id, (created, numbered, seq)),
                ))),
                false => Err(format!("{} of {}", rows.len(), ids.len())),
            }
        },
    )
    .await;
    let top = stored.values().map(|(_, _, seq)| *seq).max().unwrap_or(0);
    // On the poller's own samples, so the one that saw the last ride counted is recorded.
    wait_until(
        "every followed ride to be counted by both consumers",
        Duration::from_secs(60),
        || async {
            match counted_upto.load(Ordering::Relaxed) {
                counted if counted >= top => Ok(()),
                counted => Err(counted),
            }
        },
    )
    .await;
    done.cancel();
    let seen = progress.await.unwrap();
    let secs_of = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    followed
        .iter()
        .map(|(id, acked)| {
            let (created, numbered, seq) = stored[id];
            let counted = seen
                .iter()
                .find(|(_, c)| *c >= seq)
                .map(|(at, _)| secs_of(*at))
                .expect("the ride was counted");
            Hops {
                end_to_end: (counted - secs_of(*acked)) * 1000.0,
                commit: (secs_of(*acked) - created) * 1000.0,
                to_numbered: (numbered - created) * 1000.0,
                to_counted: (counted - numbered) * 1000.0,
            }
        })
        .collect()
}

/// CreateRide and pgbench at one concurrency (medians of the runs).
pub struct CreateRideRow {
    pub callers: usize,
    pub api: Measured,
    /// The same calls from h2load, an independent HTTP/2 load generator.
    pub h2load: Measured,
    pub pgbench: Measured,
    /// CPU per ride, microseconds: the api, and Postgres serving it; Postgres per pgbench
    /// transaction.
    pub api_cpu_us: f64,
    pub postgres_cpu_us: f64,
    pub pgbench_postgres_cpu_us: f64,
}

/// CreateRide closed loop, from our client and from h2load, against pgbench running the
/// original's transaction, at each of `CALLERS`. The api runs alone (no streamer or consumer),
/// as pgbench does.
pub async fn create_ride(sys: &System, api: &Api, settings: &Settings) -> Vec<CreateRideRow> {
    let api_pid = api.pid().expect("the api runs");
    let postgres = sys.pg.pid().expect("Postgres runs");
    let mut rows = Vec::new();
    for callers in CALLERS {
        let (mut api_runs, mut h2_runs, mut pg_runs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut api_cpu, mut pg_cpu, mut ref_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..settings.runs {
            reset(sys).await;
            let before = (cpu::used(&[api_pid]), cpu::family_used(postgres));
            let measured = api_run(api, callers, settings.secs).await;
            let rides = measured.per_second * settings.secs as f64;
            api_cpu.push((cpu::used(&[api_pid]) - before.0) / rides * 1e6);
            pg_cpu.push((cpu::family_used(postgres) - before.1) / rides * 1e6);
            api_runs.push(measured);
            reset(sys).await;
            h2_runs.push(h2load_run(sys, api, callers, settings.secs).await);
            reset(sys).await;
            let before = cpu::family_used(postgres);
            let measured = pgbench_run(sys, &pgbench_script(), callers, settings.secs);
            let used = cpu::family_used(postgres) - before;
            ref_cpu.push(used / (measured.per_second * settings.secs as f64) * 1e6);
            pg_runs.push(measured);
        }
        let (a, h, p) = (
            median_of(&api_runs),
            median_of(&h2_runs),
            median_of(&pg_runs),
        );
        eprintln!(
            "{callers:>3} callers: api {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), h2load {:.0}/s (p99 {:.2} ms), pgbench {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            a.per_second,
            a.p50_ms,
            a.p99_ms,
            h.per_second,
            h.p99_ms,
            p.per_second,
            p.p50_ms,
            p.p99_ms
        );
        rows.push(CreateRideRow {
            callers,
            api: a,
            h2load: h,
            pgbench: p,
            api_cpu_us: median(api_cpu),
            postgres_cpu_us: median(pg_cpu),
            pgbench_postgres_cpu_us: median(ref_cpu),
        });
    }
    rows
}

/// CreateRide as h2load sends it: a gRPC frame (no compression, length) around the protobuf
/// of `{distance: 12.5}` (field 1, a double), built by hand.
fn grpc_body() -> Vec<u8> {
    let mut message = vec![0x09];
    message.extend_from_slice(&12.5f64.to_le_bytes());
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    body
}

async fn rides(sys: &System) -> i64 {
    sys.committed().await.rides
}

/// h2load, closed loop with `callers` connections of one stream each, for `secs`. It counts
/// HTTP statuses only (a gRPC error is an HTTP 200), so what succeeded is counted in the
/// database; latencies come from its per-request log.
async fn h2load_run(sys: &System, api: &Api, callers: usize, secs: u64) -> Measured {
    let dir = sys
        .dir()
        .join(format!("h2load-{callers}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("body");
    std::fs::write(&body, grpc_body()).unwrap();
    let log = dir.join("requests.log");
    let before = rides(sys).await;
    let out = Command::new("h2load")
        .args([
            "-D",
            &secs.to_string(),
            "-c",
            &callers.to_string(),
            "-m",
            "1",
            "-t",
            "1",
        ])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!(
            "{}/rocketrides.v1.RideService/CreateRide",
            api.url()
        ))
        .output()
        .expect("h2load (Debian nghttp2-client) is needed");
    assert!(
        out.status.success(),
        "h2load failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let created = rides(sys).await - before;
    // Log lines: start time (us since the epoch), HTTP status, duration (us).
    let mut latencies: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Measured {
        per_second: created as f64 / secs as f64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// The api past its capacity: how it answers, and what it keeps.
pub struct Overload {
    pub callers: usize,
    pub acknowledged: usize,
    pub shed: usize,
    pub other: usize,
    pub p99_acknowledged_ms: f64,
    pub p99_shed_ms: f64,
    pub rss_peak_mib: f64,
    /// Every acknowledged ride is in the database.
    pub all_kept: bool,
}

/// `callers` closed-loop callers for `secs` (a shed call is retried after 10 ms).
pub async fn overload(sys: &System, api: &Api, callers: usize, secs: u64) -> Overload {
    reset(sys).await;
    let api_pid = api.pid().expect("the api runs");
    let channel = api.channel().await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let rss = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while Instant::now() < deadline {
            peak = peak.max(cpu::rss_mib(api_pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = RideServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = CreateRideRequest {
                        distance: Some(12.5),
                        ..Default::default()
                    };
                    let code = match client.create_ride(request).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    answers.push((code, started.elapsed().as_secs_f64() * 1000.0));
                    if code != Code::Ok {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    let latencies = |code: Code| {
        let mut l: Vec<f64> = answers
            .iter()
            .filter(|(c, _)| *c == code)
            .map(|(_, ms)| *ms)
            .collect();
        l.sort_by(f64::total_cmp);
        l
    };
    let (ok, shed) = (latencies(Code::Ok), latencies(Code::ResourceExhausted));
    let result = Overload {
        callers,
        acknowledged: ok.len(),
        shed: shed.len(),
        other: answers.len() - ok.len() - shed.len(),
        p99_acknowledged_ms: if ok.is_empty() {
            0.0
        } else {
            percentile(&ok, 0.99)
        },
        p99_shed_ms: if shed.is_empty() {
            0.0
        } else {
            percentile(&shed, 0.99)
        },
        rss_peak_mib: rss.await.unwrap(),
        all_kept: rides(sys).await == ok.len() as i64,
    };
    eprintln!(
        "{callers} callers: {} acknowledged (p99 {:.0} ms), {} shed (p99 {:.0} ms), {} other; api RSS peak {:.0} MiB; all kept: {}",
        result.acknowledged,
        result.p99_acknowledged_ms,
        result.shed,
        result.p99_shed_ms,
        result.other,
        result.rss_peak_mib,
        result.all_kept
    );
    result
}

/// Records per second through each stage (medians), with the reference.
pub struct Rates {
    pub drain: f64,
    pub apply: f64,
    pub xadd: f64,
}

/// The streamer draining a backlog into an empty stream, a new consumer applying it, and
/// redis-benchmark's XADD on the same Redis.
pub async fn rates(sys: &System, settings: &Settings) -> Rates {
    let log = log_rates(sys, settings, 1).await;
    let xadds = (0..settings.runs).map(|_| xadd_reference(sys)).collect();
    Rates {
        drain: log.drain,
        apply: log.apply,
        xadd: median(xadds),
    }
}

/// Drain and apply rates with the log in `partitions` partitions.
#[derive(Clone, Copy, Debug)]
pub struct LogRates {
    pub partitions: i32,
    pub cluster: bool,
    pub drain: f64,
    pub apply: f64,
}

/// The streamer draining a backlog spread over `partitions` partitions, then a new consumer
/// applying it (medians of the runs).
pub async fn log_rates(sys: &System, settings: &Settings, partitions: i32) -> LogRates {
    let mut drains = Vec::new();
    let mut applies = Vec::new();
    for run in 0..settings.runs {
        drains.push(drain_run(sys, settings.backlog, partitions).await);
        let consumer = format!("bench-consumer-{run}");
        applies.push(apply_run(sys, &consumer, settings.backlog).await);
        eprintln!(
            "{partitions} partitions{}: drain {:.0} records/s, apply {:.0} records/s",
            if sys.cluster.is_some() {
                " on the cluster"
            } else {
                ""
            },
            drains[run],
            applies[run]
        );
    }
    LogRates {
        partitions,
        cluster: sys.cluster.is_some(),
        drain: median(drains),
        apply: median(applies),
    }
}

/// Acknowledged -> counted by both consumers, at `rate` rides/s (medians of the runs), and
/// CPU per record of the streamer and of each consumer, microseconds.
pub struct EndToEnd {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// p50 and p99 of each hop (`Hops`), each over all followed rides of the runs.
    pub p50: Hops,
    pub p99: Hops,
    pub streamer_cpu_us: f64,
    pub consumer_cpu_us: f64,
}

/// The `q` quantile of each hop of `hops`.
fn hop_percentiles(hops: &[Hops], q: f64) -> Hops {
    let of = |pick: fn(&Hops) -> f64| {
        let mut xs: Vec<f64> = hops.iter().map(pick).collect();
        xs.sort_by(f64::total_cmp);
        percentile(&xs, q)
    };
    Hops {
        end_to_end: of(|h| h.end_to_end),
        commit: of(|h| h.commit),
        to_numbered: of(|h| h.to_numbered),
        to_counted: of(|h| h.to_counted),
    }
}

/// Rides per second of background load at which end-to-end latency is held to its target.
pub const END_TO_END_RATE: f64 = 700.0;

/// End-to-end latency at `rate` rides/s with a streamer and two consumers running beside `api`.
pub async fn end_to_end(sys: &System, api: &Api, rate: f64, settings: &Settings) -> EndToEnd {
    reset_log(sys, 1).await;
    let mut streamer = sys.streamer("e2e-streamer", &QUIET);
    let mut c0 = sys.consumer("e2e-consumer0", &QUIET);
    let mut c1 = sys.consumer("e2e-consumer1", &QUIET);
    streamer.start_ready().await;
    c0.start_ready().await;
    c1.start_ready().await;
    let (mut p50s, mut p99s, mut all) = (Vec::new(), Vec::new(), Vec::new());
    let (mut streamer_cpu, mut consumer_cpu) = (Vec::new(), Vec::new());
    let pids = |s: Option<u32>| vec![s.expect("running")];
    for _ in 0..settings.runs {
        let before = (
            rides(sys).await,
            cpu::used(&pids(streamer.pid())),
            cpu::used(&pids(c0.pid())),
        );
        let hops = end_to_end_run(api, sys, rate, settings.secs.max(5)).await;
        let records = (rides(sys).await - before.0) as f64;
        streamer_cpu.push((cpu::used(&pids(streamer.pid())) - before.1) / records * 1e6);
        consumer_cpu.push((cpu::used(&pids(c0.pid())) - before.2) / records * 1e6);
        let (p50, p99) = (hop_percentiles(&hops, 0.5), hop_percentiles(&hops, 0.99));
        p50s.push(p50.end_to_end);
        p99s.push(p99.end_to_end);
        eprintln!(
            "end to end at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms ({} samples); p50/p99 commit {:.2}/{:.2}, to numbered {:.2}/{:.2}, to counted {:.2}/{:.2}",
            p50.end_to_end,
            p99.end_to_end,
            hops.len(),
            p50.commit,
            p99.commit,
            p50.to_numbered,
            p99.to_numbered,
            p50.to_counted,
            p99.to_counted,
        );
        all.extend(hops);
    }
    drop((streamer, c0, c1));
    EndToEnd {
        rate,
        p50_ms: median(p50s),
        p99_ms: median(p99s),
        p50: hop_percentiles(&all, 0.5),
        p99: hop_percentiles(&all, 0.99),
        streamer_cpu_us: median(streamer_cpu),
        consumer_cpu_us: median(consumer_cpu),
    }
}
