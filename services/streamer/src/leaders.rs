//! One `Streamer` per partition of the log, each leading its partition or standing by for it,
//! and what they share: the api's wake-ups (one LISTEN connection for all of them).

use std::time::Duration;

use rocket_rides_log::{
    driver::{self, Report},
    membership, partition, sql,
};
use rocket_rides_platform::{
    Error, health::Soundness, retry::Backoff, shutdown::CancellationToken,
};
use sqlx::{PgPool, postgres::PgListener};
use tokio::{sync::watch, task::JoinSet};

use crate::{Config, metrics::Metrics, streamer::Streamer};

/// The streamer replicas' group: they share the partitions' leadership.
const GROUP: &str = "streamer";

pub struct Leaders {
    pub config: Config,
    /// This replica's name in the leases.
    pub holder: String,
    pub pool: PgPool,
    pub metrics: Metrics,
    pub sound: Soundness,
}

impl Leaders {
    /// Learns the log's partition count, then runs a streamer per partition until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let config = &self.config;
        let Some(partitions) =
            partition::expected(&self.pool, config.partitions, &self.sound, &cancel).await
        else {
            return Ok(());
        };
        // Each partition keeps a connection; a few more serve leases, partitions and trims.
        let pool = config.postgres.pool_of(2 * partitions as u32 + 2)?;
        if let Err(e) = self.adopt_unpartitioned_stream().await {
            tracing::warn!(error = %e, "could not move the stream of the log before partitions to partition 0's; run `rocket-rides-streamer republish`");
        }
        let (wake, woken) = watch::channel(0u64);
        let (share, mine) = watch::channel(Default::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(listen(self.pool.clone(), wake, cancel.clone()));
        tasks.spawn(membership::run(
            self.pool.clone(),
            GROUP.to_string(),
            self.holder.clone(),
            partitions,
            share,
            cancel.clone(),
        ));
        for p in 0..partitions {
            let redis = config.redis.connect(Duration::from_secs(10))?;
            let streamer = Streamer {
                config: config.clone(),
                partition: p,
                stream: partition::stream_key(&config.stream, p),
                holder: self.holder.clone(),
                pool: pool.clone(),
                redis,
                metrics: self.metrics.clone(),
                sound: self.sound.clone(),
                wake: woken.clone(),
                mine: mine.clone(),
                progress: std::time::Instant::now(),
            };
            let report = Report {
                partition: p,
                what: "streaming",
                sound: self.sound.clone(),
                halted: self.metrics.halted.clone(),
                errors: "rocket_rides_streamer_errors_total".into(),
                labels: Vec::new(),
            };
            tasks.spawn(driver::drive(
                streamer,
                report,
                Some(mine.clone()),
                cancel.clone(),
            ));
        }
        tracing::info!(
            partitions,
            "leading the partitions the streamer group gives this replica"
        );
        while tasks.join_next().await.is_some() {}
        pool.close().await;
        Ok(())
    }

    /// A log from before partitions streamed to `<STREAM_NAME>` itself, which is now partition
    /// 0's: its stream is renamed `<STREAM_NAME>:{0}` once, unless that already exists. (On a
    /// cluster the two names are in different slots and RENAME refuses: republish instead.)
    async fn adopt_unpartitioned_stream(&self) -> Result<(), Box<dyn std::error::Error>> {
        let mut redis = self.config.redis.connect(Duration::from_secs(10))?;
        let old = &self.config.stream;
        let kind: String = redis::cmd("TYPE").arg(old).query_async(&mut redis).await?;
        if kind != "stream" {
            return Ok(());
        }
        let new = partition::stream_key(old, 0);
        let moved: bool = redis::cmd("RENAMENX")
            .arg(old)
            .arg(&new)
            .query_async(&mut redis)
            .await?;
        if moved {
            tracing::info!(from = %old, to = %new, "the log's stream is partition 0's now");
        }
        Ok(())
    }
}

/// Bumps `wake` at every notification from the api, reconnecting as needed (the streamers poll
/// as well, so a lost notification only delays).
async fn listen(pool: PgPool, wake: watch::Sender<u64>, cancel: CancellationToken) {
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        let listened = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(sql::WAKE_CHANNEL).await?;
            loop {
                listener.recv().await?;
                while listener.next_buffered().is_some() {}
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        let result: Result<(), sqlx::Error> = tokio::select! {
            _ = cancel.cancelled() => return,
            result = listened => result,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "listening for wake-ups failed; the streamers poll meanwhile");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
