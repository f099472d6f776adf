//! `rocket-rides-simulator`: creates rides at RIDES_PER_SECOND against API_URL, with random
//! distances of 5 to 1000 m, and (with CONSUMER_URLS) reports whether the consumers agree.
//! Serves only gRPC health (for probes) on LISTEN_ADDR (default 0.0.0.0:50054).

mod report;
mod rides;

use std::time::Duration;

use anyhow::Context;
use rocket_rides_platform::{config, grpc, health, health::Health, metrics, shutdown, telemetry};
use tonic::transport::{Channel, Endpoint};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("rocket-rides-simulator")?;
    let addr = config::listen_addr("LISTEN_ADDR", "0.0.0.0:50054")?;
    metrics::install()?;
    let api_url = config::var("API_URL").unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let rate: f64 = config::parse_or("RIDES_PER_SECOND", 5.0)?;
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "RIDES_PER_SECOND={rate} is not valid: expected a number greater than 0"
    );
    let consumers = config::var("CONSUMER_URLS")
        .map(|urls| {
            urls.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(channel)
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    let api = channel(&api_url)?;
    let cancel = shutdown::on_signal();

    let health = Health::new("rocket-rides-simulator").await;
    let monitor = health::spawn_monitor(health.clone(), vec![], None, cancel.clone());
    let server = tokio::spawn(grpc::serve(
        grpc::router(&health, &[])?,
        addr,
        health,
        cancel.clone(),
    ));

    tracing::info!(%api_url, rides_per_second = rate, "simulator starting");
    let created = rides::Counter::default();
    let reporter = (!consumers.is_empty())
        .then(|| tokio::spawn(report::run(consumers, created.clone(), cancel.clone())));
    rides::run(api, rate, created, cancel.clone()).await;
    cancel.cancel();
    if let Some(reporter) = reporter {
        reporter.await.ok();
    }
    monitor.await.ok();
    let served = server.await?;
    tracing::info!("stopped");
    telemetry.shutdown().await;
    Ok(served?)
}

/// A lazily connecting channel, so the simulator starts before the services it calls.
fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| {
            format!("{url:?} is not a valid URL (expected e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}
