//! `rocket-rides-consumer`: reads the log from its own checkpoint and keeps a running total of
//! ride distance, exactly once in effect. Serves `rocketrides.v1.ConsumerService` on
//! LISTEN_ADDR (default 0.0.0.0:50052). CONSUMER_NAME is its identity and must be unique.

mod checkpoint;
mod consumer;
mod plan;
mod service;

use std::time::Duration;

use rocket_rides_platform::{
    config, db, grpc,
    health::{self, Dependency, Health},
    metrics, redis as redis_conn, shutdown, telemetry,
};
use rocket_rides_proto::v1::consumer_service_server::ConsumerServiceServer;
use tokio::sync::watch;

use crate::consumer::{Consumer, Settings};

const SERVICE: &str = "rocketrides.v1.ConsumerService";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("rocket-rides-consumer")?;
    let addr = config::listen_addr("LISTEN_ADDR", "0.0.0.0:50052")?;
    metrics::install()?;
    let settings = Settings {
        stream: config::stream_name(),
        name: config::required(
            "CONSUMER_NAME",
            "every consumer needs a unique name: it identifies its checkpoint",
        )?,
        batch_size: config::positive("BATCH_SIZE", 1000)?,
        crash_rate: config::rate("CRASH_RATE")?,
    };
    let pool = db::pool(db::options_from_env()?, 4)?;
    // The blocking XREAD gets a connection of its own: on a shared (multiplexed) one, health
    // pings would queue behind it and report Redis down whenever the log is idle. Its response
    // timeout is longer than the block, so a blocked read is not mistaken for a dead server.
    let reader = redis_conn::connect_from_env(consumer::BLOCK + Duration::from_secs(5))?;
    let redis = redis_conn::connect_from_env(Duration::from_secs(5))?;
    let cancel = shutdown::on_signal();

    let (published, committed) = watch::channel(None);
    let (sound, held) = watch::channel(true);
    let health = Health::new(SERVICE).await;
    let monitor = health::spawn_monitor(
        health.clone(),
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        Some(held),
        cancel.clone(),
    );
    let totals = service::Totals {
        name: settings.name.clone(),
        committed,
    };
    let router = grpc::router(&health, &[SERVICE])?.add_service(ConsumerServiceServer::new(totals));
    let server = tokio::spawn(grpc::serve(router, addr, health, cancel.clone()));

    tracing::info!(
        consumer = %settings.name,
        stream = %settings.stream,
        crash_rate = settings.crash_rate,
        "consumer starting"
    );
    Consumer::new(settings, pool.clone(), reader, redis, published, sound)
        .run(cancel.clone())
        .await;
    cancel.cancel();
    monitor.await.ok();
    let served = server.await?;
    pool.close().await;
    tracing::info!("stopped");
    telemetry.shutdown().await;
    Ok(served?)
}
