//! The gRPC server every service runs: health, reflection (v1 and v1alpha, since grpcurl 1.8
//! only speaks v1alpha), a per-request deadline, and a graceful drain on shutdown.
//!
//! TLS: with `TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM; the chain and its private key) set, the
//! server speaks only TLS (rustls); otherwise plaintext.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Identity as TlsIdentity, Server, ServerTlsConfig, server::Router, server::TcpIncoming,
};
use tower::layer::util::{Identity, Stack};

use crate::{Error, config::Vars, grpc_layer::GrpcTelemetryLayer, health::Health};

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

/// `TLS_CERT_FILE` and `TLS_KEY_FILE`: the server's certificate chain and key, both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ServerTls {
    pub fn from_vars(vars: &Vars) -> Result<Option<Self>, Error> {
        match (vars.get("TLS_CERT_FILE"), vars.get("TLS_KEY_FILE")) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert_file: cert.into(),
                key_file: key.into(),
            })),
            (cert, key) => {
                let (name, value) = match cert {
                    Some(cert) => ("TLS_CERT_FILE", cert),
                    None => ("TLS_KEY_FILE", key.unwrap_or_default()),
                };
                Err(Error::invalid(
                    name,
                    value,
                    "set both TLS_CERT_FILE and TLS_KEY_FILE to serve TLS, or neither",
                ))
            }
        }
    }

    /// The certificate and key, read and checked.
    pub fn config(&self) -> Result<ServerTlsConfig, Error> {
        let read = |name: &'static str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| Error::invalid(name, path.display(), format!("cannot read it: {e}")))
        };
        let identity = TlsIdentity::from_pem(
            read("TLS_CERT_FILE", &self.cert_file)?,
            read("TLS_KEY_FILE", &self.key_file)?,
        );
        Ok(ServerTlsConfig::new().identity(identity))
    }
}

/// A router serving health and reflection, over TLS when `tls` is given; the caller adds the
/// application `services`.
pub fn router(
    health: &Health,
    services: Services<'_>,
    tls: Option<ServerTls>,
) -> Result<GrpcRouter, Error> {
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
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.config()?).map_err(|e| {
            Error::invalid(
                "TLS_CERT_FILE",
                tls.cert_file.display(),
                format!("not a usable certificate and key (TLS_KEY_FILE): {e}"),
            )
        })?;
        tracing::info!(cert = %tls.cert_file.display(), "gRPC server speaks TLS");
    }
    Ok(server
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_both_files() {
        let tls = |pairs: &[(&str, &str)]| ServerTls::from_vars(&Vars::from_pairs(pairs));
        assert_eq!(tls(&[]).unwrap(), None);
        let both = tls(&[
            ("TLS_CERT_FILE", "/tls/tls.crt"),
            ("TLS_KEY_FILE", "/tls/tls.key"),
        ]);
        let both = both.unwrap().unwrap();
        assert_eq!(both.cert_file, PathBuf::from("/tls/tls.crt"));
        let err = tls(&[("TLS_KEY_FILE", "/tls/tls.key")]).unwrap_err();
        assert!(err.to_string().contains("set both"), "{err}");
        let err = both.config().unwrap_err().to_string();
        assert!(
            err.contains("TLS_CERT_FILE") && err.contains("/tls/tls.crt"),
            "{err}"
        );
    }
}
