//! Group commit. Concurrent CreateRide calls queue here; a few writers each take what is
//! queued (up to `batch_max`, waiting at most `batch_wait` for more, by default not at all, so
//! a lone caller waits for no one) and write it in one statement: one transaction, one fsync,
//! many rides. Each call is answered only after that commit. Semantics stay per call: calls
//! that share an idempotency key make one ride, a key reused with another distance fails only
//! its call, and a failed batch fails exactly its calls and writes nothing. A full queue is
//! answered at once with RESOURCE_EXHAUSTED: overload is shed, never queued without bound.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rocket_rides_log::partition;
use rocket_rides_log::{
    record::same_decimal,
    sql::{FIND_BY_KEYS, INSERT_RIDES},
};
use rocket_rides_platform::{
    postgres::KeptConnection,
    telemetry::{propagation::TraceContext, spans},
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

use crate::{error::RideError, metrics::Metrics, wake::Waker};

/// A validated ride to write.
pub struct NewRide {
    pub decimal: String,
    pub key: Option<String>,
    /// The partition key, if the call named a rider.
    pub rider: Option<String>,
    pub trace: TraceContext,
}

/// What became of a ride.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Created(i64),
    /// The key already named this ride, with the same distance.
    Existing(i64),
}

type Reply = oneshot::Sender<Result<Written, RideError>>;

/// Batch bounds, from the api's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub queue: usize,
    pub writers: usize,
}

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<(NewRide, Reply)>,
}

impl GroupCommit {
    /// The queue, and the writers to run (they end once every `GroupCommit` is dropped).
    pub fn new(
        pool: PgPool,
        limits: Limits,
        metrics: Metrics,
        waker: Waker,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, received) = mpsc::channel(limits.queue);
        let received = Arc::new(Mutex::new(received));
        let writers = async move {
            let writers = (0..limits.writers).map(|_| {
                let writer = Writer {
                    pool: pool.clone(),
                    received: received.clone(),
                    limits,
                    metrics: metrics.clone(),
                    waker: waker.clone(),
                };
                tokio::spawn(writer.run())
            });
            for writer in writers.collect::<Vec<_>>() {
                writer.await.ok();
            }
        };
        (Self { queue }, writers)
    }

    /// Writes `ride` with whatever else is queued; answers after the commit.
    pub async fn write(&self, ride: NewRide) -> Result<Written, RideError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send((ride, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RideError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => RideError::ShuttingDown,
        })?;
        answer.await.map_err(|_| RideError::ShuttingDown)?
    }
}

struct Writer {
    pool: PgPool,
    received: Arc<Mutex<mpsc::Receiver<(NewRide, Reply)>>>,
    limits: Limits,
    metrics: Metrics,
    waker: Waker,
}

impl Writer {
    async fn run(self) {
        let mut db = KeptConnection::new(self.pool.clone());
        while let Some(batch) = self.take().await {
            let (rides, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            self.metrics.batch_size.record(rides.len() as f64);
            let written = match db.get().await {
                Ok(conn) => write(conn, &rides).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(written) => {
                    let created = written
                        .iter()
                        .filter(|w| matches!(w, Ok(Written::Created(_))))
                        .count();
                    if created > 0 {
                        self.metrics.rides_created.increment(created as u64);
                        self.waker.wake();
                    }
                    for (reply, written) in replies.into_iter().zip(written) {
                        let _ = reply.send(written);
                    }
                }
                Err(e) => {
                    db.give_back();
                    tracing::warn!(error = %e, rides = rides.len(), "a batch of rides failed; nothing of it was written");
                    for reply in replies {
                        let _ = reply.send(Err(RideError::BatchFailed));
                    }
                }
            }
        }
    }

    /// The next batch: the first queued call, then what else is queued (or arrives within
    /// `batch_wait`), up to `batch_max`. None once the queue is closed and empty.
    async fn take(&self) -> Option<Vec<(NewRide, Reply)>> {
        let mut received = self.received.lock().await;
        let first = received.recv().await?;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.limits.batch_wait;
        while batch.len() < self.limits.batch_max {
            match received.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) if self.limits.batch_wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, received.recv()).await {
                    Ok(Some(call)) => batch.push(call),
                    _ => break,
                },
            }
        }
        Some(batch)
    }
}

/// Writes `rides` in one statement; the outcome of each, in order.
async fn write(
    db: &mut PgConnection,
    rides: &[NewRide],
) -> Result<Vec<Result<Written, RideError>>, sqlx::Error> {
    // One row per distinct key: later calls with the same key share the first one's ride.
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    let mut unique = Vec::with_capacity(rides.len());
    for (i, ride) in rides.iter().enumerate() {
        match ride.key.as_deref() {
            Some(key) if first_with_key.contains_key(key) => {}
            Some(key) => {
                first_with_key.insert(key, i);
                unique.push(i);
            }
            None => unique.push(i),
        }
    }
    let column = |f: fn(&NewRide) -> Option<&str>| -> Vec<Option<&str>> {
        unique.iter().map(|&i| f(&rides[i])).collect()
    };
    let ids: Vec<Option<i64>> = sqlx::query_scalar(INSERT_RIDES)
        .bind(column(|r| Some(r.decimal.as_str())))
        .bind(column(|r| r.key.as_deref()))
        .bind(column(|r| r.trace.traceparent.as_deref()))
        .bind(column(|r| r.trace.tracestate.as_deref()))
        .bind(column(|r| r.rider.as_deref()))
        .bind(
            unique
                .iter()
                .map(|&i| rides[i].rider.as_deref().map(partition::key_hash))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *db)
        .instrument(spans::postgres("INSERT rides, log_records (group commit)"))
        .await?;
    let mut inserted: HashMap<usize, i64> = HashMap::new();
    let mut taken = Vec::new();
    for (&i, id) in unique.iter().zip(&ids) {
        match id {
            Some(id) => {
                inserted.insert(i, *id);
            }
            // Only a taken key makes the insert skip a ride.
            None => taken.push(rides[i].key.clone().unwrap_or_default()),
        }
    }
    // The conflicting transactions have committed by now (ON CONFLICT waits), so their rides
    // are visible.
    let existing: HashMap<String, (i64, String)> = if taken.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, i64, String)>(FIND_BY_KEYS)
            .bind(&taken)
            .fetch_all(db)
            .instrument(spans::postgres("SELECT rides by idempotency_key"))
            .await?
            .into_iter()
            .map(|(key, id, distance)| (key, (id, distance)))
            .collect()
    };
    Ok(rides
        .iter()
        .enumerate()
        .map(|(i, ride)| {
            let Some(key) = ride.key.as_deref() else {
                return Ok(Written::Created(inserted[&i]));
            };
            let first = first_with_key[key];
            let (id, stored, created) = match inserted.get(&first) {
                Some(&id) => (id, rides[first].decimal.clone(), first == i),
                None => {
                    let (id, stored) = existing
                        .get(key)
                        .cloned()
                        .ok_or_else(|| RideError::KeyVanished(key.to_string()))?;
                    (id, stored, false)
                }
            };
            if !same_decimal(&stored, &ride.decimal) {
                return Err(RideError::KeyReused {
                    key: key.to_string(),
                    distance: stored,
                });
            }
            Ok(if created {
                Written::Created(id)
            } else {
                Written::Existing(id)
            })
        })
        .collect())
}
