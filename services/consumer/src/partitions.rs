//! One `Consumer` per partition of the log.

use std::time::Duration;

use rocket_rides_log::{membership, partition};
use rocket_rides_platform::{health::Soundness, shutdown::CancellationToken};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    Config,
    consumer::{self, Consumer},
    metrics::Metrics,
};

/// The part of the soundness a wrong LOG_PARTITIONS holds down.
const CONFIG_PART: i32 = -1;

pub struct Partitions {
    pub config: Config,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub sound: Soundness,
}

impl Partitions {
    /// Learns the log's partition count, then consumes every partition until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(partitions) = partition::count(&self.pool, &cancel).await else {
            return;
        };
        let config = &self.config;
        if let Some(wanted) = config.partitions
            && wanted != partitions
        {
            tracing::error!(
                log_partitions = partitions,
                configured = wanted,
                "LOG_PARTITIONS does not match the log's partition count (fixed when the log was \
                 created); not consuming. Unset LOG_PARTITIONS or set it to {partitions}"
            );
            self.sound.set(CONFIG_PART, false);
            cancel.cancelled().await;
            return;
        }
        // Each partition keeps a connection; a few more load checkpoints.
        let pool = match config.postgres.pool_of(partitions as u32 + 2) {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a connection pool");
                return;
            }
        };
        let (share, mine) = watch::channel(Default::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(membership::run(
            self.pool.clone(),
            format!("consumer:{}:{}", config.stream, config.name),
            config.instance.clone(),
            partitions,
            share,
            cancel.clone(),
        ));
        for p in 0..partitions {
            // The blocking XREAD gets a connection of its own: on a shared (multiplexed) one,
            // other commands would queue behind it. Its response timeout is longer than the
            // block, so a blocked read is not mistaken for a dead server.
            let connections = config
                .redis
                .connect(consumer::BLOCK + Duration::from_secs(5))
                .and_then(|reader| Ok((reader, config.redis.connect(Duration::from_secs(5))?)));
            let (reader, redis) = match connections {
                Ok(connections) => connections,
                Err(e) => {
                    tracing::error!(error = %e, "cannot connect to Redis");
                    return;
                }
            };
            let consumer = Consumer {
                config: config.clone(),
                partition: p,
                stream: partition::stream_key(&config.stream, p),
                pool: pool.clone(),
                reader,
                redis,
                metrics: self.metrics.clone(),
                sound: self.sound.clone(),
                mine: mine.clone(),
            };
            tasks.spawn(consumer.run(cancel.clone()));
        }
        tracing::info!(
            partitions,
            instance = %config.instance,
            "consuming the partitions the consumer's instances give this one"
        );
        while tasks.join_next().await.is_some() {}
        pool.close().await;
    }
}
