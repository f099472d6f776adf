//! One test's whole world: Postgres, Redis, the schema, and the services it starts.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rocket_rides_proto::v1::{
    CreateRideRequest, CreateRideResponse, GetTotalRequest, GetTotalResponse,
    consumer_service_client::ConsumerServiceClient, ride_service_client::RideServiceClient,
};
use sqlx::PgPool;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    free_port, postgres::Postgres, process::Process, redis_server::RedisServer, wait_until,
};

/// The service binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Api,
    Streamer,
    Consumer,
    Simulator,
}

impl Bin {
    fn file(self) -> &'static str {
        match self {
            Bin::Api => "rocket-rides-api",
            Bin::Streamer => "rocket-rides-streamer",
            Bin::Consumer => "rocket-rides-consumer",
            Bin::Simulator => "rocket-rides-simulator",
        }
    }
}

/// Where the binaries are: `ROCKET_RIDES_BIN_DIR`, else the profile directory this test runs
/// from (`target/debug/deps/<test>` -> `target/debug`).
pub fn bin_path(bin: Bin) -> PathBuf {
    let dir = std::env::var_os("ROCKET_RIDES_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        });
    let path = dir.join(bin.file());
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set ROCKET_RIDES_BIN_DIR)",
        path.display()
    );
    path
}

/// The stream the services use by default.
pub const LOG: &str = "rocket-rides-log";

pub struct System {
    pub pg: Postgres,
    pub redis: RedisServer,
    pub db: PgPool,
    dir: TempDir,
}

impl System {
    /// Starts Postgres (fsync off, for speed) and Redis and applies the schema with
    /// `rocket-rides-api migrate`.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like `start`, with Postgres as durable as in production (for benchmarks).
    pub async fn start_durable() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rocket-rides-test-")
            .tempdir()
            .unwrap();
        let pg = Postgres::start(dir.path(), durable).await;
        let redis = RedisServer::start(dir.path()).await;
        let status = std::process::Command::new(bin_path(Bin::Api))
            .arg("migrate")
            .env("DATABASE_URL", pg.url())
            .env("RUST_LOG", "warn")
            .status()
            .unwrap();
        assert!(status.success(), "rocket-rides-api migrate failed");
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg.url())
            .await
            .unwrap();
        Self { pg, redis, db, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A service process (not yet started) wired to this system's Postgres and Redis, listening
    /// on a free port. `env` adds or overrides variables.
    pub fn service(&self, bin: Bin, name: &str, env: &[(&str, &str)]) -> Process {
        let mut vars: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.pg.url()),
            ("REDIS_URL".into(), self.redis.url()),
            ("LISTEN_ADDR".into(), format!("127.0.0.1:{}", free_port())),
            ("RUST_LOG".into(), "info".into()),
        ];
        if bin == Bin::Consumer {
            vars.push(("CONSUMER_NAME".into(), name.into()));
        }
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        Process::new(
            name,
            &[bin_path(bin).to_str().unwrap()],
            &vars,
            self.dir.path(),
        )
    }

    /// Starts `process` and waits until its health check says SERVING.
    pub async fn start_ready(&self, process: &mut Process) {
        process.start();
        wait_serving(process).await;
    }

    /// The usual pipeline: api, streamer and one consumer per name, all ready.
    pub async fn pipeline(
        &self,
        consumers: &[&str],
        env: &[(&str, &str)],
    ) -> (Process, Process, Vec<Process>) {
        let mut api = self.service(Bin::Api, "api", env);
        let mut streamer = self.service(Bin::Streamer, "streamer", env);
        self.start_ready(&mut api).await;
        self.start_ready(&mut streamer).await;
        let mut started = Vec::new();
        for name in consumers {
            let mut consumer = self.service(Bin::Consumer, name, env);
            self.start_ready(&mut consumer).await;
            started.push(consumer);
        }
        (api, streamer, started)
    }

    /// Sum and count of the committed rides, as the consumers must report them.
    pub async fn committed(&self) -> (f64, i64) {
        sqlx::query_as("SELECT COALESCE(SUM(distance), 0)::float8, COUNT(*) FROM rides")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// How many entries `stream` holds.
    pub async fn stream_len(&self, stream: &str) -> usize {
        let mut redis = self.redis.connection().await;
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut redis)
            .await
            .unwrap()
    }

    /// Ids of the newest `n` entries of the log stream, newest first.
    pub async fn newest_ids(&self, n: usize) -> Vec<String> {
        let mut redis = self.redis.connection().await;
        let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(LOG)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n)
            .query_async(&mut redis)
            .await
            .unwrap();
        newest.into_iter().map(|(id, _)| id).collect()
    }

    /// Waits until the log stream holds at most `max` entries: trimming has caught up.
    pub async fn wait_stream_within(&self, max: usize, timeout: Duration) {
        wait_until(
            &format!("the stream to hold at most {max} entries"),
            timeout,
            || async {
                match self.stream_len(LOG).await {
                    len if len <= max => Ok(()),
                    len => Err(len),
                }
            },
        )
        .await;
    }

    pub async fn staged(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM log_records WHERE seq IS NULL OR seq > (SELECT streamed_seq FROM log_head)",
        )
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Waits until the outbox is drained and every consumer's GetTotal and its row in
    /// `consumers` equal the committed rides exactly.
    pub async fn wait_exact(&self, consumers: &[&Process], timeout: Duration) {
        for consumer in consumers {
            let name = consumer.name().to_string();
            let addr = addr_of(consumer);
            wait_until(
                &format!("{name} to equal SUM/COUNT(rides) exactly"),
                timeout,
                || {
                    let (name, addr) = (name.clone(), addr.clone());
                    async move {
                        let expected = self.committed().await;
                        let staged = self.staged().await;
                        let got = total_at(&addr).await.map_err(|e| e.to_string())?;
                        let exact_in_sql: bool = sqlx::query_scalar(
                            "SELECT total_distance = (SELECT COALESCE(SUM(distance), 0) FROM rides)
                                AND ride_count = (SELECT COUNT(*) FROM rides)
                             FROM consumers WHERE name = $1",
                        )
                        .bind(&name)
                        .fetch_optional(&self.db)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or(false);
                        if staged == 0
                            && exact_in_sql
                            && got.total_distance == expected.0
                            && got.ride_count == expected.1
                        {
                            Ok(())
                        } else {
                            Err(format!(
                                "staged {staged}, expected {expected:?}, GetTotal ({}, {}), exact in SQL {exact_in_sql}",
                                got.total_distance, got.ride_count
                            ))
                        }
                    }
                },
            )
            .await;
        }
    }
}

