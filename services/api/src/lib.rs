//! `rocket-rides-api`: serves `rocketrides.v1.RideService`; `migrate` applies the schema.

pub mod config;
mod error;
mod group;
mod metrics;
mod outcome;
mod rides;
mod session;
mod validate;
mod wake;

use std::time::Duration;

use rocket_rides_platform::{
    Error, grpc,
    health::Dependency,
    postgres::{self, PostgresConfig},
    retry::Backoff,
    runner::Runner,
    shutdown::CancellationToken,
};
use rocket_rides_proto::v1::ride_service_server::RideServiceServer;
use tokio::net::TcpListener;

pub use crate::config::Config;

/// The binary's name, as logs and traces show it.
pub const NAME: &str = "rocket-rides-api";
const SERVICE: &str = "rocketrides.v1.RideService";

/// Serves RideService on `listener` until `cancel`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut runner = Runner::start(SERVICE, &config, cancel).await?;
    let pool = config.postgres.pool()?;
    runner.monitor(vec![Dependency::Postgres(pool.clone())], None);
    let waker = wake::Waker::default();
    runner.spawn_worker(
        "streamer wake-ups",
        waker.clone().run(pool.clone(), runner.cancel()),
    );
    let (group, writers) = group::GroupCommit::new(
        pool.clone(),
        config.batch,
        metrics::Metrics::register(),
        waker,
    );
    runner.spawn_worker("group commit", writers);
    let rides = rides::Rides::new(group);
    let services = grpc::Services {
        names: &[SERVICE],
        descriptors: rocket_rides_proto::FILE_DESCRIPTOR_SET,
    };
    let router = runner
        .router(services)?
        .add_service(RideServiceServer::new(rides));
    runner.serve(router, listener);
    let result = runner.run().await;
    pool.close().await;
    result
}

/// How long `migrate` waits for Postgres: a migration job often starts before the database.
const MIGRATE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Config(#[from] Error),
    #[error("applying the database schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("shutdown asked for before the schema was applied")]
    Cancelled,
    #[error(transparent)]
    Partitions(#[from] rocket_rides_log::schema::PartitionsError),
}

/// Applies the schema, waiting up to `MIGRATE_WAIT` for Postgres to be reachable, then gives a
/// new log `partitions` partitions (`LOG_PARTITIONS`; none: leave the count as it is).
pub async fn migrate(
    config: &PostgresConfig,
    partitions: Option<i32>,
    cancel: CancellationToken,
) -> Result<(), MigrateError> {
    let pool = config.pool()?;
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    let mut backoff = Backoff::default();
    let result = loop {
        match rocket_rides_log::schema::migrate(&pool).await {
            Ok(()) => break Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if postgres::is_unavailable(&e) && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "Postgres not reachable yet; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break Err(MigrateError::Cancelled),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => break Err(e.into()),
        }
    };
    let result = match (result, partitions) {
        (Ok(()), Some(n)) => rocket_rides_log::schema::set_partitions(&pool, n)
            .await
            .map_err(Into::into),
        (result, _) => result,
    };
    pool.close().await;
    if result.is_ok() {
        tracing::info!(
            migrations = rocket_rides_log::schema::MIGRATOR.iter().count(),
            "database schema is up to date"
        );
    }
    result
}
