//! Moving one partition's staged records into its stream (a `Streamer` per partition).
//!
//! The leader numbers committed records in a statement of its own (`NUMBER`): a record whose
//! transaction commits late simply gets a later number, so no ride ever waits on an unrelated
//! transaction, and once numbered a record keeps its seq, epoch and content forever (it is the
//! archive). It then writes the numbered records Redis lacks, each at the id `<seq>-0`, and
//! records how far Redis holds the log (`streamed_seq`) with the next numbering statement. The
//! batch is written by a script that first checks the stream ends at `streamed_seq`, so a pass
//! costs three round trips (number, read the batch, append) on connections it keeps. When the
//! stream ends elsewhere, nothing is written and the leader compares the stream with the
//! archive, and stops loudly instead of streaming on when they disagree: Redis lost entries
//! (run `republish`), the stream is ahead of Postgres (Postgres was restored: run `rewind`), or
//! an entry differs from its archived record; entries of a previous attempt that match are
//! adopted.
//!
//! Trimming runs before each send and depends on nothing the send does: when Redis is full
//! (`maxmemory` with `noeviction` refuses the XADD), every retry still trims, so the stream
//! shrinks as soon as the readers holding it move on or expire, and streaming resumes by itself.
//! Archive DDL (creating the next range partitions, dropping pruned ones) waits at most
//! `ARCHIVE_LOCK_TIMEOUT` for its lock and is retried `DDL_RETRY` later, so a long reader of
//! `log_records` (a `pg_dump`) never queues it in front of CreateRide's inserts; meanwhile the
//! leader numbers only as far as the existing partitions reach.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use rand::Rng;
use rocket_rides_log::{
    LogRecord, StreamId,
    archive::{self, Head},
    driver::{ErrorKind, Halting, PartitionWorker, RECHECK, Turn},
    lease::{self, Lease},
    schema::{self, ARCHIVE_LOCK_TIMEOUT, Coverage, LockTimeout},
    stream,
};
use rocket_rides_platform::{
    health::Soundness,
    prometheus::Raised,
    redis_conn::RedisConnection,
    retry::Backoff,
    shutdown::CancellationToken,
    telemetry::{propagation, spans},
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{Config, metrics::Metrics, replicas, trim};

/// Fallback poll while idle (a notification may be missed across a reconnect); also how often
/// a standby tries the lease and an idle leader renews it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the leader drops archive partitions older than `LOG_RETENTION`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a batch may wait for `REDIS_WAIT_REPLICAS` replicas.
const REPLICA_WAIT: Duration = Duration::from_secs(2);
/// How long adopted entries may wait for them: replicas acknowledge an offset within a second
/// by themselves.
const ADOPT_WAIT: Duration = Duration::from_secs(3);
/// After archive DDL gave up on its lock (`ARCHIVE_LOCK_TIMEOUT`), how long until it is tried
/// again: at most one lock wait, hence one short pause of CreateRide, per this interval.
const DDL_RETRY: Duration = Duration::from_secs(5);
/// How often the leader looks at the stream's length even when it need not (another process
/// may have written, consumers may have moved on).
const TRIM_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("lost the lease (another streamer leads now, epoch {0} is over)")]
    Fenced(i64),
    #[error(
        "Redis is full (maxmemory, noeviction) and refuses new entries: {0}. The stream is \
         trimmed only past what every live reader has read, so a stopped or slow reader holds \
         it (see rocket_rides_consumer_lag_entries). Streaming resumes by itself once that \
         reader catches up or expires (CONSUMER_EXPIRY); or give Redis more maxmemory"
    )]
    RedisFull(redis::RedisError),
    #[error(
        "only {acked} of {wanted} Redis replicas (REDIS_WAIT_REPLICAS) have the batch; it does \
         not count as streamed until they do"
    )]
    NotReplicated { acked: u32, wanted: u32 },
}

