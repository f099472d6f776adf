//! `rocket-rides-simulator`: creates rides at RIDES_PER_SECOND against API_URL, with random
//! distances of 5 to 1000 m, and (with CONSUMER_URLS) reports whether the consumers agree.
//! Serves only gRPC health (for probes).

mod balance;
pub mod config;
mod metrics;
mod report;
mod rides;

use rocket_rides_platform::{Error, grpc, runner::Runner, shutdown::CancellationToken};
use tokio::net::TcpListener;

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
    let api = balance::channel("API_URL", &config.api_url)?;
    let consumers = config
        .consumer_urls
        .iter()
        .map(|url| balance::channel("CONSUMER_URLS", url))
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
