//! One supervised way to run a service: its plumbing (metrics endpoint, health monitor, gRPC
//! server) and its workers run as named tasks; the first to fail, or to stop unasked, cancels
//! the rest and the service ends with an error naming it. `main` then flushes telemetry and
//! exits non-zero, so nothing fails silently while the rest keeps running.

use std::{collections::HashMap, future::Future, process::ExitCode, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    BoxError, Error,
    config::{ServiceConfig, Vars},
    grpc::{self, GrpcRouter, ServerTls},
    health::{self, Dependency, Health},
    prometheus, shutdown, telemetry,
};

/// How long tasks get to finish after shutdown starts (the gRPC drain takes at most 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a service binary: shutdown on SIGTERM/SIGINT (installed first, so a signal during
/// start-up still ends cleanly), configuration, telemetry, the gRPC listener, then `run`.
/// Exit codes: 0 after a clean shutdown, 1 when the service failed, 2 for bad configuration.
pub async fn main<C, F, Fut>(
    service: &'static str,
    load: impl FnOnce(&Vars) -> Result<C, Error>,
    run: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let cancel = shutdown::on_signal();
    let config = match load(&Vars::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(&config.common().telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match grpc::bind(config.common().listen_addr).await {
        Ok(listener) => run(config, listener, cancel).await,
        Err(e) => Err(e),
    };
    let code = match &result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "{service} failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

/// The tasks of one running service.
pub struct Runner {
    cancel: CancellationToken,
    health: Health,
    tasks: JoinSet<Result<(), BoxError>>,
    names: HashMap<tokio::task::Id, &'static str>,
    tls: Option<ServerTls>,
}

impl Runner {
    /// Starts the plumbing every service has: the metrics endpoint (when configured; typed
    /// metric handles must be created after this) and health, NOT_SERVING until the monitor
    /// says otherwise.
    pub async fn start(
        service: &'static str,
        config: &impl ServiceConfig,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let mut runner = Self {
            cancel,
            health: Health::new(service).await,
            tasks: JoinSet::new(),
            names: HashMap::new(),
            tls: config.common().tls.clone(),
        };
        if let Some(addr) = config.common().health_addr {
            // Health (and reflection) alone, in plaintext, for probes that cannot speak TLS.
            let listener = grpc::bind(addr).await?;
            let router = grpc::router(&runner.health, grpc::Services::default(), None)?;
            let serve = grpc::serve(router, listener, runner.health.clone(), runner.cancel());
            runner.spawn("health server", serve);
        }
        if let Some(addr) = config.common().metrics_addr {
            let exporter = prometheus::install(addr)?;
            let cancel = runner.cancel();
            runner.spawn("metrics", async move {
                tokio::select! {
                    served = exporter => served,
                    _ = cancel.cancelled() => Ok(()),
                }
            });
        }
        Ok(runner)
    }

    pub fn cancel(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The gRPC router (health, reflection, and TLS if configured) for the caller to add its
    /// application services to.
    pub fn router(&self, services: grpc::Services<'_>) -> Result<GrpcRouter, Error> {
        grpc::router(&self.health, services, self.tls.clone())
    }

    /// Runs `task` under supervision. It must return when the cancellation token fires.
    pub fn spawn<E>(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: Into<BoxError>,
    {
        let handle = self
            .tasks
            .spawn(async move { task.await.map_err(Into::into) });
        self.names.insert(handle.id(), name);
    }

    /// Runs a worker that ends only when cancelled.
    pub fn spawn_worker(
        &mut self,
        name: &'static str,
        worker: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(name, async move {
            worker.await;
            Ok::<_, BoxError>(())
        });
    }

    /// Keeps readiness up to date from `dependencies` (and `held`, when given).
    pub fn monitor(&mut self, dependencies: Vec<Dependency>, held: Option<watch::Receiver<bool>>) {
        let monitor = health::monitor(self.health.clone(), dependencies, held, self.cancel());
        self.spawn_worker("health monitor", monitor);
    }

    /// Serves `router` on `listener` until shutdown.
    pub fn serve(&mut self, router: GrpcRouter, listener: TcpListener) {
        let serve = grpc::serve(router, listener, self.health.clone(), self.cancel());
        self.spawn("gRPC server", serve);
    }

    /// Waits until every task has ended. The first failure (or a task ending before shutdown
    /// was asked for) cancels the rest and is returned; after cancellation the tasks get
    /// `STOP_TIMEOUT` to finish and are then aborted.
    pub async fn run(mut self) -> Result<(), Error> {
        let mut failure = None;
        loop {
            let joined = if self.cancel.is_cancelled() {
                match tokio::time::timeout(STOP_TIMEOUT, self.tasks.join_next_with_id()).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!("tasks did not stop within {STOP_TIMEOUT:?}; aborting them");
                        self.tasks.shutdown().await;
                        break;
                    }
                }
            } else {
                self.tasks.join_next_with_id().await
            };
            let Some(joined) = joined else { break };
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(e) => (e.id(), Err(Box::new(e) as BoxError)),
            };
            let task = self.names.get(&id).copied().unwrap_or("unnamed");
            let error = match result {
                Ok(()) if self.cancel.is_cancelled() => continue,
                Ok(()) => Error::Stopped(task),
                Err(source) => Error::Task { task, source },
            };
            tracing::error!(error = %error, "stopping the service");
            failure.get_or_insert(error);
            self.cancel.cancel();
        }
        failure.map_or(Ok(()), Err)
    }
}
