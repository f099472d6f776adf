//! The consumer loop: read the stream after the checkpoint, check it against the archive, plan
//! the batch, commit totals and checkpoint together. Every failure (Redis or Postgres down, a
//! simulated crash) resumes from the last committed checkpoint, which is what makes
//! at-least-once delivery exact. A log that disagrees with the archive halts the consumer
//! (NOT_SERVING, error log, gauge); it checks again every few seconds and resumes by itself
//! once the log is repaired.

use std::{collections::BTreeSet, time::Duration, time::Instant};

use redis::streams::StreamReadReply;
use rocket_rides_log::{
    Entry, LogRecord, StreamId, archive,
    driver::{ErrorKind, Halting, PartitionWorker, Turn},
    reader::{
        Halt, LogIdentity,
        plan::{self, Plan, Run},
    },
    stream::{self, BadStreamId, dead_letter_stream},
};
use rocket_rides_platform::{
    prometheus::Raised,
    redis_conn::RedisConnection,
    retry::Backoff,
    shutdown::CancellationToken,
    telemetry::{propagation, spans},
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    Config,
    checkpoint::{self, Batch, Checkpoint, Commit, Position},
    metrics::Metrics,
};

/// How long one XREAD waits for new entries.
pub const BLOCK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered with {0}")]
    Protocol(#[from] BadStreamId),
    #[error(
        "the partition's checkpoint of consumer {0:?} is no longer this instance's (another \
         instance owns it now, or runs with the same CONSUMER_INSTANCE)"
    )]
    Moved(String),
    #[error(
        "the checkpoint in Postgres (seq {database}) is not where this consumer left it (seq \
         {memory}): was Postgres restored? Resuming from Postgres"
    )]
    CheckpointChanged { memory: i64, database: i64 },
}

impl ErrorKind for ConsumeError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Protocol(_) => "protocol",
            Self::Moved(_) => "moved",
            Self::CheckpointChanged { .. } => "checkpoint_changed",
        }
    }
}

/// A batch to commit: a run checked against the archive as a whole, or records checked one by
/// one (`plan`).
enum Work<'a> {
    Run(&'a Run<'a>),
    Checked(&'a Plan),
}

/// One partition's consumer.
pub struct Consumer {
    pub config: Config,
    /// The partition consumed, and its stream.
    pub partition: i32,
    pub stream: String,
    pub pool: PgPool,
    /// For the blocking XREAD only.
    pub reader: RedisConnection,
    /// For everything else (dead letters, the stream's end).
    pub redis: RedisConnection,
    pub metrics: Metrics,
    /// The partitions the consumer's group gives this instance.
    pub mine: watch::Receiver<BTreeSet<i32>>,
}

impl PartitionWorker for Consumer {
    type Halt = Halt;
    type Error = ConsumeError;

