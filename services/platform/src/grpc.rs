//! The gRPC server every service runs: health, reflection (v1 and v1alpha, since grpcurl 1.8
//! only speaks v1alpha), a per-request deadline, and a graceful drain on shutdown.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router, server::TcpIncoming};
use tower::layer::util::{Identity, Stack};

use crate::{Error, grpc_layer::GrpcTelemetryLayer, health::Health};

/// The router every service builds on: health and reflection behind the telemetry layer.
pub type GrpcRouter = Router<Stack<GrpcTelemetryLayer, Identity>>;

/// The longest a request may run before it is answered DEADLINE_EXCEEDED.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The services a server answers besides health and reflection: their names, and the encoded
/// descriptors that define them, so reflection lists exactly what this server answers.
#[derive(Clone, Copy, Default)]
pub struct Services<'a> {
    pub names: &'a [&'a str],
    pub descriptors: &'a [u8],
}

/// A router serving health and reflection; the caller adds the application `services`.
pub fn router(health: &Health, services: Services<'_>) -> Result<GrpcRouter, Error> {
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        if !services.descriptors.is_empty() {
            builder = builder.register_encoded_file_descriptor_set(services.descriptors);
        }
        for service in services.names {
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

/// Binds the server's address, first thing, so a taken port or a bad address fails start-up
/// with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `router` on `listener` until `cancel`, then reports NOT_SERVING, stops accepting and
/// lets in-flight requests finish (for at most `DRAIN_TIMEOUT`).
pub async fn serve(
    router: GrpcRouter,
    listener: TcpListener,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "gRPC server listening");
    }
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
        result = server => result,
        _ = async { cancel.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    }
}
