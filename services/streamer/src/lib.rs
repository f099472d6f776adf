//! `rocket-rides-streamer`: moves staged log records from Postgres into the Redis stream, in
//! batches, and keeps the stream bounded. Safe to run as several replicas: one leads, the
//! others stand by. Serves only gRPC health (for probes).

pub mod config;
mod gauges;
mod metrics;
mod streamer;
mod trim;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc, health::Dependency, runner::Runner, shutdown::CancellationToken,
};
use tokio::net::TcpListener;

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
    runner.monitor(
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        None,
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
    let streamer = Streamer::new(&config, pool.clone(), redis, metrics)?;
    runner.spawn_worker("streamer", streamer.run(runner.cancel()));
    let result = runner.run().await;
    pool.close().await;
    result
}