impl StreamError {
    /// The `kind` label of `rocket_rides_streamer_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Fenced(_) => "fenced",
            Self::RedisFull(_) => "redis_full",
            Self::NotReplicated { .. } => "not_replicated",
        }
    }

    /// A Redis error, told apart when it is Redis refusing a write for want of memory.
    fn of_write(e: redis::RedisError) -> Self {
        let oom = e.code() == Some("OOM") || e.to_string().contains("OOM");
        if oom {
            Self::RedisFull(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// Why a leader refuses to stream on. Each says what diverged and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    #[error(
        "this database's log streams to {log:?} but STREAM_NAME is {configured:?}; \
         set STREAM_NAME={log:?} (a log has one stream)"
    )]
    StreamName { log: String, configured: String },
    #[error(
        "Redis lost entries: the stream ends at seq {stream_top} but held the log up to {streamed}; \
         run `rocket-rides-streamer republish` to restore them from the archive"
    )]
    RedisBehind { stream_top: i64, streamed: i64 },
    #[error(
        "the stream is ahead of Postgres: it holds seq {stream_top} but Postgres numbered only up to \
         {last_seq} (was Postgres restored or failed over to an older state?); run \
         `rocket-rides-streamer rewind` to drop the entries Postgres no longer has"
    )]
    PostgresBehind { stream_top: i64, last_seq: i64 },
    #[error("stream entry {seq} differs from the archived record: {reason}")]
    Diverged { seq: i64, reason: String },
}

/// What a pass sent: how many records, and up to which seq the next numbering statement records
/// Redis as holding the log (none when the failure simulation forgot).
#[derive(Debug, Default)]
struct Sent {
    count: usize,
    recorded_upto: Option<i64>,
}

pub struct Streamer {
    pub config: Config,
    /// The partition this streamer leads (or stands by for), and its stream.
    pub partition: i32,
    pub stream: String,
    /// This replica's name in the lease.
    pub holder: String,
    pub pool: PgPool,
    pub redis: RedisConnection,
    pub metrics: Metrics,
    /// Unsound while halted, or failing for longer than `PROGRESS_TIMEOUT`: the service is then
    /// held NOT_SERVING.
    pub sound: Soundness,
    /// Bumped when the api says records were committed.
    pub wake: watch::Receiver<u64>,
    /// The partitions the streamer group gives this replica.
    pub mine: watch::Receiver<BTreeSet<i32>>,
    /// When this replica last did its part (a pass of the leader's loop, or a standby's try).
    pub progress: Instant,
}

impl ErrorKind for StreamError {
    fn kind(&self) -> &'static str {
        StreamError::kind(self)
    }
}

/// Leads (or stands by) until `cancel`; after any failure, the driver waits and starts over.
impl PartitionWorker for Streamer {
    type Halt = Halt;
    type Error = StreamError;

