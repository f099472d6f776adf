//! Handles on the service binaries, typed by kind: every service answers health and serves
//! metrics; an `Api` creates rides, a `Consumer` reports its total, a `Streamer` says whether
//! it leads.

use std::{
    future::Future, marker::PhantomData, path::PathBuf, process::ExitStatus, time::Duration,
};

use rocket_rides_proto::v1::{
    CreateRideRequest, CreateRideResponse, GetRideRequest, GetTotalRequest, GetTotalResponse, Ride,
    consumer_service_client::ConsumerServiceClient, history_service_client::HistoryServiceClient,
    ride_service_client::RideServiceClient,
};
use tonic::{IntoRequest, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{metrics::Metrics, process::Process, wait_until};

/// How long a service gets to reach a health status, or to accept connections.
const READY: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd service gets to drain and exit.
const GRACE: Duration = Duration::from_secs(15);

/// Which binary a `Service` runs.
pub trait Kind {
    const BINARY: &'static str;

    /// What a service of this kind named `name` needs set, besides its sandbox's variables.
    fn vars(name: &str) -> Vec<(&'static str, String)> {
        let _ = name;
        Vec::new()
    }
}

/// The kinds of service, as type parameters of `Service`.
pub mod kind {
    pub enum Api {}
    pub enum Streamer {}
    pub enum Consumer {}
    pub enum Simulator {}
    pub enum History {}
}

impl Kind for kind::Api {
    const BINARY: &'static str = "rocket-rides-api";
}
impl Kind for kind::Streamer {
    const BINARY: &'static str = "rocket-rides-streamer";
}
impl Kind for kind::Consumer {
    const BINARY: &'static str = "rocket-rides-consumer";

    /// Its name is its identity: the checkpoint and totals it owns.
    fn vars(name: &str) -> Vec<(&'static str, String)> {
        vec![("CONSUMER_NAME", name.to_string())]
    }
}
impl Kind for kind::Simulator {
    const BINARY: &'static str = "rocket-rides-simulator";
}
impl Kind for kind::History {
    const BINARY: &'static str = "rocket-rides-history";

    /// Its name is its member name in the consumer groups.
    fn vars(name: &str) -> Vec<(&'static str, String)> {
        vec![("CONSUMER_INSTANCE", name.to_string())]
    }
}

pub type Api = Service<kind::Api>;
pub type Streamer = Service<kind::Streamer>;
pub type Consumer = Service<kind::Consumer>;
pub type Simulator = Service<kind::Simulator>;
pub type History = Service<kind::History>;

/// Where the binaries are: `ROCKET_RIDES_BIN_DIR`, else the profile directory this test runs
/// from (`target/debug/deps/<test>` -> `target/debug`).
pub fn bin_path(binary: &str) -> PathBuf {
    let dir = std::env::var_os("ROCKET_RIDES_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        });
    let path = dir.join(binary);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set ROCKET_RIDES_BIN_DIR)",
        path.display()
    );
    path
}

/// A service binary as a child process (not started until `start`), with its gRPC address
/// (LISTEN_ADDR) and metrics address (METRICS_ADDR) known.
pub struct Service<K> {
    process: Process,
    kind: PhantomData<K>,
}

impl<K: Kind> Service<K> {
    /// `process` must have LISTEN_ADDR and METRICS_ADDR in its environment.
    pub(crate) fn new(process: Process) -> Self {
        Self {
            process,
            kind: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// Sends `signal` to the running process (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, signal: i32) {
        crate::signal(self.pid().expect("the process runs"), signal);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `host:port` of its gRPC server.
    pub fn listen_addr(&self) -> &str {
        self.process.env("LISTEN_ADDR").expect("LISTEN_ADDR is set")
    }

    /// `http://host:port` of its gRPC server.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen_addr())
    }

    /// Changes (or adds) a variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.process.set_env(key, value);
    }

    pub fn start(&mut self) -> &mut Self {
        self.process.start();
        self
    }

    /// Starts it and waits until it is SERVING.
    pub async fn start_ready(&mut self) {
        self.start();
        self.wait_until_status(ServingStatus::Serving).await;
    }

