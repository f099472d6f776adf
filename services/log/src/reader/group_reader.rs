//! A member of a partition stream's Redis consumer group, held to the same promise as a
//! checkpointed consumer. A kind of group (the history, a side-effect worker) supplies only
//! what it does with records (`Project`); where the group starts, what it may skip and when
//! it halts are decided here.
//!
//! - The group's durable position lives in Postgres (`position`); Redis's view of the group is
//!   only how entries are shared out. A group Redis lost is created at the durable position,
//!   never at the stream's start or end; a member's first entry, and a Postgres that went back
//!   (restored, or the group reset), move the group back to the durable position, so whatever
//!   Postgres no longer has done is done again.
//! - Each delivered entry is checked against the archive (`super::check`): only the archived
//!   record is projected; an entry that differs halts the member. An entry at an id no record
//!   has (not `<seq>-0`) is a poison entry: retried, then dead-lettered after `MAX_DELIVERIES`.
//! - Whatever the stream no longer holds past the group's last delivered entry comes from the
//!   archive, record by record; a record neither holds halts the member: the group is never
//!   moved over a hole.
//! - The position advances to what is delivered and acknowledged (`Standing::done`), on every
//!   round, which also tells trimming, pruning and expiry that the group lives.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use rocket_rides_platform::{
    health::Soundness, redis_conn::RedisConnection, retry::Backoff, shutdown::CancellationToken,
    telemetry::spans,
};
use sqlx::PgPool;
use tracing::Instrument;

use super::{
    Halt, LogIdentity, Verdict, check,
    group::{DeadLetter, Group, GroupError, Standing},
    position::{self, At, PositionError},
};
use crate::{
    Entry, LogRecord, StreamId, archive,
    driver::{ErrorKind, Halting, PartitionWorker, Report, Turn},
    stream,
};

/// How long one XREADGROUP waits for new entries.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Archive pages when filling in what the stream lost.
const ARCHIVE_PAGE: i64 = 1000;

/// What a kind of group does with the records its members are delivered.
pub trait Project: Send + Sync + 'static {
    /// Applies `records` idempotently (a record may come again after a crash or a claim);
    /// returns, for each ride applied, its age in seconds. A ride left out failed: its entry
    /// stays pending, is retried, and is dead-lettered after `MAX_DELIVERIES`.
    fn project(
        &self,
        records: &[&LogRecord],
    ) -> impl Future<Output = Result<HashMap<i64, f64>, sqlx::Error>> + Send;
}

/// How the members of a group work.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The Redis consumer group, and the group's name in `consumer_positions`.
    pub group: String,
    /// `STREAM_NAME`: the log's name.
    pub stream: String,
    /// `CONSUMER_INSTANCE`: this member's name in the group.
    pub instance: String,
    /// `CLAIM_IDLE`: take over what another member left pending this long.
    pub claim_idle: Duration,
    /// `MAX_DELIVERIES`: dead-letter a poison entry after this many deliveries.
    pub max_deliveries: u32,
    /// `MEMBER_EXPIRY`: forget a member silent this long with nothing pending.
    pub member_expiry: Duration,
    /// Entries per read.
    pub batch_size: u32,
}

/// A group kind's metrics, named `<prefix>_*`.
#[derive(Clone)]
pub struct GroupMetrics {
    prefix: &'static str,
    /// `_deliveries_total`: entries delivered to this member (read or claimed).
    pub deliveries: Counter,
    /// `_projected_total`: records projected (and their entries acknowledged).
    pub projected: Counter,
    /// `_claims_total`: entries claimed from members that left them pending.
    pub claims: Counter,
    /// `_dead_letters_total`: entries given up on or set aside.
    pub dead_letters: Counter,
    /// `_batch_size`
    pub batch_size: Histogram,
}