    async fn attempt(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<Turn<Halt>, StreamError> {
        self.lead(cancel, backoff, halting).await?;
        // Cancelled, or handed over: stand by again.
        Ok(match cancel.is_cancelled() {
            true => Turn::Cancelled,
            false => Turn::NotOurs,
        })
    }

    fn failed(&mut self, error: &StreamError) {
        let stalled = self.progress.elapsed();
        if stalled >= self.config.progress_timeout && self.sound.set(self.partition, false) {
            tracing::error!(%error, ?stalled, "no progress for longer than PROGRESS_TIMEOUT; reporting NOT_SERVING until streaming resumes");
        }
    }
}

impl Streamer {
    /// Waits for the lease, then streams until `cancel`.
    async fn lead(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<(), StreamError> {
        let mut standing_by = false;
        let lease = loop {
            if self.assigned() {
                let seen = self.newest_epoch().await?;
                if let Some(lease) =
                    lease::acquire(&self.pool, self.partition, &self.holder, seen).await?
                {
                    break lease;
                }
            }
            self.progressed();
            if !standing_by {
                tracing::info!(
                    partition = self.partition,
                    "another streamer leads or is to lead this partition; standing by"
                );
                standing_by = true;
            }
            // On this receiver, not a clone: a clone would report the same change again on
            // every pass.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.mine.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        };
        tracing::info!(
            partition = self.partition,
            epoch = lease.epoch,
            "leading: streaming staged records"
        );
        backoff.reset();
        let _leading = Raised::new(&self.metrics.leader);
        let result = self.stream(&lease, cancel, halting).await;
        if result.is_ok() {
            lease::release(&self.pool, &lease).await.ok();
        }
        result
    }

    async fn stream(
        &mut self,
        lease: &Lease,
        cancel: &CancellationToken,
        halting: &mut Halting,
    ) -> Result<(), StreamError> {
        // The hot statements run on one connection: a pooled statement costs two more round
        // trips (the pool pings a connection when it is taken and when it is given back).
        // Dropped with any error, which the pool then closes if it is broken.
        let mut db = self.pool.acquire().await?;
        let batch = i64::from(self.config.batch_size);
        let p = self.partition;
        // How far the archive's range partitions reach: numbering stops there.
        let (mut last_seq, mut partitioned) = (archive::head(&mut *db, p).await?.last_seq, 0);
        // Sent by the previous pass, recorded by the next numbering statement.
        let mut sent_upto = 0;
        // When archive DDL may run next (sooner than due after a lock timeout).
        let (mut ensure_at, mut prune_at) = (Instant::now(), Instant::now());
        let mut trimmed_at: Option<Instant> = None;
        // The stream's length as of the last trim plus what was sent since: a trim costs four
        // round trips, so it runs only once the stream may be past `STREAM_MAX_LEN`. Trimming
        // to the consumers' checkpoints usually leaves it short, so that is rarely.
        let mut stream_len = 0;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if !self.assigned() {
                tracing::info!(
                    partition = p,
                    "handing the partition over to another replica"
                );
                return Ok(());
            }
            if last_seq + batch > partitioned && Instant::now() >= ensure_at {
                let Coverage { upto, locked } =
                    schema::ensure_archive(&self.pool, p, batch, ARCHIVE_LOCK_TIMEOUT).await?;
                partitioned = upto;
                if let Some(locked) = locked {
                    self.ddl_locked(&locked, "creating the next archive partition");
                    ensure_at = Instant::now() + DDL_RETRY;
                }
            }
            // Never past the archive's partitions (0 when they are full: then only the lease is
            // renewed and what was sent recorded).
            let limit = (partitioned - last_seq).clamp(0, batch);
            let (head, numbered) = self.number(&mut db, lease, sent_upto, limit).await?;
            let count = numbered.len() as i64;
            last_seq = head.last_seq;
            if Instant::now() >= prune_at {
                let Config {
                    stream,
                    log_retention,
                    consumer_expiry,
                    ..
                } = &self.config;
                let pruned = schema::prune_archive(
                    &self.pool,
                    p,
                    stream,
                    *log_retention,
                    *consumer_expiry,
                    ARCHIVE_LOCK_TIMEOUT,
                )
                .await?;
                prune_at = Instant::now() + PRUNE_EVERY;
                if let Some(locked) = pruned.locked {
                    self.ddl_locked(&locked, "dropping an archive partition past LOG_RETENTION");
                    prune_at = Instant::now() + DDL_RETRY;
                }
            }
            let head = match self.claimed(head).await? {
                Ok(head) => head,
                Err(halt) => {
                    self.halt(&halt, halting, cancel).await;
                    continue;
                }
            };
            // Before sending, and whatever the send does: a full Redis that refuses the XADD is
            // still trimmed at every retry, and so frees itself.
            if stream_len > u64::from(self.config.max_len)
                || trimmed_at.is_none_or(|at| at.elapsed() >= TRIM_EVERY)
            {
                stream_len = trim::trim(&self.pool, &mut self.redis, &self.config, p).await?;
                trimmed_at = Some(Instant::now());
            }
            let streamed = head.streamed_seq;
            let sent = match self.send(&mut db, lease, &head, numbered).await? {
                Ok(sent) => sent,
                // The stream does not end where Postgres says Redis holds the log.
                Err(top) => {
                    let halt = match self.compare(lease, head).await? {
                        // Adopted what a previous attempt wrote: stream on from there.
                        Ok(head) if head.streamed_seq > streamed => {
                            halting.clear();
                            self.progressed();
                            continue;
                        }
                        Ok(_) => Halt::Diverged {
                            seq: streamed,
                            reason: format!(
                                "the stream ends at {top}, yet its entries agree with the \
                                 archive; was it changed while this check ran?"
                            ),
                        },
                        Err(halt) => halt,
                    };
                    self.halt(&halt, halting, cancel).await;
                    continue;
                }
            };
            halting.clear();
            sent_upto = sent.recorded_upto.unwrap_or(head.streamed_seq);
            stream_len += sent.count as u64;
            let sent = sent.count;
            self.progressed();
            if count == batch || sent == batch as usize {
                continue;
            }
            if count > 0 || sent > 0 {
                // Not full: let the next batch gather for a moment (BATCH_LINGER_MS).
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.config.linger) => {}
                }
                continue;
            }
            // One pass serves every commit that notified so far.
            self.wake.mark_unchanged();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.wake.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Whether the group's share-out gives this partition to this replica.
    fn assigned(&self) -> bool {
        self.mine.borrow().contains(&self.partition)
    }

    /// Archive DDL gave up on its lock: said and counted; it is retried in `DDL_RETRY`.
    fn ddl_locked(&self, locked: &LockTimeout, doing: &str) {
        self.metrics.error("archive_lock_timeout", self.partition);
        tracing::warn!(partition = self.partition, error = %locked, retry_in = ?DDL_RETRY, "{doing} gave way to a lock held on the log's tables; numbering goes on as far as the archive's partitions reach");
    }

    /// A pass went through: healthy again, as far as progress goes.
    fn progressed(&mut self) {
        self.progress = Instant::now();
        self.sound.set(self.partition, true);
    }

    /// Numbers up to `limit` staged records, records `sent_upto` and renews the lease; returns
    /// the head and the records numbered.
    async fn number(
        &self,
        db: &mut PgConnection,
        lease: &Lease,
        sent_upto: i64,
        limit: i64,
    ) -> Result<(Head, Vec<LogRecord>), StreamError> {
        lease::number(db, lease, sent_upto, limit)
            .instrument(spans::postgres(
                "UPDATE log_records, log_partitions (number)",
            ))
            .await?
            .ok_or(StreamError::Fenced(lease.epoch))
    }

    /// Halted with the lease held, so no other replica streams meanwhile; looks again after
    /// `RECHECK` (or on shutdown).
    async fn halt(&self, halt: &Halt, halting: &mut Halting, cancel: &CancellationToken) {
        halting.raise(halt);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }

    /// The head of a log that streams to this streamer's `STREAM_NAME` (the first leader
    /// claims the log for its stream).
    async fn claimed(&mut self, head: Head) -> Result<Result<Head, Halt>, StreamError> {
        let configured = &self.config.stream;
        match &head.stream {
            Some(log) if log != configured => Ok(Err(Halt::StreamName {
                log: log.clone(),
                configured: configured.clone(),
            })),
            Some(_) => Ok(Ok(head)),
            None => {
                sqlx::query("UPDATE log_head SET stream = $1 WHERE stream IS NULL")
                    .bind(configured)
                    .execute(&self.pool)
                    .await?;
                let head = archive::head(&self.pool, self.partition).await?;
                Box::pin(self.claimed(head)).await
            }
        }
    }

    /// Compares the stream with the archive; on agreement, returns the head with
    /// `streamed_seq` at the stream's end (adopting entries a previous attempt wrote but did
    /// not record, once they are shown to be the archived records).
    async fn compare(
        &mut self,
        lease: &Lease,
        mut head: Head,
    ) -> Result<Result<Head, Halt>, StreamError> {
        let stream_top = stream::last_id(&mut self.redis, &self.stream)
            .await?
            .log_seq();
        if stream_top < head.streamed_seq {
            return Ok(Err(Halt::RedisBehind {
                stream_top,
                streamed: head.streamed_seq,
            }));
        }
        if stream_top > head.last_seq {
            return Ok(Err(Halt::PostgresBehind {
                stream_top,
                last_seq: head.last_seq,
            }));
        }
        if stream_top > head.streamed_seq {
            let chunk = i64::from(self.config.batch_size);
            let diverged = archive::first_divergence::<StreamError>(
                &self.pool,
                &mut self.redis,
                self.partition,
                &self.stream,
                head.streamed_seq,
                stream_top,
                chunk,
            )
            .await?;
            if let Some(archive::Divergence { seq, reason }) = diverged {
                return Ok(Err(Halt::Diverged { seq, reason }));
            }
            // Written on another connection (before a restart or reconnect, or a double send):
            // WAIT here would not prove that replicas have them; their offsets do.
            self.replicas_hold_adopted().await?;
            self.record_streamed(lease, stream_top).await?;
            head.streamed_seq = stream_top;
        }
        Ok(Ok(head))
    }

    /// Writes the numbered records after `head.streamed_seq` to the stream, in the round trip
    /// that checks the stream ends at `head.streamed_seq`; when it does not, writes nothing and
    /// returns the id it ends at (`compare` finds out why). `numbered` are the records this
    /// pass numbered: when they are exactly what Redis lacks (the usual case), they are not
    /// read back from the archive.
    async fn send(
        &mut self,
        db: &mut PgConnection,
        lease: &Lease,
        head: &Head,
        numbered: Vec<LogRecord>,
    ) -> Result<Result<Sent, StreamId>, StreamError> {
        let started = Instant::now();
        let limit = i64::from(self.config.batch_size);
        let lacked = head.streamed_seq + 1..=head.last_seq;
        let records = match (numbered.first(), numbered.last()) {
            (Some(first), Some(last))
                if first.seq == *lacked.start() && last.seq == *lacked.end() =>
            {
                numbered
            }
            _ => {
                archive::range(db, self.partition, head.streamed_seq, head.last_seq, limit).await?
            }
        };
        let Some(last) = records.last().map(|r| r.seq) else {
            let top = stream::last_id(&mut self.redis, &self.stream).await?;
            return Ok(match top.log_seq() == head.streamed_seq {
                true => Ok(Sent::default()),
                false => Err(top),
            });
        };
        let count = records.len();
        let batch = tracing::info_span!(
            "stream batch",
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.destination.name = %self.stream,
            messaging.batch.message_count = count,
            log.epoch = lease.epoch,
            log.first_seq = head.streamed_seq + 1,
            log.last_seq = last,
            simulated.double_send = tracing::field::Empty,
        );
        // Each record gets a span in its ride's trace, linked to this batch; the stream entry
        // carries that span's context on to the consumers.
        let mut record_spans = Vec::with_capacity(count);
        let mut traced = Vec::with_capacity(count);
        for record in records {
            let span = tracing::info_span!(
                parent: None,
                "stream ride",
                otel.kind = "producer",
                messaging.system = "redis",
                messaging.destination.name = %self.stream,
                ride.id = record.ride_id,
                log.seq = record.seq,
            );
            let span = propagation::join(span, &record.trace, &batch);
            traced.push(LogRecord {
                trace: propagation::of_span(&span),
                ..record
            });
            record_spans.push(span);
        }
        let moved = stream::append_after(&mut self.redis, &self.stream, head.streamed_seq, &traced)
            .instrument(batch.in_scope(|| spans::redis("XADD")))
            .await
            .map_err(StreamError::of_write)?;
        if let Some(top) = moved {
            return Ok(Err(top));
        }
        self.replicated()
            .instrument(batch.in_scope(|| spans::redis("WAIT")))
            .await?;
        // Failure simulation: "forget" that the batch was sent, as a crash right after the
        // XADD would; the next check finds the entries, verifies and adopts them.
        let forgot = rand::rng().random_bool(self.config.double_send_rate);
        batch.record("simulated.double_send", forgot);
        self.metrics.records_streamed.increment(count as u64);
        self.metrics.batch_size.record(count as f64);
        self.metrics
            .batch_duration
            .record(started.elapsed().as_secs_f64());
        if forgot {
            self.metrics.double_sends.increment(1);
            tracing::info!(
                records = count,
                last_seq = last,
                "simulated failure: batch sent, not recorded"
            );
        }
        tracing::debug!(records = count, last_seq = last, "batch streamed");
        Ok(Ok(Sent {
            count,
            recorded_upto: (!forgot).then_some(last),
        }))
    }

    /// Waits until `REDIS_WAIT_REPLICAS` replicas have what this connection wrote so far (WAIT
    /// right after the XADD, on the connection that sent it).
    async fn replicated(&mut self) -> Result<(), StreamError> {
        let wanted = self.config.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let acked = self
            .redis
            .wait_for_replicas(&self.stream, wanted, REPLICA_WAIT)
            .await?;
        if acked < wanted {
            return Err(StreamError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// Waits until `REDIS_WAIT_REPLICAS` replicas hold everything the stream's master holds now
    /// (the entries being adopted among it), whoever wrote it.
    async fn replicas_hold_adopted(&mut self) -> Result<(), StreamError> {
        let wanted = self.config.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let acked = replicas::confirm_held(&mut self.redis, &self.stream, wanted, ADOPT_WAIT)
            .instrument(spans::redis("ROLE"))
            .await?;
        if acked < wanted {
            return Err(StreamError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    async fn record_streamed(&self, lease: &Lease, upto: i64) -> Result<(), StreamError> {
        match lease::record_streamed(&self.pool, lease, upto).await? {
            true => Ok(()),
            false => Err(StreamError::Fenced(lease.epoch)),
        }
    }

    /// The epoch of the stream's newest entry (0 when there is none or it is unreadable).
    async fn newest_epoch(&mut self) -> Result<i64, StreamError> {
        let top = stream::last_id(&mut self.redis, &self.stream).await?;
        if top == rocket_rides_log::StreamId::ZERO {
            return Ok(0);
        }
        let seq = top.log_seq();
        let entries = stream::read_range(&mut self.redis, &self.stream, seq, seq).await?;
        Ok(entries
            .first()
            .and_then(|e| e.record.as_ref().ok())
            .map_or(0, |r| r.epoch))
    }
}
