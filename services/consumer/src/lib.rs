//! `rocket-rides-consumer`: reads every partition of the log from its own checkpoint there and
//! keeps a running total of ride distance, exactly once in effect. Serves
//! `rocketrides.v1.ConsumerService`. CONSUMER_NAME is its identity.

mod checkpoint;
pub mod config;
mod consumer;
mod metrics;
mod partitions;
mod service;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc,
    health::{Dependency, Soundness},
    runner::Runner,
    shutdown::CancellationToken,
};
use rocket_rides_proto::v1::consumer_service_server::ConsumerServiceServer;
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::{metrics::Metrics, partitions::Partitions};

/// The binary's name, as logs and traces show it.
pub const NAME: &str = "rocket-rides-consumer";
const SERVICE: &str = "rocketrides.v1.ConsumerService";

/// Consumes the log and serves its totals on `listener` until `cancel`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut runner = Runner::start(SERVICE, &config, cancel).await?;
    let metrics = Metrics::register(&config.name);
    let pool = config.postgres.pool()?;
    let redis = config.redis.connect(Duration::from_secs(5))?;
    let (sound, held) = Soundness::new();
    runner.monitor(
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        Some(held),
    );
    let totals = service::Totals {
        stream: config.stream.clone(),
        name: config.name.clone(),
        pool: pool.clone(),
    };
    let services = grpc::Services {
        names: &[SERVICE],
        descriptors: rocket_rides_proto::FILE_DESCRIPTOR_SET,
    };
    let router = runner
        .router(services)?
        .add_service(ConsumerServiceServer::new(totals));
    runner.serve(router, listener);

    tracing::info!(
        consumer = %config.name,
        stream = %config.stream,
        crash_rate = config.crash_rate,
        "consumer starting"
    );
    let partitions = Partitions {
        config,
        pool: pool.clone(),
        metrics,
        sound,
    };
    runner.spawn("consumer", partitions.run(runner.cancel()));
    let result = runner.run().await;
    pool.close().await;
    result
}