    async fn attempt(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<Turn<Halt>, ConsumeError> {
        self.consume(cancel, backoff, halting).await
    }
}

impl Consumer {
    async fn consume(
        &self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<Turn<Halt>, ConsumeError> {
        let Config { stream, name, .. } = &self.config;
        if let Err(halt) = LogIdentity::read(&self.pool).await?.check_stream(stream) {
            return Ok(Turn::Halt(halt));
        }
        if !self.assigned() {
            return Ok(Turn::NotOurs);
        }
        let mut at = checkpoint::load(&self.pool, self.position()).await?;
        let Some(owner_epoch) = checkpoint::own(&self.pool, self.position()).await? else {
            return Ok(Turn::NotOurs);
        };
        let _owned = Raised::new(&self.metrics.partitions);
        // The batch's statements run on one connection: a pooled statement costs two more
        // round trips (the pool pings a connection when it is taken and when it is given back).
        // Dropped with any error, which the pool then closes if it is broken.
        let mut db = self.pool.acquire().await?;
        if !halting.is_halted() {
            tracing::info!(
                partition = self.partition,
                last_seq = at.last_seq,
                ride_count = at.ride_count,
                "reading the partition from the checkpoint"
            );
        }
        loop {
            if !self.assigned() {
                tracing::info!(
                    partition = self.partition,
                    "handing the partition over to another instance"
                );
                checkpoint::release(&mut db, self.position(), owner_epoch).await?;
                return Ok(Turn::NotOurs);
            }
            let entries = tokio::select! {
                _ = cancel.cancelled() => {
                    // Let another instance take over at once.
                    checkpoint::release(&mut db, self.position(), owner_epoch).await.ok();
                    return Ok(Turn::Cancelled);
                }
                read = self.read(at.stream_id()) => read?,
            };
            backoff.reset();
            // The usual batch: checked against the archive as a range (one digest) and
            // applied from it in one statement. Anything else is checked record by record.
            if let Some(run) = plan::run(at.last_seq, &entries) {
                let applied = self
                    .apply(&mut db, owner_epoch, Work::Run(&run), &at)
                    .await?;
                if let Some(commit) = applied {
                    halting.clear();
                    match commit {
                        Commit::Done(next) => {
                            at = next;
                            if run.records.len() < self.config.batch_size as usize {
                                self.linger(cancel).await;
                            }
                        }
                        Commit::SimulatedCrash => tracing::info!(
                            records = run.records.len(),
                            "simulated failure: crashed before commit; re-reading from the checkpoint"
                        ),
                        Commit::Moved => return Err(ConsumeError::Moved(name.clone())),
                    }
                    continue;
                }
            }
            let plan = match self.plan(&mut db, &at, &entries).await? {
                Ok(plan) => plan,
                Err(halt) => return Ok(Turn::Halt(halt)),
            };
            if entries.is_empty() && plan.apply.is_empty() {
                // Idle: renew the lease, and make sure Postgres still has the checkpoint this
                // consumer serves, so a database restored to an earlier state is noticed even
                // without new records.
                let Some(database) =
                    checkpoint::renew(&mut db, self.position(), owner_epoch).await?
                else {
                    return Err(ConsumeError::Moved(name.clone()));
                };
                if database != at.last_seq {
                    return Err(ConsumeError::CheckpointChanged {
                        memory: at.last_seq,
                        database,
                    });
                }
            }
            if plan.halt.is_none() {
                halting.clear();
            }
            self.set_aside(&plan).await?;
            if !plan.apply.is_empty() {
                let checked = self.apply(&mut db, owner_epoch, Work::Checked(&plan), &at);
                match checked
                    .await?
                    .expect("a checked batch always commits or not")
                {
                    Commit::Done(next) => {
                        at = next;
                        if plan.apply.len() < self.config.batch_size as usize {
                            self.linger(cancel).await;
                        }
                    }
                    Commit::SimulatedCrash => {
                        tracing::info!(
                            records = plan.apply.len(),
                            "simulated failure: crashed before commit; re-reading from the checkpoint"
                        );
                        continue;
                    }
                    Commit::Moved => return Err(ConsumeError::Moved(name.clone())),
                }
            }
            if let Some(halt) = plan.halt {
                return Ok(Turn::Halt(halt));
            }
        }
    }

    /// Plans a batch from the stream's `entries` and the archive. With no entries, the stream's
    /// end tells whether records exist that the stream no longer holds (read them from the
    /// archive) or whether the stream lost what this consumer already applied (halt).
    async fn plan(
        &self,
        db: &mut PgConnection,
        at: &Checkpoint,
        entries: &[Entry],
    ) -> Result<Result<Plan, Halt>, ConsumeError> {
        let upto = match entries.last() {
            Some(last) => last.id.log_seq(),
            None => {
                let top = stream::last_id(&mut self.redis.clone(), &self.stream)
                    .await?
                    .log_seq();
                if top < at.last_seq {
                    return Ok(Err(Halt::RedisBehind {
                        stream_top: top,
                        checkpoint: at.last_seq,
                    }));
                }
                top
            }
        };
        if upto <= at.last_seq {
            return Ok(Ok(Plan::default()));
        }
        let limit = i64::from(self.config.batch_size);
        let archived = archive::range(db, self.partition, at.last_seq, upto, limit)
            .instrument(spans::postgres("SELECT log_records (archive)"))
            .await?;
        // A short page holds everything the archive has up to `upto`.
        let archived_upto = if archived.len() < limit as usize {
            upto
        } else {
            archived.last().map_or(at.last_seq, |r| r.seq)
        };
        Ok(Ok(plan::plan(
            at.last_seq,
            entries,
            &archived,
            archived_upto,
        )))
    }

    /// Not a full batch: lets the next one gather for a moment (BATCH_LINGER_MS). A shutdown
    /// is noticed by the next read.
    async fn linger(&self, cancel: &CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(self.config.linger) => {}
        }
    }

