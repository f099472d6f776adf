//! `rocket-rides-history`: a worker group that projects every ride of the log into a read
//! model (`ride_history`) through Redis consumer groups, one group `history` per partition
//! stream, and serves it as `rocketrides.v1.HistoryService`. Run any number of replicas: Redis
//! shares the entries out among them, and the others claim what a dead one left pending.

pub mod config;
mod project;
mod service;

use std::time::Duration;

use rocket_rides_log::{
    driver, partition,
    reader::group_reader::{self, Connections, GroupMetrics, GroupReader},
};
use rocket_rides_platform::{
    Error, grpc,
    health::{Dependency, Soundness},
    runner::Runner,
    shutdown::CancellationToken,
};
use rocket_rides_proto::v1::history_service_server::HistoryServiceServer;
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};

pub use crate::config::Config;
use crate::project::Projector;

/// The binary's name, as logs and traces show it.
pub const NAME: &str = "rocket-rides-history";
const SERVICE: &str = "rocketrides.v1.HistoryService";

/// Projects the log and serves the history on `listener` until `cancel`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut runner = Runner::start(SERVICE, &config, cancel).await?;
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
    let services = grpc::Services {
        names: &[SERVICE],
        descriptors: rocket_rides_proto::FILE_DESCRIPTOR_SET,
    };
    let history = service::History { pool: pool.clone() };
    let router = runner
        .router(services)?
        .add_service(HistoryServiceServer::new(history));
    runner.serve(router, listener);
    tracing::info!(
        member = %config.instance,
        stream = %config.stream,
        claim_idle = ?config.claim_idle,
        max_deliveries = config.max_deliveries,
        "history starting"
    );
    runner.spawn(
        "history",
        project_all(config, pool.clone(), sound, runner.cancel()),
    );
    let result = runner.run().await;
    pool.close().await;
    result
}

/// Learns the log's partitions, then runs a member per partition until `cancel`.
async fn project_all(
    config: Config,
    pool: PgPool,
    sound: Soundness,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let Some(partitions) = partition::expected(&pool, config.partitions, &sound, &cancel).await
    else {
        return Ok(());
    };
    let metrics = GroupMetrics::register("history");
    let mut tasks = JoinSet::new();
    for p in 0..partitions {
        let (reader, redis) = config.redis.connect_reader(group_reader::BLOCK)?;
        let member = GroupReader::new(
            config.group(),
            p,
            pool.clone(),
            Connections { reader, redis },
            metrics.clone(),
            Projector { pool: pool.clone() },
        );
        let report = member.report(sound.clone());
        tasks.spawn(driver::drive(member, report, None, cancel.clone()));
    }
    tracing::info!(partitions, member = %config.instance, "projecting every partition as a member of its consumer group");
    while tasks.join_next().await.is_some() {}
    Ok(())
}
