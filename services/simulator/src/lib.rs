//! `rocket-rides-simulator`: creates rides at RIDES_PER_SECOND against API_URL, with random
//! distances of 5 to 1000 m, and (with CONSUMER_URLS) reports whether the consumers agree.
//! Serves only gRPC health (for probes).

pub mod config;
mod metrics;
mod report;
mod rides;

use std::time::Duration;

use rocket_rides_platform::{Error, grpc, runner::Runner, shutdown::CancellationToken};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

pub use crate::config::Config;

/// The binary's name, as logs, traces and health show it.
pub const NAME: &str = "rocket-rides-simulator";

/// Issues rides until `cancel`, serving health on `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut runner = Runner::start(NAME, &config, cancel).await?;
    let metrics = metrics::Metrics::register();
    let api = channel(&config.api_url)?;
    let consumers = config
        .consumer_urls
        .iter()
        .map(|url| channel(url))
        .collect::<Result<Vec<_>, _>>()?;
    runner.monitor(vec![], None);
    runner.serve(runner.router(grpc::Services::default())?, listener);

    tracing::info!(api_url = %config.api_url, rides_per_second = config.rides_per_second, "simulator starting");
    let created = rides::Counter::default();
    if !consumers.is_empty() {
        runner.spawn_worker(
            "report",
            report::run(consumers, created.clone(), runner.cancel()),
        );
    }
    let rides = rides::run(
        api,
        config.rides_per_second,
        created,
        metrics,
        runner.cancel(),
    );
    runner.spawn_worker("rides", rides);
    runner.run().await
}

/// A lazily connecting channel, so the simulator starts before the services it calls.
fn channel(url: &str) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            Error::invalid(
                "API_URL/CONSUMER_URLS",
                url,
                format!("{e} (expected e.g. http://127.0.0.1:50051)"),
            )
        })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}
