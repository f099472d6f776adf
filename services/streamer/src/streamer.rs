//! Moving staged records into the stream.
//!
//! Order and numbering are what make consumers exact. A batch takes only rows whose writing
//! transaction is older than every transaction still running (`xid < xmin`), in `(xid, id)`
//! order: a transaction that commits late cannot sort before rows already streamed, so a
//! batch that failed after its XADD is re-read as the same rows in the same order, and gets the
//! same `seq` numbers. The XADD, the DELETE of the rows and the new `last_seq` all happen in
//! the transaction that read them, under a row lock on the sequence, so two streamers can never
//! number the same position differently even if leader election were to fail.

use std::time::{Duration, Instant};

use rand::Rng;
use redis::aio::ConnectionManager;
use rocket_rides_log::LogRecord;
use rocket_rides_platform::{
    retry::Backoff,
    shutdown::CancellationToken,
    telemetry::{
        propagation::{self, TraceContext},
        spans,
    },
};
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgListener},
};
use tracing::Instrument;

use crate::{Config, metrics::Metrics, trim};

/// Postgres channel the staging trigger notifies on commit.
const CHANNEL: &str = "staged_log_records";
/// Fallback poll while idle, in case a notification was missed (e.g. across a reconnect).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What the streaming loop needs of the configuration.
pub struct Settings {
    pub stream: String,
    pub batch_size: u32,
    pub max_len: u32,
    pub double_send_rate: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Sets the leader gauge while alive, so it drops back to 0 however leadership ends.
struct Leading(metrics::Gauge);

impl Leading {
    fn start(gauge: &metrics::Gauge) -> Self {
        gauge.set(1.0);
        Self(gauge.clone())
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

/// A staged record, as the batch query returns it.
#[derive(sqlx::FromRow)]
struct StagedRow {
    id: i64,
    ride_id: i64,
    distance: String,
    #[sqlx(flatten)]
    trace: TraceContext,
}

pub struct Streamer {
    settings: Settings,
    options: PgConnectOptions,
    pool: PgPool,
    redis: ConnectionManager,
    metrics: Metrics,
}

const LAST_SEQ: &str = "SELECT last_seq FROM log_sequences WHERE stream = $1 FOR UPDATE";
const READY_ROWS: &str = "
    SELECT id, ride_id, distance::text, traceparent, tracestate
    FROM staged_log_records
    WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY xid, id
    LIMIT $1";

impl Streamer {
    pub fn new(
        config: &Config,
        pool: PgPool,
        redis: ConnectionManager,
        metrics: Metrics,
    ) -> Result<Self, rocket_rides_platform::Error> {
        Ok(Self {
            settings: Settings {
                stream: config.stream.clone(),
                batch_size: config.batch_size,
                max_len: config.max_len,
                double_send_rate: config.double_send_rate,
            },
            options: config.postgres.options()?,
            pool,
            redis,
            metrics,
        })
    }

    /// Leads (or stands by) until `cancel`; after any failure, waits and starts over.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        while !cancel.is_cancelled() {
            match self.lead(&cancel, &mut backoff).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "streaming interrupted; nothing is lost, retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits for leadership (a session advisory lock, released by Postgres when this process
    /// dies), then streams until `cancel`.
    async fn lead(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), StreamError> {
        let mut session = PgConnection::connect_with(&self.options).await?;
        let mut standing_by = false;
        while !sqlx::query_scalar::<_, bool>(
            "SELECT pg_try_advisory_lock(hashtext('rocket-rides-streamer:' || $1))",
        )
        .bind(&self.settings.stream)
        .fetch_one(&mut session)
        .await?
        {
            if !standing_by {
                tracing::info!("another streamer leads; standing by");
                standing_by = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        sqlx::query("INSERT INTO log_sequences (stream) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&self.settings.stream)
            .execute(&mut session)
            .await?;
        tracing::info!("leading: streaming staged records");
        backoff.reset();
        let _leading = Leading::start(&self.metrics.leader);

        // Rows committed but held back by an older running transaction are retried soon,
        // backing off while that transaction stays open.
        let mut held_back = Backoff::new(Duration::from_millis(2), IDLE_POLL);
        loop {
            while self.stream_batch(&mut session).await? == self.settings.batch_size as usize {
                if cancel.is_cancelled() {
                    return Ok(());
                }
            }
            trim::trim(&self.pool, &mut self.redis, &self.settings).await?;
            let waiting: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM staged_log_records)")
                    .fetch_one(&mut session)
                    .await?;
            let wait = if waiting {
                held_back.next_delay()
            } else {
                held_back.reset();
                IDLE_POLL
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                notification = listener.recv() => {
                    notification?;
                    // One pass serves every commit that notified so far.
                    while listener.next_buffered().is_some() {}
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Streams one batch and returns how many records it moved.
    async fn stream_batch(&mut self, session: &mut PgConnection) -> Result<usize, StreamError> {
        let started = Instant::now();
        let mut tx = session.begin().await?;
        let last_seq: i64 = sqlx::query_scalar(LAST_SEQ)
            .bind(&self.settings.stream)
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<StagedRow> = sqlx::query_as(READY_ROWS)
            .bind(i64::from(self.settings.batch_size))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let count = rows.len();
        let new_last = last_seq + count as i64;
        let batch = tracing::info_span!(
            "stream batch",
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.destination.name = %self.settings.stream,
            messaging.batch.message_count = count,
            log.first_seq = last_seq + 1,
            log.last_seq = new_last,
            simulated.double_send = tracing::field::Empty,
        );
        // Each record gets a span in its ride's trace, linked to this batch; the stream entry
        // carries that span's context on to the consumers.
        let mut ids = Vec::with_capacity(count);
        let mut record_spans = Vec::with_capacity(count);
        let mut xadd = redis::pipe();
        xadd.atomic();
        for (seq, row) in (last_seq + 1..).zip(rows) {
            let span = tracing::info_span!(
                parent: None,
                "stream ride",
                otel.kind = "producer",
                messaging.system = "redis",
                messaging.destination.name = %self.settings.stream,
                ride.id = row.ride_id,
                log.seq = seq,
            );
            let span = propagation::join(span, &row.trace, &batch);
            let record = LogRecord {
                seq,
                ride_id: row.ride_id,
                distance: row.distance,
                trace: propagation::of_span(&span),
            };
            xadd.cmd("XADD")
                .arg(&self.settings.stream)
                .arg("*")
                .arg(record.fields())
                .ignore();
            ids.push(row.id);
            record_spans.push(span);
        }
        let double_sent = async {
            let double_send = rand::rng().random_bool(self.settings.double_send_rate);
            batch.record("simulated.double_send", double_send);
            for _ in 0..if double_send { 2 } else { 1 } {
                xadd.query_async::<()>(&mut self.redis)
                    .instrument(spans::redis("XADD"))
                    .await?;
            }
            async {
                sqlx::query("DELETE FROM staged_log_records WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE log_sequences SET last_seq = $2 WHERE stream = $1")
                    .bind(&self.settings.stream)
                    .bind(new_last)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .instrument(spans::postgres(
                "DELETE staged_log_records, UPDATE log_sequences, COMMIT",
            ))
            .await?;
            self.metrics.records_streamed.increment(count as u64);
            self.metrics.batch_size.record(count as f64);
            self.metrics
                .batch_duration
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(records = count, last_seq = new_last, "batch streamed");
            Ok::<_, StreamError>(double_send)
        }
        .instrument(batch.clone())
        .await?;
        if double_sent {
            self.metrics.double_sends.increment(1);
            tracing::info!(
                records = count,
                first_seq = last_seq + 1,
                "simulated failure: batch sent twice"
            );
        }
        Ok(count)
    }
}