/// A partition's gauges.
pub struct PartitionGauges {
    /// `_pending{partition}`: delivered, not yet acknowledged.
    pub pending: Gauge,
    /// `_lag_entries{partition}`: pending plus not yet delivered.
    pub lag_entries: Gauge,
    /// `_lag_seconds{partition}`: the age of the oldest ride of the last batch when it was
    /// projected (0 once nothing is pending).
    pub lag_seconds: Gauge,
    /// `_halted{partition}`: 1 while this member stands still because going on would be wrong.
    pub halted: Gauge,
}

impl GroupMetrics {
    pub fn register(prefix: &'static str) -> Self {
        Self {
            prefix,
            deliveries: counter!(format!("{prefix}_deliveries_total")),
            projected: counter!(format!("{prefix}_projected_total")),
            claims: counter!(format!("{prefix}_claims_total")),
            dead_letters: counter!(format!("{prefix}_dead_letters_total")),
            batch_size: histogram!(format!("{prefix}_batch_size")),
        }
    }

    pub fn partition(&self, partition: i32) -> PartitionGauges {
        let prefix = self.prefix;
        let label = || [("partition", partition.to_string())];
        PartitionGauges {
            pending: gauge!(format!("{prefix}_pending"), &label()),
            lag_entries: gauge!(format!("{prefix}_lag_entries"), &label()),
            lag_seconds: gauge!(format!("{prefix}_lag_seconds"), &label()),
            halted: gauge!(format!("{prefix}_halted"), &label()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Group(#[from] GroupError),
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("{0}")]
    Position(#[from] PositionError),
}

impl From<redis::RedisError> for ReadError {
    fn from(e: redis::RedisError) -> Self {
        Self::Group(e.into())
    }
}

impl From<crate::stream::BadStreamId> for ReadError {
    fn from(e: crate::stream::BadStreamId) -> Self {
        Self::Group(e.into())
    }
}

impl ErrorKind for ReadError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Group(GroupError::Missing { .. }) => "group_missing",
            Self::Group(_) => "redis",
            Self::Postgres(_) => "postgres",
            Self::Position(PositionError::WentBack { .. }) => "position_went_back",
            Self::Position(_) => "position",
        }
    }

    /// Redis lost the group, or Postgres went back: enter again now.
    fn retry_now(&self) -> bool {
        matches!(
            self,
            Self::Group(GroupError::Missing { .. })
                | Self::Position(PositionError::WentBack { .. })
        )
    }
}

/// One member's work on one partition.
pub struct GroupReader<P> {
    config: GroupConfig,
    partition: i32,
    pool: PgPool,
    /// For the blocking XREADGROUP only.
    reader: RedisConnection,
    redis: RedisConnection,
    metrics: GroupMetrics,
    project: P,
    group: Group,
    gauges: PartitionGauges,
    /// The durable position this process saw last (None before its first entry).
    known: Option<i64>,
}

/// The Redis connections a member uses for one partition: one for its blocking reads, one for
/// the rest.
pub struct Connections {
    pub reader: RedisConnection,
    pub redis: RedisConnection,
}

impl<P: Project> GroupReader<P> {
    pub fn new(
        config: GroupConfig,
        partition: i32,
        pool: PgPool,
        connections: Connections,
        metrics: GroupMetrics,
        project: P,
    ) -> Self {
        Self {
            group: Group {
                stream: crate::partition::stream_key(&config.stream, partition),
                name: config.group.clone(),
            },
            gauges: metrics.partition(partition),
            config,
            partition,
            pool,
            reader: connections.reader,
            redis: connections.redis,
            metrics,
            project,
            known: None,
        }
    }

    /// How the driver reports for this member: halts on `sound` and `<prefix>_halted`, errors
    /// on `<prefix>_errors_total`.
    pub fn report(&self, sound: Soundness) -> Report {
        Report {
            partition: self.partition,
            what: "reading",
            sound,
            halted: self.gauges.halted.clone(),
            errors: format!("{}_errors_total", self.metrics.prefix),
            labels: Vec::new(),
        }
    }
}

impl<P: Project> PartitionWorker for GroupReader<P> {
    type Halt = Halt;
    type Error = ReadError;

