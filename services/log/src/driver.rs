//! One driver for every per-partition worker (a checkpointed consumer's partition, a consumer
//! group member's partition): it runs the worker's attempts until cancelled, and owns what
//! every such loop needs and none should write again: backoff after an error (counted by kind
//! and partition, logged with the retry delay), a halt (NOT_SERVING, a gauge, the reason logged
//! again when it changes or every 30 s, a recheck every 2 s, a log line when it clears),
//! standing by while the partition is another instance's, and sleeps that a shutdown cuts
//! short.

use std::{
    collections::BTreeSet,
    fmt::Display,
    future::Future,
    time::{Duration, Instant},
};

use metrics::{Gauge, counter};
use rocket_rides_platform::{
    health::Soundness, prometheus::Raised, retry::Backoff, shutdown::CancellationToken,
};
use tokio::sync::watch;

/// How often a halted worker checks whether the log was repaired.
pub const RECHECK: Duration = Duration::from_secs(2);
/// How often a halted worker repeats why.
const REMIND: Duration = Duration::from_secs(30);

/// How an attempt ended, short of an error.
pub enum Turn<H> {
    /// Shut down.
    Cancelled,
    /// Going on would be wrong; `H` says why and what repairs it.
    Halt(H),
    /// The partition is (or is to be) another instance's: stand by.
    NotOurs,
}

/// A worker's error, as counted: `<metric>{kind}`.
pub trait ErrorKind: Display {
    fn kind(&self) -> &'static str;
    /// Whether to retry at once rather than back off (the cause is already known gone).
    fn retry_now(&self) -> bool {
        false
    }
}

/// One partition's worker.
pub trait PartitionWorker: Send {
    type Halt: Display + PartialEq + Send;
    type Error: ErrorKind + Send;

    /// Works the partition until it stops; `halting` is cleared by the worker once it knows
    /// the log agrees again, `backoff` reset once it gets through.
    fn attempt(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        halting: &mut Halting,
    ) -> impl Future<Output = Result<Turn<Self::Halt>, Self::Error>> + Send;

    /// Called after each failed attempt, before the delay (e.g. to report NOT_SERVING once
    /// failures have lasted too long).
    fn failed(&mut self, _error: &Self::Error) {}

    /// Called once the driver stops, to leave whatever the worker holds.
    fn stopped(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Where a driver reports: the partition, the service's soundness, the halt gauge (raised by
/// one while halted), the error counter's name and labels.
pub struct Report {
    pub partition: i32,
    pub what: &'static str,
    pub sound: Soundness,
    pub halted: Gauge,
    pub errors: String,
    pub labels: Vec<(&'static str, String)>,
}

/// A halt in progress, if any: what the service reports while a worker is halted.
pub struct Halting {
    report: Report,
    halted: Option<(String, Instant, Raised)>,
}

impl Halting {
    pub fn new(report: Report) -> Self {
        Self {
            report,
            halted: None,
        }
    }

    pub fn is_halted(&self) -> bool {
        self.halted.is_some()
    }

    /// The log agrees again: SERVING (as far as this partition goes), gauge down.
    pub fn clear(&mut self) {
        if self.halted.take().is_some() {
            tracing::info!(
                partition = self.report.partition,
                "the log agrees with the archive again; {} on",
                self.report.what
            );
        }
        self.report.sound.set(self.report.partition, true);
    }

    /// Halted for `halt`: NOT_SERVING, gauge up, the reason logged when it changes and every
    /// 30 s.
    pub fn raise(&mut self, halt: &impl Display) {
        let reason = halt.to_string();
        let remind = self
            .halted
            .as_ref()
            .is_none_or(|(was, at, _)| *was != reason || at.elapsed() >= REMIND);
        if remind {
            tracing::error!(
                partition = self.report.partition,
                error = %reason,
                "stopped {}: going on would make what this reader derives from the log wrong; \
                 it is exact up to its position. Checking again every {RECHECK:?}",
                self.report.what
            );
            let raised = match self.halted.take() {
                Some((.., raised)) => raised,
                None => Raised::new(&self.report.halted),
            };
            self.halted = Some((reason, Instant::now(), raised));
        }
        self.report.sound.set(self.report.partition, false);
    }

    fn count(&self, error: &impl ErrorKind) {
        let mut labels = self.report.labels.clone();
        labels.push(("kind", error.kind().to_string()));
        labels.push(("partition", self.report.partition.to_string()));
        counter!(self.report.errors.clone(), &labels).increment(1);
    }
}

/// Runs `worker` until `cancel`. `mine`, if given, is the share-out: a worker that found the
/// partition another's waits for it to change (or rechecks every 2 s, as a lease may run out).
pub async fn drive<W: PartitionWorker>(
    mut worker: W,
    report: Report,
    mut mine: Option<watch::Receiver<BTreeSet<i32>>>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut halting = Halting::new(report);
    loop {
        let attempt = worker.attempt(&cancel, &mut backoff, &mut halting).await;
        let delay = match attempt {
            Ok(Turn::Cancelled) => break,
            Ok(Turn::NotOurs) => {
                halting.clear();
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = share_changed(&mut mine) => {}
                    _ = tokio::time::sleep(RECHECK) => {}
                }
                continue;
            }
            Ok(Turn::Halt(halt)) => {
                halting.raise(&halt);
                RECHECK
            }
            Err(e) => {
                halting.count(&e);
                worker.failed(&e);
                let delay = match e.retry_now() {
                    true => Duration::from_millis(100),
                    false => backoff.next_delay(),
                };
                tracing::warn!(
                    partition = halting.report.partition,
                    kind = e.kind(),
                    error = %e,
                    retry_in = ?delay,
                    "{} interrupted; resuming from what was committed",
                    halting.report.what
                );
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    worker.stopped().await;
}

/// Returns once the share-out changes (each change once); never without a share-out, or once
/// it has ended.
async fn share_changed(mine: &mut Option<watch::Receiver<BTreeSet<i32>>>) {
    if let Some(mine) = mine
        && mine.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
