//! One `Consumer` per partition of the log.

use rocket_rides_log::{membership, partition};
use rocket_rides_platform::{health::Soundness, shutdown::CancellationToken};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    Config,
    consumer::{self, Consumer},
    metrics::Metrics,
};

pub struct Partitions {
    pub config: Config,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub sound: Soundness,
}

impl Partitions {
    /// Learns the log's partition count, then consumes every partition until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let config = &self.config;
        let Some(partitions) =
            partition::expected(&self.pool, config.partitions, &self.sound, &cancel).await
        else {
            return;
        };
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
            let (reader, redis) = match config.redis.connect_reader(consumer::BLOCK) {
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