    async fn attempt(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<Turn<Halt>, ReadError> {
        self.work(cancel, backoff, halting).await
    }

    async fn stopped(&mut self) {
        // What this member finished last counts, so the group holds the stream no longer than
        // it must while it is away.
        if let Err(e) = self.record_position().await {
            tracing::debug!(error = %e, "could not record the group's position");
        }
        // Leave the group if nothing is pending here, so members named by pod do not pile up.
        if let Err(e) = self
            .group
            .leave(&mut self.redis, &self.config.instance)
            .await
        {
            tracing::debug!(error = %e, "could not leave the group");
        }
    }
}

impl<P: Project> GroupReader<P> {
    fn at(&self) -> At<'_> {
        At {
            stream: &self.config.stream,
            name: &self.config.group,
            partition: self.partition,
        }
    }

    async fn work(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> Result<Turn<Halt>, ReadError> {
        let log = LogIdentity::read(&self.pool).await?;
        if let Err(halt) = log.check_stream(&self.config.stream) {
            return Ok(Turn::Halt(halt));
        }
        if let Some(halt) = self.enter().await? {
            return Ok(Turn::Halt(halt));
        }
        // What this member was delivered and did not acknowledge (it restarted, or halted on
        // it): checked again before anything new.
        let own = self
            .group
            .read_own(
                &mut self.redis,
                &self.config.instance,
                self.config.batch_size,
            )
            .await?;
        if let Some(halt) = self.deleted(&own.deleted).await? {
            return Ok(Turn::Halt(halt));
        }
        if let Some(halt) = self.handle(&own.entries).await? {
            return Ok(Turn::Halt(halt));
        }
        halting.clear();
        let round_every =
            (self.config.claim_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut next_round = Instant::now();
        loop {
            if Instant::now() >= next_round {
                if let Some(halt) = self.round().await? {
                    return Ok(Turn::Halt(halt));
                }
                next_round = Instant::now() + round_every;
            }
            if cancel.is_cancelled() {
                return Ok(Turn::Cancelled);
            }
            // Not cut short by a shutdown: what Redis delivers is projected and acknowledged
            // before the member leaves, rather than left pending for a claim.
            let block = BLOCK.min(round_every);
            let (member, count) = (&self.config.instance, self.config.batch_size);
            let entries = self
                .group
                .read_new(&mut self.reader, member, count, block)
                .await?;
            backoff.reset();
            if !entries.is_empty() {
                self.metrics.deliveries.increment(entries.len() as u64);
                if let Some(halt) = self.handle(&entries).await? {
                    return Ok(Turn::Halt(halt));
                }
            }
        }
    }

    /// Puts the group where its durable position says, creating it there if Redis lost it,
    /// then fills in from the archive what the stream lost after it.
    async fn enter(&mut self) -> Result<Option<Halt>, ReadError> {
        let durable = position::register(&self.pool, self.at()).await?;
        let went_back = self.known.is_some_and(|known| durable < known);
        let first_entry = self.known.is_none();
        self.known = Some(durable);
        let at = StreamId::of_seq(durable);
        match self.group.standing(&mut self.redis).await? {
            None => {
                if self.group.create(&mut self.redis, at).await? {
                    tracing::info!(partition = self.partition, group = %self.group.name, position = durable, "created the consumer group at its position in Postgres");
                }
            }
            // Redis's group is ahead of Postgres: on a member's start it cannot tell whether
            // Postgres went back meanwhile, so what follows the durable position is done again
            // (idempotently); the same when Postgres is seen going back.
            Some(s) if s.last_delivered > durable && (first_entry || went_back) => {
                tracing::info!(
                    partition = self.partition,
                    from = s.last_delivered,
                    to = durable,
                    "moving the group back to its position in Postgres"
                );
                self.group.set_id(&mut self.redis, at).await?;
            }
            // Redis's group is behind (Redis restored to older data): what it lacks is done.
            Some(s) if s.last_delivered < durable => {
                self.group.set_id(&mut self.redis, at).await?;
            }
            Some(_) => {}
        }
        self.fill().await
    }

    /// Projects from the archive what the stream lost after the group's last delivered entry
    /// (trimmed while the group was away past CONSUMER_EXPIRY, or lost by Redis), then moves
    /// the group past it. Halts on a record neither holds, and while the stream ends before
    /// the durable position (Redis lost entries: `republish` first). Also measures the lag.
    async fn fill(&mut self) -> Result<Option<Halt>, ReadError> {
        let Some(standing) = self.group.standing(&mut self.redis).await? else {
            return Err(GroupError::Missing {
                stream: self.group.stream.clone(),
                group: self.group.name.clone(),
            }
            .into());
        };
        measure(&self.gauges, &standing);
        let stream = &self.group.stream;
        let top = stream::last_id(&mut self.redis, stream).await?.log_seq();
        let durable = self.known.unwrap_or(0);
        if top < durable {
            return Ok(Some(Halt::RedisBehind {
                stream_top: top,
                checkpoint: durable,
            }));
        }
        let delivered = standing.last_delivered;
        let upto = match stream::read_first(&mut self.redis, stream).await? {
            Some(first) => first - 1,
            None => top,
        };
        if delivered >= upto {
            return Ok(None);
        }
        tracing::warn!(
            partition = self.partition,
            after = delivered,
            upto,
            "the stream lost entries the group had not read; projecting them from the archive"
        );
        if let Some(halt) = self.project_archived(delivered, upto).await? {
            return Ok(Some(halt));
        }
        // Entries after `upto` stay deliverable; one delivered meanwhile to another member may
        // be delivered again, which projecting idempotently makes harmless.
        self.group
            .set_id(&mut self.redis, StreamId::of_seq(upto))
            .await?;
        Ok(None)
    }

    /// Projects the archived records `after < seq <= upto`, every one of them: a seq the
    /// archive lacks halts.
    async fn project_archived(&self, mut after: i64, upto: i64) -> Result<Option<Halt>, ReadError> {
        while after < upto {
            let page = archive::range(&self.pool, self.partition, after, upto, ARCHIVE_PAGE)
                .instrument(spans::postgres("SELECT log_records (archive)"))
                .await?;
            for (i, record) in page.iter().enumerate() {
                if record.seq != after + 1 + i as i64 {
                    return Ok(Some(Halt::Gap {
                        expected: after + 1 + i as i64,
                    }));
                }
            }
            let Some(last) = page.last() else {
                return Ok(Some(Halt::Gap {
                    expected: after + 1,
                }));
            };
            after = last.seq;
            let records: Vec<&LogRecord> = page.iter().collect();
            let found = self.project.project(&records).await?;
            self.metrics.projected.increment(found.len() as u64);
        }
        Ok(None)
    }

    /// The periodic part: claim what others left pending, fill in what the stream lost,
    /// record the position, forget the long gone.
    async fn round(&mut self) -> Result<Option<Halt>, ReadError> {
        let GroupConfig {
            claim_idle,
            batch_size,
            member_expiry,
            ..
        } = self.config;
        let instance = self.config.instance.clone();
        let claimed = self
            .group
            .claim(&mut self.redis, &instance, claim_idle, batch_size)
            .await?;
        if let Some(halt) = self.deleted(&claimed.deleted).await? {
            return Ok(Some(halt));
        }
        if !claimed.entries.is_empty() {
            tracing::info!(
                partition = self.partition,
                entries = claimed.entries.len(),
                "claimed entries left pending for {claim_idle:?}"
            );
            let count = claimed.entries.len() as u64;
            self.metrics.claims.increment(count);
            self.metrics.deliveries.increment(count);
            if let Some(halt) = self.handle(&claimed.entries).await? {
                return Ok(Some(halt));
            }
        }
        if let Some(halt) = self.fill().await? {
            return Ok(Some(halt));
        }
        self.record_position().await?;
        for gone in self
            .group
            .forget_gone(&mut self.redis, &instance, member_expiry)
            .await?
        {
            tracing::info!(partition = self.partition, member = %gone, "removed a member gone for {member_expiry:?} with nothing pending");
        }
        Ok(None)
    }

    /// Records in Postgres how far the group is done, which also says that it lives.
    async fn record_position(&mut self) -> Result<(), ReadError> {
        let Some(known) = self.known else {
            return Ok(());
        };
        if let Some(standing) = self.group.standing(&mut self.redis).await? {
            let done = standing.done();
            self.known = Some(position::advance(&self.pool, self.at(), known, done).await?);
        }
        Ok(())
    }

    /// Entries that were pending, then deleted from the stream (trimmed, or a divergent tail
    /// removed by `rewind`): the archive decides. Their records are projected; a record pruned
    /// from the archive halts. A seq past the archive's end has no record yet, but may get one
    /// (after `rewind`, new rides take the seqs again): the group goes back before it, so that
    /// record is delivered when it comes.
    async fn deleted(&mut self, deleted: &[StreamId]) -> Result<Option<Halt>, ReadError> {
        let mut unwritten: Option<i64> = None;
        for id in deleted {
            let seq = id.log_seq();
            let kept = archive::range(&self.pool, self.partition, seq - 1, seq, 1).await?;
            if kept.is_empty() {
                let first = archive::first_seq(&self.pool, self.partition).await?;
                if first.is_some_and(|first| seq < first) {
                    return Ok(Some(Halt::Gap { expected: seq }));
                }
                unwritten = Some(unwritten.map_or(seq, |u| u.min(seq)));
                continue;
            }
            let records: Vec<&LogRecord> = kept.iter().collect();
            self.project.project(&records).await?;
        }
        if let Some(seq) = unwritten
            && let Some(standing) = self.group.standing(&mut self.redis).await?
            && standing.last_delivered >= seq
        {
            tracing::info!(
                partition = self.partition,
                from = standing.last_delivered,
                to = seq - 1,
                "entries removed from the stream before their records exist: moving the group back so they are delivered"
            );
            self.group
                .set_id(&mut self.redis, StreamId::of_seq(seq - 1))
                .await?;
        }
        Ok(None)
    }

    /// Projects delivered entries that are their archived records and acknowledges them.
    /// An entry at an id no record has, or whose ride the projection could not apply, stays
    /// pending for a retry and is dead-lettered after `MAX_DELIVERIES`; an unreadable entry is
    /// set aside and its archived record projected; an entry that differs from the archive
    /// halts the member (it stays pending, and is checked again on resuming).
    async fn handle(&mut self, entries: &[Entry]) -> Result<Option<Halt>, ReadError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let batch = tracing::info_span!(
            "project batch",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.destination.name = %self.group.stream,
            messaging.consumer.group.name = %self.group.name,
            member = %self.config.instance,
            messaging.batch.message_count = entries.len(),
        );
        let archived = self
            .archived_for(entries)
            .instrument(batch.in_scope(|| spans::postgres("SELECT log_records (archive)")))
            .await?;
        let mut failures: Vec<(StreamId, String)> = Vec::new();
        let mut set_aside: Vec<(StreamId, String)> = Vec::new();
        let mut records: Vec<(StreamId, LogRecord)> = Vec::new();
        let mut halt = None;
        for entry in entries {
            if entry.id.seq != 0 {
                failures.push((
                    entry.id,
                    "not a log record: no record has this id (records are <seq>-0)".to_string(),
                ));
                continue;
            }
            let seq = entry.id.log_seq();
            match check(entry, archived.get(&seq)) {
                Verdict::Apply(record) => records.push((entry.id, record)),
                Verdict::SetAside(record, e) => {
                    set_aside.push((entry.id, format!("not a log record: {e}")));
                    records.push((entry.id, record));
                }
                Verdict::Diverged(reason) => {
                    // This one and later ones stay pending.
                    halt = Some(Halt::Diverged { seq, reason });
                    break;
                }
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
                rocket_rides_platform::telemetry::propagation::join(span, &record.trace, &batch)
            })
            .collect();
        let rides: Vec<&LogRecord> = records.iter().map(|(_, r)| r).collect();
        let found = match rides.is_empty() {
            true => HashMap::new(),
            false => {
                self.project
                    .project(&rides)
                    .instrument(batch.in_scope(|| spans::postgres("project")))
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
                        "ride {} of {} m could not be projected",
                        record.ride_id, record.distance
                    ),
                ));
            }
        }
        if !set_aside.is_empty() {
            let letters: Vec<DeadLetter> = set_aside
                .iter()
                .filter(|(id, _)| done.contains(id))
                .map(|(id, reason)| DeadLetter {
                    id: *id,
                    deliveries: 1,
                    reason,
                })
                .collect();
            for letter in &letters {
                tracing::error!(partition = self.partition, stream_id = %letter.id, error = %letter.reason, "unreadable entry set aside; its archived record was projected");
            }
            self.group
                .dead_letter(&mut self.redis, &self.config.instance, &letters)
                .await?;
            self.metrics.dead_letters.increment(letters.len() as u64);
        }
        self.group.ack(&mut self.redis, &done).await?;
        self.metrics.projected.increment(done.len() as u64);
        self.metrics.batch_size.record(entries.len() as f64);
        if let Some(age) = found.values().copied().reduce(f64::max) {
            self.gauges.lag_seconds.set(age);
        }
        if !failures.is_empty() {
            self.settle(failures).await?;
        }
        Ok(halt)
    }

    /// The archive's records at the seqs of `entries` (one range read).
    async fn archived_for(
        &self,
        entries: &[Entry],
    ) -> Result<HashMap<i64, LogRecord>, sqlx::Error> {
        let seqs = entries.iter().map(|e| e.id.log_seq());
        let (Some(first), Some(last)) = (seqs.clone().min(), seqs.max()) else {
            return Ok(HashMap::new());
        };
        let page = archive::range(
            &self.pool,
            self.partition,
            first - 1,
            last,
            last - first + 1,
        )
        .await?;
        Ok(page.into_iter().map(|r| (r.seq, r)).collect())
    }

    /// Dead-letters the failed entries that have used up their deliveries; the others wait
    /// for a retry.
    async fn settle(&mut self, mut failures: Vec<(StreamId, String)>) -> Result<(), ReadError> {
        failures.sort_by_key(|(id, _)| *id);
        let (first, last) = (failures[0].0, failures[failures.len() - 1].0);
        let deliveries = self
            .group
            .deliveries(
                &mut self.redis,
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
                tracing::error!(partition = self.partition, stream_id = %id, deliveries = delivered, error = %reason, dead_letters = %stream::dead_letter_stream(&self.group.stream), "entry failed {delivered} deliveries; moved to the dead-letter stream");
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
            self.group
                .dead_letter(&mut self.redis, &self.config.instance, &letters)
                .await?;
            self.metrics.dead_letters.increment(letters.len() as u64);
        }
        Ok(())
    }
}

fn measure(gauges: &PartitionGauges, standing: &Standing) {
    gauges.pending.set(standing.pending as f64);
    gauges
        .lag_entries
        .set((standing.pending + standing.lag.unwrap_or(0)) as f64);
    if standing.pending == 0 && standing.lag == Some(0) {
        gauges.lag_seconds.set(0.0);
    }
}