/// The `http://` address a service listens on.
pub fn addr_of(process: &Process) -> String {
    format!("http://{}", process.env("LISTEN_ADDR").unwrap())
}

pub async fn channel(process: &Process) -> Channel {
    let addr = addr_of(process);
    wait_until(
        &format!("{} to accept connections", process.name()),
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { Channel::from_shared(addr).unwrap().connect().await }
        },
    )
    .await
}

/// Health of service `""` (readiness) on `process`.
pub async fn health(process: &Process) -> Result<ServingStatus, tonic::Status> {
    let channel = Channel::from_shared(addr_of(process))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

pub async fn wait_serving(process: &Process) {
    wait_until(
        &format!("{} to be SERVING", process.name()),
        Duration::from_secs(60),
        || async {
            match health(process).await {
                Ok(ServingStatus::Serving) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

pub async fn rides(api: &Process) -> RideServiceClient<Channel> {
    RideServiceClient::new(channel(api).await)
}

pub async fn create(
    client: &mut RideServiceClient<Channel>,
    distance: f64,
) -> Result<CreateRideResponse, tonic::Status> {
    client
        .create_ride(CreateRideRequest {
            distance: Some(distance),
            idempotency_key: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn total_at(addr: &str) -> Result<GetTotalResponse, Box<dyn std::error::Error>> {
    let channel = Channel::from_shared(addr.to_string())?.connect().await?;
    Ok(ConsumerServiceClient::new(channel)
        .get_total(GetTotalRequest {})
        .await?
        .into_inner())
}

pub async fn total(consumer: &Process) -> GetTotalResponse {
    total_at(&addr_of(consumer)).await.unwrap()
}

/// Creates `n` rides from `callers` concurrent callers, with varied distances; returns how
/// many were acknowledged. Failed calls are retried with the same idempotency key.
pub async fn load(api: &Process, n: usize, callers: usize) -> usize {
    load_at(addr_of(api), n, callers).await
}

/// `load`, for a task that does not hold the process.
pub async fn load_at(addr: String, n: usize, callers: usize) -> usize {
    let channel = wait_until(
        "the api to accept connections",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { Channel::from_shared(addr).unwrap().connect().await }
        },
    )
    .await;
    let client = RideServiceClient::new(channel);
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut done = 0;
                for i in (c..n).step_by(callers) {
                    let request = CreateRideRequest {
                        distance: Some(5.0 + (i * 7919 % 99_500) as f64 / 100.0),
                        idempotency_key: format!("load-{i}-{}", rand::random::<u64>()),
                    };
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        match client.create_ride(request.clone()).await {
                            Ok(_) => break,
                            Err(e) if tokio::time::Instant::now() < deadline => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("CreateRide kept failing: {e}"),
                        }
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

impl Drop for System {
    /// On a failed test, prints the end of every process's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- {} (last 40 lines) -----\n{}",
                log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