    /// Commits a batch, traced: a span per record in its ride's trace, linked to a span for
    /// the batch whose child is the commit. None when a run is not what the archive holds.
    async fn apply(
        &self,
        db: &mut PgConnection,
        owner_epoch: i64,
        work: Work<'_>,
        at: &Checkpoint,
    ) -> Result<Option<Commit>, sqlx::Error> {
        let (stream, name) = (&self.stream, &self.config.name);
        let started = Instant::now();
        let records: Vec<&LogRecord> = match &work {
            Work::Run(run) => run.records.clone(),
            Work::Checked(plan) => plan.apply.iter().collect(),
        };
        let last: &LogRecord = records.last().expect("a batch to apply");
        let batch = tracing::info_span!(
            "apply batch",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %stream,
            consumer = %name,
            messaging.batch.message_count = records.len(),
            log.epoch = last.epoch,
            log.last_seq = last.seq,
            log.checked = match work { Work::Run(_) => "range", Work::Checked(_) => "records" },
            simulated.crash = tracing::field::Empty,
        );
        let _record_spans: Vec<tracing::Span> = records
            .iter()
            .map(|record| {
                let span = tracing::info_span!(
                    parent: None,
                    "apply ride",
                    otel.kind = "consumer",
                    messaging.system = "redis",
                    consumer = %name,
                    ride.id = record.ride_id,
                    log.seq = record.seq,
                    stream.id = %record.stream_id(),
                );
                propagation::join(span, &record.trace, &batch)
            })
            .collect();
        let (position, crash_rate) = (self.position(), self.config.crash_rate);
        let span = batch.in_scope(|| spans::postgres("UPDATE consumer_positions"));
        let commit = match &work {
            Work::Run(run) => {
                checkpoint::commit_run(db, position, owner_epoch, at, run, crash_rate)
                    .instrument(span)
                    .await?
            }
            Work::Checked(plan) => {
                let work = Batch {
                    distances: plan.distances(),
                    last_seq: last.seq,
                    epoch: last.epoch,
                };
                let commit = checkpoint::commit(db, position, owner_epoch, at, &work, crash_rate);
                Some(commit.instrument(span).await?)
            }
        };
        let crashed = matches!(commit, Some(Commit::SimulatedCrash));
        batch.record("simulated.crash", crashed);
        let metrics = &self.metrics;
        if crashed {
            metrics.simulated_crashes.increment(1);
        } else if let Some(Commit::Done(next)) = &commit {
            metrics.applied.increment(records.len() as u64);
            if matches!(work, Work::Run(_)) {
                metrics.applied_by_range.increment(records.len() as u64);
            }
            metrics.batch_size.record(records.len() as f64);
            metrics
                .batch_duration
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(parent: &batch, applied = records.len(), last_seq = next.last_seq, "batch committed");
        }
        Ok(commit)
    }

    fn position(&self) -> Position<'_> {
        Position {
            stream: &self.config.stream,
            name: &self.config.name,
            partition: self.partition,
            instance: &self.config.instance,
        }
    }

    /// Whether the group's share-out gives this partition to this instance.
    fn assigned(&self) -> bool {
        self.mine.borrow().contains(&self.partition)
    }

    async fn read(&self, from: StreamId) -> Result<Vec<Entry>, ConsumeError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(from)
            .query_async(&mut self.reader.clone())
            .await?;
        Ok(Entry::from_read(reply)?)
    }

    /// Copies entries that are not valid records to the dead-letter stream, so none is
    /// silently passed over (their archived records are applied instead).
    async fn set_aside(&self, plan: &Plan) -> Result<(), redis::RedisError> {
        if plan.malformed.is_empty() {
            return Ok(());
        }
        let dead_letters = dead_letter_stream(&self.stream);
        let mut pipe = redis::pipe();
        let by = [("consumer", self.config.name.clone())];
        for (id, error) in &plan.malformed {
            tracing::error!(stream_id = %id, %error, dead_letters = %dead_letters, "malformed entry set aside; its archived record is applied");
            self.metrics.dead_letters.increment(1);
            stream::add_dead_letter(&mut pipe, &self.stream, *id, &by, &error.to_string());
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }
}
