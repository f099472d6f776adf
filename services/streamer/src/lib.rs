//! `rocket-rides-streamer`: numbers staged log records in Postgres and moves them into the
//! Redis stream, in batches, and keeps the stream bounded. Safe to run as several replicas:
//! one leads (a lease), the others stand by. Serves only gRPC health (for probes). Also the
//! operator's repairs: `republish` and `rewind`.

pub mod config;
mod gauges;
mod lease;
mod metrics;
mod partitions;
pub mod repair;
mod streamer;
mod trim;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc, health::Dependency, runner::Runner, shutdown::CancellationToken,
};
use tokio::{net::TcpListener, sync::watch};

pub use crate::config::Config;
use crate::{metrics::Metrics, streamer::Streamer};

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
    let (sound, held) = watch::channel(true);
    runner.monitor(
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        Some(held),
    );
    runner.serve(
        grpc::router(runner.health(), grpc::Services::default())?,
        listener,
    );
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
    let streamer = Streamer {
        holder: holder(),
        config,
        pool: pool.clone(),
        redis,
        metrics,
        sound,
        progress: std::time::Instant::now(),
    };
    runner.spawn_worker("streamer", streamer.run(runner.cancel()));
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
