//! One `Consumer` per partition of the log.

use rocket_rides_log::{
    driver::{self, Report},
    membership, partition,
};
use rocket_rides_platform::{Error, health::Soundness, shutdown::CancellationToken};
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
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let config = &self.config;
        let Some(partitions) =
            partition::expected(&self.pool, config.partitions, &self.sound, &cancel).await
        else {
            return Ok(());
        };
        // Each partition keeps a connection; a few more load checkpoints.
        let pool = config.postgres.pool_of(partitions as u32 + 2)?;
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
            let (reader, redis) = config.redis.connect_reader(consumer::BLOCK)?;
            let consumer = Consumer {
                config: config.clone(),
                partition: p,
                stream: partition::stream_key(&config.stream, p),
                pool: pool.clone(),
                reader,
                redis,
                metrics: self.metrics.clone(),
                mine: mine.clone(),
            };
            let report = Report {
                partition: p,
                what: "consuming",
                sound: self.sound.clone(),
                halted: self.metrics.gap.clone(),
                errors: "rocket_rides_consumer_errors_total".into(),
                labels: vec![("consumer", config.name.clone())],
            };
            tasks.spawn(driver::drive(
                consumer,
                report,
                Some(mine.clone()),
                cancel.clone(),
            ));
        }
        tracing::info!(
            partitions,
            instance = %config.instance,
            "consuming the partitions the consumer's instances give this one"
        );
        while tasks.join_next().await.is_some() {}
        pool.close().await;
        Ok(())
    }
}
