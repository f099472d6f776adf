//! The consumer loop: read the stream from the checkpoint, plan the batch, commit totals and
//! checkpoint together. Every failure (Redis or Postgres down, a simulated crash) resumes from
//! the last committed checkpoint, which is what makes at-least-once delivery exact.

use std::time::{Duration, Instant};

use redis::{aio::ConnectionManager, streams::StreamReadReply};
use rocket_rides_log::{
    Entry, StreamId,
    stream::{BadStreamId, dead_letter_stream},
};
use rocket_rides_platform::{
    retry::Backoff,
    shutdown::CancellationToken,
    telemetry::{propagation, spans},
};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    Config,
    checkpoint::{self, Checkpoint, Commit},
    metrics::Metrics,
    plan::{self, Gap, Plan},
};

/// How long one XREAD waits for new entries.
pub const BLOCK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered with {0}")]
    Protocol(#[from] BadStreamId),
    #[error("another consumer named {0:?} moved this checkpoint; run one process per name")]
    Moved(String),
}

enum Stop {
    Cancelled,
    Gap(Gap),
}

pub struct Consumer {
    pub config: Config,
    pub pool: PgPool,
    /// For the blocking XREAD only.
    pub reader: ConnectionManager,
    /// For everything else (dead letters).
    pub redis: ConnectionManager,
    pub metrics: Metrics,
    /// The committed checkpoint, for GetTotal (None until first loaded).
    pub published: watch::Sender<Option<Checkpoint>>,
    /// False once a gap is found: the service is then held NOT_SERVING.
    pub sound: watch::Sender<bool>,
}

impl Consumer {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            match self.consume(&cancel, &mut backoff).await {
                Ok(Stop::Cancelled) => return,
                Ok(Stop::Gap(gap)) => return self.halt(gap, cancel).await,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "consuming interrupted; resuming from the last committed checkpoint");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn consume(
        &self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Stop, ConsumeError> {
        let Config { stream, name, .. } = &self.config;
        let mut at = checkpoint::load(&self.pool, stream, name).await?;
        tracing::info!(
            last_seq = at.last_seq,
            last_stream_id = %at.last_stream_id,
            ride_count = at.ride_count,
            "reading the log from the checkpoint"
        );
        self.published.send_replace(Some(at.clone()));
        loop {
            let entries = tokio::select! {
                _ = cancel.cancelled() => return Ok(Stop::Cancelled),
                read = self.read(at.last_stream_id) => read?,
            };
            backoff.reset();
            if entries.is_empty() {
                continue;
            }
            let plan = plan::plan(&entries, at.last_seq);
            self.set_aside(&plan).await?;
            if let Some(last_stream_id) = plan.last_stream_id {
                match self.apply(&plan, &at, last_stream_id).await? {
                    Commit::Done(next) => {
                        at = next;
                        self.published.send_replace(Some(at.clone()));
                    }
                    Commit::SimulatedCrash => {
                        tracing::info!(
                            records = plan.seen.len(),
                            "simulated failure: crashed before commit; re-reading from the checkpoint"
                        );
                        continue;
                    }
                    Commit::Moved => return Err(ConsumeError::Moved(name.clone())),
                }
            }
            if let Some(gap) = plan.gap {
                return Ok(Stop::Gap(gap));
            }
        }
    }

    /// Commits a batch, traced: a span per record in its ride's trace, linked to a span for
    /// the batch whose child is the commit.
    async fn apply(
        &self,
        plan: &Plan,
        at: &Checkpoint,
        last_stream_id: StreamId,
    ) -> Result<Commit, sqlx::Error> {
        let Config { stream, name, .. } = &self.config;
        let started = Instant::now();
        let distances = plan.distances();
        let duplicates = plan.duplicates();
        let batch = tracing::info_span!(
            "apply batch",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %stream,
            consumer = %name,
            messaging.batch.message_count = plan.seen.len(),
            applied = distances.len(),
            duplicates,
            log.last_seq = plan.last_seq,
            simulated.crash = tracing::field::Empty,
        );
        let _record_spans: Vec<tracing::Span> = plan
            .seen
            .iter()
            .map(|seen| {
                let span = tracing::info_span!(
                    parent: None,
                    "apply ride",
                    otel.kind = "consumer",
                    messaging.system = "redis",
                    consumer = %name,
                    ride.id = seen.record.ride_id,
                    log.seq = seen.record.seq,
                    stream.id = %seen.stream_id,
                    duplicate.skipped = seen.duplicate,
                );
                propagation::join(span, &seen.record.trace, &batch)
            })
            .collect();
        let commit = checkpoint::commit(
            &self.pool,
            stream,
            name,
            at,
            &distances,
            plan.last_seq,
            last_stream_id,
            self.config.crash_rate,
        )
        .instrument(batch.in_scope(|| spans::postgres("UPDATE consumers, COMMIT")))
        .await?;
        let crashed = matches!(commit, Commit::SimulatedCrash);
        batch.record("simulated.crash", crashed);
        let metrics = &self.metrics;
        if crashed {
            metrics.simulated_crashes.increment(1);
        } else if let Commit::Done(next) = &commit {
            metrics.applied.increment(distances.len() as u64);
            metrics.duplicates.increment(duplicates as u64);
            metrics.batch_size.record(plan.seen.len() as f64);
            metrics
                .batch_duration
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(
                parent: &batch,
                applied = distances.len(),
                duplicates,
                last_seq = next.last_seq,
                "batch committed"
            );
        }
        Ok(commit)
    }

    async fn read(&self, from: StreamId) -> Result<Vec<Entry>, ConsumeError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(from)
            .query_async(&mut self.reader.clone())
            .await?;
        Ok(Entry::from_read(reply)?)
    }

    /// Copies entries that are not valid records to the dead-letter stream before the
    /// checkpoint passes them, so none is silently dropped.
    async fn set_aside(&self, plan: &Plan) -> Result<(), redis::RedisError> {
        if plan.malformed.is_empty() {
            return Ok(());
        }
        let dead_letters = dead_letter_stream(&self.config.stream);
        let mut pipe = redis::pipe();
        for (id, error) in &plan.malformed {
            tracing::error!(stream_id = %id, %error, dead_letters = %dead_letters, "malformed entry set aside");
            self.metrics.dead_letters.increment(1);
            pipe.cmd("XADD")
                .arg(&dead_letters)
                .arg("*")
                .arg("source_stream")
                .arg(&self.config.stream)
                .arg("source_id")
                .arg(id)
                .arg("consumer")
                .arg(&self.config.name)
                .arg("error")
                .arg(error.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// A gap means records were lost from the stream (trimmed or lost by Redis) before this
    /// consumer read them. Applying what follows would make the total silently wrong, so the
    /// consumer stops, reports NOT_SERVING and says so until it is shut down.
    async fn halt(self, gap: Gap, cancel: CancellationToken) {
        self.sound.send_replace(false);
        self.metrics.gap.set(1.0);
        loop {
            tracing::error!(
                expected_seq = gap.expected_seq,
                found_seq = gap.found_seq,
                stream_id = %gap.stream_id,
                "gap in the log: records {}..{} are missing from the stream; stopped consuming. \
                 The total is exact up to seq {}; rebuild this consumer (delete its row in \
                 `consumers` to start over from a complete stream) or restore the stream",
                gap.expected_seq,
                gap.found_seq - 1,
                gap.expected_seq - 1,
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}
