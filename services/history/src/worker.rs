//! One partition's worker: a member of the partition stream's consumer group. It projects what
//! the group delivers to it and acknowledges each entry only after its row is committed; every
//! so often it claims what other members left pending too long (they died, or the entry failed
//! and waits for a retry), dead-letters entries that failed `MAX_DELIVERIES` deliveries,
//! projects from the archive what the stream lost before the group read it, and forgets members
//! long gone. Nothing here is transactional with Redis: the upsert is idempotent, so a delivery
//! repeated after a crash between commit and XACK changes nothing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rocket_rides_log::{Entry, LogRecord, StreamId, archive, stream};
use rocket_rides_platform::{
    redis_conn::RedisConnection,
    retry::Backoff,
    shutdown::CancellationToken,
    telemetry::{propagation, spans},
};
use sqlx::PgPool;
use tracing::Instrument;

use crate::{
    Config,
    group::{self, DeadLetter, GroupError},
    metrics::{Metrics, PartitionGauges},
    project,
};

/// How long one XREADGROUP waits for new entries.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Archive pages when catching up on what the stream lost.
const CATCH_UP_PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
enum WorkError {
    #[error("{0}")]
    Group(#[from] GroupError),
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

impl From<redis::RedisError> for WorkError {
    fn from(e: redis::RedisError) -> Self {
        Self::Group(e.into())
    }
}

pub struct Worker {
    pub config: Config,
    pub partition: i32,
    pub stream: String,
    /// The log id of this database: an entry of another log is never projected.
    pub log_id: String,
    pub pool: PgPool,
    /// For the blocking XREADGROUP only.
    pub reader: RedisConnection,
    pub redis: RedisConnection,
    pub metrics: Metrics,
    /// The partition's gauges, looked up once.
    pub gauges: PartitionGauges,
}

impl Worker {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.work(&cancel, &mut backoff).await {
                Ok(()) => break,
                Err(e) => e,
            };
            let delay = match &error {
                // Redis lost the stream or the group: recreate it now.
                WorkError::Group(GroupError::Missing(_)) => Duration::from_millis(100),
                _ => backoff.next_delay(),
            };
            tracing::warn!(partition = self.partition, error = %error, retry_in = ?delay, "projecting interrupted; unacknowledged entries stay pending and are delivered again");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // Leave the group if nothing is pending here, so members named by pod do not pile up.
        if let Err(e) = group::leave(&mut self.redis, &self.stream, &self.config.instance).await {
            tracing::debug!(error = %e, "could not leave the group");
        }
    }

    async fn work(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), WorkError> {
        if group::create(&mut self.redis, &self.stream).await? {
            tracing::info!(
                partition = self.partition,
                stream = %self.stream,
                "created the consumer group at the stream's start"
            );
        }
        let round_every =
            (self.config.claim_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut next_round = Instant::now();
        loop {
            if Instant::now() >= next_round {
                self.round().await?;
                next_round = Instant::now() + round_every;
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
            // Not cut short by a shutdown: what Redis delivers is projected and acknowledged
            // before the member leaves, rather than left pending for a claim.
            let block = BLOCK.min(round_every);
            let (member, count) = (&self.config.instance, self.config.batch_size);
            let entries =
                group::read_new(&mut self.reader, &self.stream, member, count, block).await?;
            backoff.reset();
            if !entries.is_empty() {
                self.metrics.deliveries.increment(entries.len() as u64);
                self.handle(&entries).await?;
            }
        }
    }

    /// The periodic part: claim, project what the stream lost, forget the long gone, measure.
    async fn round(&mut self) -> Result<(), WorkError> {
        let Config {
            claim_idle,
            batch_size,
            member_expiry,
            ..
        } = self.config;
        let instance = self.config.instance.clone();
        let claimed = group::claim(
            &mut self.redis,
            &self.stream,
            &instance,
            claim_idle,
            batch_size,
        )
        .await?;
        if !claimed.deleted.is_empty() {
            // Trimmed while pending (the group was away past CONSUMER_EXPIRY): the archive has
            // them.
            tracing::warn!(
                partition = self.partition,
                entries = claimed.deleted.len(),
                "pending entries were trimmed from the stream; projecting them from the archive"
            );
            for id in &claimed.deleted {
                self.project_archived(id.log_seq() - 1, id.log_seq())
                    .await?;
            }
        }
        if !claimed.entries.is_empty() {
            tracing::info!(
                partition = self.partition,
                entries = claimed.entries.len(),
                "claimed entries left pending for {claim_idle:?}"
            );
            self.metrics.claims.increment(claimed.entries.len() as u64);
            self.metrics
                .deliveries
                .increment(claimed.entries.len() as u64);
            self.handle(&claimed.entries).await?;
        }
        self.catch_up().await?;
        for gone in
            group::forget_gone(&mut self.redis, &self.stream, &instance, member_expiry).await?
        {
            tracing::info!(partition = self.partition, member = %gone, "removed a member gone for {member_expiry:?} with nothing pending");
        }
        Ok(())
    }

    /// Projects from the archive the records the stream lost before the group read them
    /// (trimmed while no member was reading, or Redis lost them), then moves the group past
    /// them. Also measures the group's backlog.
    async fn catch_up(&mut self) -> Result<(), WorkError> {
        let Some(info) = group::info(&mut self.redis, &self.stream).await? else {
            return Err(GroupError::Missing(self.stream.clone()).into());
        };
        let labels = &self.gauges;
        labels.pending.set(info.pending as f64);
        labels
            .lag_entries
            .set((info.pending + info.lag.unwrap_or(0)) as f64);
        if info.pending == 0 && info.lag == Some(0) {
            labels.lag_seconds.set(0.0);
        }
        let delivered = info
            .last_delivered_id
            .parse::<StreamId>()
            .map_err(GroupError::from)?
            .log_seq();
        let upto = match stream::read_first(&mut self.redis, &self.stream).await? {
            Some(first) => first - 1,
            None => stream::last_id(&mut self.redis, &self.stream)
                .await?
                .log_seq(),
        };
        if delivered >= upto {
            return Ok(());
        }
        tracing::warn!(
            partition = self.partition,
            after = delivered,
            upto,
            "the stream lost entries the group had not read; projecting them from the archive"
        );
        self.project_archived(delivered, upto).await?;
        // Entries after `upto` stay deliverable; an entry delivered meanwhile by another member
        // may be delivered again, which the upsert makes harmless.
        redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&self.stream)
            .arg(crate::config::GROUP)
            .arg(StreamId::of_seq(upto))
            .query_async::<()>(&mut self.redis)
            .await?;
        Ok(())
    }

    /// Projects the archived records with `after < seq <= upto`.
    async fn project_archived(&self, mut after: i64, upto: i64) -> Result<(), WorkError> {
        loop {
            let page = archive::range(&self.pool, self.partition, after, upto, CATCH_UP_PAGE)
                .instrument(spans::postgres("SELECT log_records (archive)"))
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.seq;
            let records: Vec<&LogRecord> = page.iter().collect();
            let found = project::project(&self.pool, &records).await?;
            self.metrics.projected.increment(found.len() as u64);
            if page.len() < CATCH_UP_PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Projects delivered entries and acknowledges those done; failures stay pending for a
    /// retry (a claim after `CLAIM_IDLE`) until they have failed `MAX_DELIVERIES` deliveries,
    /// then go to the dead-letter stream. A Postgres error fails the whole batch (nothing
    /// acknowledged, nothing counted against the entries beyond Redis's delivery count).
    async fn handle(&mut self, entries: &[Entry]) -> Result<(), WorkError> {
        let batch = tracing::info_span!(
            "project batch",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %self.stream,
            messaging.consumer.group.name = crate::config::GROUP,
            member = %self.config.instance,
            messaging.batch.message_count = entries.len(),
        );
        let mut failures: Vec<(StreamId, String)> = Vec::new();
        let mut records: Vec<(StreamId, &LogRecord)> = Vec::new();
        for entry in entries {
            match &entry.record {
                Ok(record) if record.log == self.log_id => records.push((entry.id, record)),
                Ok(record) => failures.push((
                    entry.id,
                    format!(
                        "written by log {:?}, but this database's log is {:?} (two environments \
                         on one Redis?)",
                        record.log, self.log_id
                    ),
                )),
                Err(e) => failures.push((entry.id, format!("not a log record: {e}"))),
            }
        }
        let _ride_spans: Vec<tracing::Span> = records
            .iter()
            .map(|(id, record)| {
                let span = tracing::info_span!(
                    parent: None,
                    "project ride",
                    otel.kind = "consumer",
                    messaging.system = "redis",
                    ride.id = record.ride_id,
                    log.seq = record.seq,
                    stream.id = %id,
                );
                propagation::join(span, &record.trace, &batch)
            })
            .collect();
        let rides: Vec<&LogRecord> = records.iter().map(|(_, r)| *r).collect();
        let found = match rides.is_empty() {
            true => HashMap::new(),
            false => {
                project::project(&self.pool, &rides)
                    .instrument(batch.in_scope(|| spans::postgres("INSERT ride_history")))
                    .await?
            }
        };
        let mut done: Vec<StreamId> = Vec::with_capacity(entries.len());
        for (id, record) in &records {
            if found.contains_key(&record.ride_id) {
                done.push(*id);
            } else {
                failures.push((
                    *id,
                    format!(
                        "Postgres has no ride {} of {} m: was it restored to an earlier state?",
                        record.ride_id, record.distance
                    ),
                ));
            }
        }
        group::ack(&mut self.redis, &self.stream, &done).await?;
        let metrics = &self.metrics;
        metrics.projected.increment(done.len() as u64);
        metrics.batch_size.record(entries.len() as f64);
        if let Some(age) = found.values().copied().reduce(f64::max) {
            self.gauges.lag_seconds.set(age);
        }
        if !failures.is_empty() {
            self.settle(failures).await?;
        }
        Ok(())
    }

    /// Dead-letters the failed entries that have used up their deliveries; the others wait
    /// for a retry.
    async fn settle(&mut self, mut failures: Vec<(StreamId, String)>) -> Result<(), WorkError> {
        failures.sort_by_key(|(id, _)| *id);
        let (first, last) = (failures[0].0, failures[failures.len() - 1].0);
        let deliveries: HashMap<StreamId, u64> = group::deliveries(
            &mut self.redis,
            &self.stream,
            &self.config.instance,
            first,
            last,
            failures.len().max(self.config.batch_size as usize),
        )
        .await?;
        let max = u64::from(self.config.max_deliveries);
        let mut letters = Vec::new();
        for (id, reason) in &failures {
            let delivered = deliveries.get(id).copied().unwrap_or(1);
            if delivered >= max {
                tracing::error!(partition = self.partition, stream_id = %id, deliveries = delivered, error = %reason, dead_letters = %stream::dead_letter_stream(&self.stream), "entry failed {delivered} deliveries; moved to the dead-letter stream");
                letters.push(DeadLetter {
                    id: *id,
                    deliveries: delivered,
                    reason,
                });
            } else {
                tracing::warn!(partition = self.partition, stream_id = %id, deliveries = delivered, error = %reason, "entry not projected; it stays pending and is retried after CLAIM_IDLE");
            }
        }
        if !letters.is_empty() {
            group::dead_letter(
                &mut self.redis,
                &self.stream,
                &self.config.instance,
                &letters,
            )
            .await?;
            self.metrics.dead_letters.increment(letters.len() as u64);
        }
        Ok(())
    }
}
