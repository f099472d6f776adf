//! The gRPC server every service runs: health, reflection (v1 and v1alpha, since grpcurl 1.8
//! only speaks v1alpha), a per-request deadline, and a graceful drain on shutdown.

use std::{net::SocketAddr, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router, server::TcpIncoming};
use tower::layer::util::{Identity, Stack};

use crate::grpc_layer::GrpcTelemetryLayer;

/// The router every service builds on: health and reflection behind the telemetry layer.
pub type GrpcRouter = Router<Stack<GrpcTelemetryLayer, Identity>>;

use crate::{Error, health::Health};

/// The longest a request may run before it is answered DEADLINE_EXCEEDED.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A router serving health and reflection; `services` names the application services that the
/// caller adds, so reflection lists exactly what this server answers.
pub fn router(health: &Health, services: &[&str]) -> Result<GrpcRouter, Error> {
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rocket_rides_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    Ok(Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .layer(GrpcTelemetryLayer)
        .add_service(health.server())
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?))
}

/// Serves `router` on `addr` until `cancel`, then reports NOT_SERVING, stops accepting and lets
/// in-flight requests finish (for at most `DRAIN_TIMEOUT`).
pub async fn serve(
    router: GrpcRouter,
    addr: SocketAddr,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "gRPC server listening");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            health.set_ready(false).await;
        }
    };
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        result = server => Ok(result?),
        _ = async { cancel.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    }
}
