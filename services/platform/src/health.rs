//! gRPC health (`grpc.health.v1`). Service `""` and the service's own name report readiness:
//! SERVING only while every dependency answers and nothing else holds the service back (a
//! consumer that found a gap). Service `liveness` reports SERVING while the process runs, so a
//! liveness probe never restarts a pod merely because Postgres is down.

use std::time::Duration;

use crate::redis_conn::RedisConnection;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{postgres, redis_conn};

/// The name a liveness probe asks for.
pub const LIVENESS: &str = "liveness";

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service: &'static str,
}

impl Health {
    /// Starts NOT_SERVING for readiness and SERVING for liveness.
    pub async fn new(service: &'static str) -> Self {
        let health = Self {
            reporter: HealthReporter::new(),
            service,
        };
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        health.set_ready(false).await;
        health
    }

    pub fn server(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    pub async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", self.service] {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Something a service cannot work without.
#[derive(Clone)]
pub enum Dependency {
    Postgres(PgPool),
    Redis(RedisConnection),
}

impl Dependency {
    fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "Postgres",
            Self::Redis(_) => "Redis",
        }
    }

    async fn reachable(&self) -> bool {
        match self {
            Self::Postgres(pool) => postgres::ping(pool).await,
            Self::Redis(conn) => redis_conn::ping(conn).await,
        }
    }
}

/// Checks the dependencies every second and keeps readiness up to date until `cancel`, then
/// reports NOT_SERVING. `held` (when given) must be true for the service to be ready.
pub async fn monitor(
    health: Health,
    dependencies: Vec<Dependency>,
    mut held: Option<watch::Receiver<bool>>,
    cancel: CancellationToken,
) {
    let mut was_up = vec![true; dependencies.len()];
    let mut last_ready = None;
    loop {
        let mut ready = held.as_ref().is_none_or(|h| *h.borrow());
        for (dep, was_up) in dependencies.iter().zip(was_up.iter_mut()) {
            let up = dep.reachable().await;
            match (*was_up, up) {
                (true, false) => tracing::warn!(dependency = dep.name(), "unreachable"),
                (false, true) => tracing::info!(dependency = dep.name(), "reachable again"),
                _ => {}
            }
            *was_up = up;
            ready &= up;
        }
        if last_ready != Some(ready) && !cancel.is_cancelled() {
            health.set_ready(ready).await;
            last_ready = Some(ready);
        }
        let held_changed = async {
            // No gate, or a dropped sender, never changes again.
            let changed = match held.as_mut() {
                Some(h) => h.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = held_changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    health.set_ready(false).await;
}

/// Whether every part of a service (each partition it works on) is sound: the service is held
/// NOT_SERVING while any part is not. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Soundness {
    unsound: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    held: watch::Sender<bool>,
}

impl Soundness {
    /// All sound; the receiver is what `Runner::monitor` holds the service back by.
    pub fn new() -> (Self, watch::Receiver<bool>) {
        let (held, receiver) = watch::channel(true);
        let soundness = Self {
            unsound: Default::default(),
            held,
        };
        (soundness, receiver)
    }

    /// Marks `part` sound or not; returns whether it was sound before.
    pub fn set(&self, part: i32, sound: bool) -> bool {
        let mut unsound = self.unsound.lock().expect("not poisoned");
        let was = !unsound.contains(&part);
        if sound {
            unsound.remove(&part);
        } else {
            unsound.insert(part);
        }
        self.held.send_replace(unsound.is_empty());
        was
    }
}

#[cfg(test)]
mod soundness_tests {
    use super::*;

    #[test]
    fn unsound_while_any_part_is() {
        let (parts, held) = Soundness::new();
        assert!(parts.set(0, false));
        assert!(parts.set(1, false));
        assert!(!*held.borrow());
        assert!(!parts.set(0, true));
        assert!(!*held.borrow(), "part 1 still holds it back");
        parts.set(1, true);
        assert!(*held.borrow());
    }
}