    /// Health of service `""` (readiness).
    pub async fn health(&self) -> Result<ServingStatus, tonic::Status> {
        let channel = Channel::from_shared(self.url())
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

    pub async fn wait_until_status(&self, status: ServingStatus) {
        wait_until(
            &format!("{} to be {}", self.name(), status.as_str_name()),
            READY,
            || async {
                match self.health().await {
                    Ok(now) if now == status => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    /// A scrape of its `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics, String> {
        let addr = self
            .process
            .env("METRICS_ADDR")
            .expect("METRICS_ADDR is set");
        Metrics::scrape(addr).await
    }

    /// Waits until the gauge `metric` (with `labels`) says the service halted: not merely that
    /// a dependency is down, which also makes it NOT_SERVING.
    pub async fn wait_halted(&self, metric: &str, labels: &[(&str, &str)]) {
        self.wait_metrics(&format!("{} to halt", self.name()), |m| {
            match m.get(metric, labels) {
                Some(1.0) => Ok(()),
                other => Err(format!("{metric} = {other:?}")),
            }
        })
        .await;
    }

    /// Waits until a scrape satisfies `check`; returns what `check` returned.
    pub async fn wait_metrics<T>(
        &self,
        what: &str,
        check: impl Fn(&Metrics) -> Result<T, String>,
    ) -> T {
        let check = &check;
        wait_until(what, READY, || async move { check(&self.metrics().await?) }).await
    }

    /// A channel to its gRPC server, once it accepts connections.
    pub async fn channel(&self) -> Channel {
        connect(self.url()).await
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.process.log_count(needle)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Sends `signal` and waits up to `timeout` for it to exit.
    pub async fn stop(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        self.process.stop(signal, timeout).await
    }

    /// SIGTERM, and the time a graceful shutdown may take.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.stop(libc::SIGTERM, GRACE).await
    }

    /// Waits for it to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.process.wait_exit(timeout).await
    }

    /// Waits until it has installed its handler for `signal`.
    pub async fn wait_until_catching(&mut self, signal: i32) {
        self.process.wait_until_catching(signal, READY).await;
    }
}

impl Api {
    /// A client, once the api accepts connections.
    pub async fn client(&self) -> RideServiceClient<Channel> {
        RideServiceClient::new(self.channel().await)
    }

    /// Creates a ride of `distance` metres, without an idempotency key.
    pub async fn create(&self, distance: f64) -> Result<CreateRideResponse, tonic::Status> {
        self.create_ride(CreateRideRequest {
            distance: Some(distance),
            ..Default::default()
        })
        .await
    }

    /// CreateRide with any request (an idempotency key, trace metadata, bad input).
    pub async fn create_ride(
        &self,
        request: impl IntoRequest<CreateRideRequest>,
    ) -> Result<CreateRideResponse, tonic::Status> {
        self.client()
            .await
            .create_ride(request)
            .await
            .map(|r| r.into_inner())
    }

    /// Creates `rides` rides from `callers` concurrent callers, with varied distances; resolves
    /// to how many were acknowledged. Failed calls are retried with the same idempotency key
    /// for up to a minute. Holds only the api's address, so it can be spawned.
    pub fn load(
        &self,
        rides: usize,
        callers: usize,
    ) -> impl Future<Output = usize> + Send + 'static {
        let url = self.url();
        async move {
            let client = RideServiceClient::new(connect(url).await);
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let mut done = 0;
                        for i in (c..rides).step_by(callers) {
                            let request = CreateRideRequest {
                                distance: Some(5.0 + (i * 7919 % 99_500) as f64 / 100.0),
                                idempotency_key: format!("load-{i}-{}", rand::random::<u64>()),
                                rider_id: format!("rider-{}", i % 37),
                            };
                            wait_until("CreateRide to succeed", READY, || {
                                let (mut client, request) = (client.clone(), request.clone());
                                async move { client.create_ride(request).await }
                            })
                            .await;
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
    }
}

impl Consumer {
    /// Its GetTotal answer.
    pub async fn total(&self) -> GetTotalResponse {
        self.try_total().await.unwrap()
    }

    pub async fn try_total(&self) -> Result<GetTotalResponse, String> {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        ConsumerServiceClient::new(channel)
            .get_total(GetTotalRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    }

    /// Waits until it has counted at least `rides` rides; returns its count then.
    pub async fn wait_counted(&self, rides: i64) -> i64 {
        wait_until(
            &format!("{} to count {rides} rides", self.name()),
            Duration::from_secs(120),
            || async {
                match self.try_total().await?.ride_count {
                    now if now >= rides => Ok(now),
                    now => Err(format!("{now} counted")),
                }
            },
        )
        .await
    }

    /// A metric of this consumer (labelled with its name).
    pub async fn metric(&self, name: &str) -> Result<Option<f64>, String> {
        Ok(self
            .metrics()
            .await?
            .get(name, &[("consumer", self.consumer_name())]))
    }

    /// Its CONSUMER_NAME (the process's name, unless it is one instance of several).
    pub fn consumer_name(&self) -> &str {
        self.process
            .env("CONSUMER_NAME")
            .expect("CONSUMER_NAME is set")
    }
}

impl Streamer {
    /// How many partitions it leads, from its `rocket_rides_streamer_leader` gauge.
    pub async fn partitions_led(&self) -> Result<u32, String> {
        match self
            .metrics()
            .await?
            .get("rocket_rides_streamer_leader", &[])
        {
            Some(n) => Ok(n as u32),
            None => Err("no rocket_rides_streamer_leader".into()),
        }
    }

    /// Whether it leads, from its `rocket_rides_streamer_leader` gauge.
    pub async fn is_leading(&self) -> Result<bool, String> {
        match self
            .metrics()
            .await?
            .get("rocket_rides_streamer_leader", &[])
        {
            Some(1.0) => Ok(true),
            Some(0.0) => Ok(false),
            other => Err(format!("rocket_rides_streamer_leader is {other:?}")),
        }
    }

    pub async fn wait_until_leading(&self) {
        wait_until(&format!("{} to lead", self.name()), READY, || async {
            match self.is_leading().await? {
                true => Ok(()),
                false => Err("standing by".to_string()),
            }
        })
        .await;
    }
}

/// A channel to `url`, once something accepts connections there.
async fn connect(url: String) -> Channel {
    wait_until(&format!("{url} to accept connections"), READY, || {
        let endpoint = Channel::from_shared(url.clone()).unwrap();
        async move { endpoint.connect().await }
    })
    .await
}

impl History {
    pub async fn get_ride(&self, ride_id: i64) -> Result<Ride, tonic::Status> {
        HistoryServiceClient::new(self.channel().await)
            .get_ride(GetRideRequest { ride_id })
            .await
            .map(tonic::Response::into_inner)
    }
}
