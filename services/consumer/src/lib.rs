//! `rocket-rides-consumer`: reads the log from its own checkpoint and keeps a running total of
//! ride distance, exactly once in effect. Serves `rocketrides.v1.ConsumerService`.
//! CONSUMER_NAME is its identity and must be unique.

mod checkpoint;
pub mod config;
mod consumer;
mod metrics;
mod plan;
mod service;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc, health::Dependency, runner::Runner, shutdown::CancellationToken,
};
use rocket_rides_proto::v1::consumer_service_server::ConsumerServiceServer;
use tokio::{net::TcpListener, sync::watch};

pub use crate::config::Config;
use crate::{consumer::Consumer, metrics::Metrics};

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
    // The blocking XREAD gets a connection of its own: on a shared (multiplexed) one, health
    // pings would queue behind it and report Redis down whenever the log is idle. Its response
    // timeout is longer than the block, so a blocked read is not mistaken for a dead server.
    let reader = config
        .redis
        .connect(consumer::BLOCK + Duration::from_secs(5))?;
    let redis = config.redis.connect(Duration::from_secs(5))?;

    let (published, committed) = watch::channel(None);
    let (sound, held) = watch::channel(true);
    runner.monitor(
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        Some(held),
    );
    let totals = service::Totals {
        name: config.name.clone(),
        committed,
    };
    let services = grpc::Services {
        names: &[SERVICE],
        descriptors: rocket_rides_proto::FILE_DESCRIPTOR_SET,
    };
    let router =
        grpc::router(runner.health(), services)?.add_service(ConsumerServiceServer::new(totals));
    runner.serve(router, listener);

    tracing::info!(
        consumer = %config.name,
        stream = %config.stream,
        crash_rate = config.crash_rate,
        "consumer starting"
    );
    let consumer = Consumer {
        config,
        pool: pool.clone(),
        reader,
        redis,
        metrics,
        published,
        sound,
    };
    runner.spawn_worker("consumer", consumer.run(runner.cancel()));
    let result = runner.run().await;
    pool.close().await;
    result
}
