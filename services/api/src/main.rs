//! `rocket-rides-api`: serves `rocketrides.v1.RideService` on LISTEN_ADDR (default
//! 0.0.0.0:50051). `rocket-rides-api migrate` applies the database schema and exits.

mod error;
mod rides;
mod validate;

use std::time::Duration;

use anyhow::Context;
use rocket_rides_platform::{
    config, db, grpc,
    health::{self, Dependency, Health},
    metrics,
    retry::Backoff,
    shutdown, telemetry,
};
use rocket_rides_proto::v1::ride_service_server::RideServiceServer;

const SERVICE: &str = "rocketrides.v1.RideService";
const USAGE: &str = "usage: rocket-rides-api [migrate]\n  (no argument)  serve RideService on LISTEN_ADDR\n  migrate         apply the database schema and exit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("rocket-rides-api")?;
    let result = match std::env::args().nth(1).as_deref() {
        None => serve().await,
        Some("migrate") => migrate().await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n{USAGE}")),
    };
    telemetry.shutdown().await;
    result
}

async fn serve() -> anyhow::Result<()> {
    let addr = config::listen_addr("LISTEN_ADDR", "0.0.0.0:50051")?;
    metrics::install()?;
    let pool = db::pool(db::options_from_env()?, 16)?;
    let cancel = shutdown::on_signal();
    let health = Health::new(SERVICE).await;
    let monitor = health::spawn_monitor(
        health.clone(),
        vec![Dependency::Postgres(pool.clone())],
        None,
        cancel.clone(),
    );
    let router = grpc::router(&health, &[SERVICE])?
        .add_service(RideServiceServer::new(rides::Rides::new(pool.clone())));
    let served = grpc::serve(router, addr, health, cancel.clone()).await;
    cancel.cancel();
    monitor.await.ok();
    pool.close().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Applies the schema, waiting up to a minute for Postgres (a migration job often starts
/// before the database is ready).
async fn migrate() -> anyhow::Result<()> {
    let pool = db::pool(db::options_from_env()?, 2)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut backoff = Backoff::default();
    loop {
        match db::migrate(&pool).await {
            Ok(()) => break,
            Err(sqlx::migrate::MigrateError::Execute(e))
                if db::is_unavailable(&e) && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "Postgres not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e).context("applying the database schema failed"),
        }
    }
    tracing::info!(
        migrations = db::MIGRATOR.iter().count(),
        "database schema is up to date"
    );
    Ok(())
}
