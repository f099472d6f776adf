//! `rocket-rides-streamer`: numbers staged log records in Postgres and moves them into the
//! Redis streams, one per partition, in batches, and keeps the streams bounded. Safe to run as
//! several replicas: each partition has one leader at a time (a lease), the others stand by.
//! Serves only gRPC health (for probes). Also the operator's repairs: `republish` and
//! `rewind`.

pub mod config;
mod gauges;
mod leaders;
mod metrics;
pub mod repair;
mod replicas;
mod streamer;
mod trim;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc,
    health::{Dependency, Soundness},
    runner::Runner,
    shutdown::CancellationToken,
};
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::{leaders::Leaders, metrics::Metrics};

/// The binary's name, as logs, traces and health show it.
pub const NAME: &str = "rocket-rides-streamer";

/// Streams (or stands by) until `cancel`, serving health on `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut runner = Runner::start(NAME, &config, cancel).await?;
    let metrics = Metrics::register();
    let pool = config.postgres.pool()?;
    let redis = config.redis.connect(Duration::from_secs(10))?;
    let (sound, held) = Soundness::new();
    runner.monitor(
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        Some(held),
    );
    runner.serve(runner.router(grpc::Services::default())?, listener);
    if config.common.metrics_addr.is_some() {
        let gauges = gauges::run(
            pool.clone(),
            redis.clone(),
            config.stream.clone(),
            config.consumer_expiry,
            metrics.clone(),
            runner.cancel(),
        );
        runner.spawn_worker("gauges", gauges);
    }
    tracing::info!(
        stream = %config.stream,
        batch_size = config.batch_size,
        max_len = config.max_len,
        double_send_rate = config.double_send_rate,
        "streamer starting"
    );
    let leaders = Leaders {
        holder: holder(),
        config,
        pool: pool.clone(),
        metrics,
        sound,
    };
    runner.spawn("streamer", leaders.run(runner.cancel()));
    let result = runner.run().await;
    pool.close().await;
    result
}

/// This replica's name in the lease: host and process, unique while it runs.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}
