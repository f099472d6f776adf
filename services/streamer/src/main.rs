//! `rocket-rides-streamer`: moves staged log records from Postgres into the Redis stream, in
//! batches, and keeps the stream bounded. Safe to run as several replicas: one leads, the
//! others stand by. Serves only gRPC health (for probes) on LISTEN_ADDR (default 0.0.0.0:50053).

mod gauges;
mod streamer;
mod trim;

use std::time::Duration;

use rocket_rides_platform::{
    config, db, grpc,
    health::{self, Dependency, Health},
    metrics, redis as redis_conn, shutdown, telemetry,
};

use crate::streamer::{Settings, Streamer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("rocket-rides-streamer")?;
    let addr = config::listen_addr("LISTEN_ADDR", "0.0.0.0:50053")?;
    let metrics_on = metrics::install()?.is_some();
    let settings = Settings {
        stream: config::stream_name(),
        batch_size: config::positive("BATCH_SIZE", 1000)?,
        max_len: config::positive("STREAM_MAX_LEN", 10_000)?,
        double_send_rate: config::rate("DOUBLE_SEND_RATE")?,
    };
    let options = db::options_from_env()?;
    let pool = db::pool(options.clone(), 4)?;
    let redis = redis_conn::connect_from_env(Duration::from_secs(10))?;
    let cancel = shutdown::on_signal();

    let health = Health::new("rocket-rides-streamer").await;
    let monitor = health::spawn_monitor(
        health.clone(),
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis.clone()),
        ],
        None,
        cancel.clone(),
    );
    let server = tokio::spawn(grpc::serve(
        grpc::router(&health, &[])?,
        addr,
        health,
        cancel.clone(),
    ));

    let gauges = metrics_on.then(|| {
        tokio::spawn(gauges::run(
            pool.clone(),
            redis.clone(),
            settings.stream.clone(),
            cancel.clone(),
        ))
    });
    tracing::info!(
        stream = %settings.stream,
        batch_size = settings.batch_size,
        max_len = settings.max_len,
        double_send_rate = settings.double_send_rate,
        "streamer starting"
    );
    Streamer::new(settings, options, pool.clone(), redis)
        .run(cancel.clone())
        .await;
    cancel.cancel();
    monitor.await.ok();
    if let Some(gauges) = gauges {
        gauges.await.ok();
    }
    let served = server.await?;
    pool.close().await;
    tracing::info!("stopped");
    telemetry.shutdown().await;
    Ok(served?)
}
