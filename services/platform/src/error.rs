//! The platform's error: what went wrong configuring or running a service's plumbing. Every
//! message names what to check.

use std::{fmt::Display, net::SocketAddr};

/// Any error a task of a service may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name} is required: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the OTLP exporter (check OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot serve metrics (check METRICS_ADDR): {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen on {addr}: {source} (set LISTEN_ADDR to a free address)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("task {task:?} failed: {source}")]
    Task {
        task: &'static str,
        source: BoxError,
    },
    #[error("task {0:?} stopped before shutdown was asked for")]
    Stopped(&'static str),
}

impl Error {
    /// A variable whose value is unusable, with the reason.
    pub fn invalid(name: &'static str, value: impl Display, reason: impl Display) -> Self {
        Self::Invalid {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
