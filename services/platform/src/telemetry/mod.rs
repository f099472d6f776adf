//! Logs and traces.
//!
//! Logs: `LOG_FORMAT=text` (default, for people) or `json` (one object per line, carrying the
//! `trace_id` and `span_id` of the span it was written in), filtered by `RUST_LOG`.
//!
//! Traces: every span is an OpenTelemetry span, so trace context flows through the log even
//! when nothing is exported. Export (OTLP over gRPC) is on only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the exporter
//! and SDK read the other standard `OTEL_*` variables themselves (service name, resource
//! attributes, sampler, batch delays).
//!
//! An `https://` (or scheme-less) endpoint is reached over TLS (rustls), verified against the
//! system's CA bundle (`SSL_CERT_FILE` names another), or against the PEM file of
//! `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CERTIFICATE` alone when set.

mod json;
pub mod propagation;
pub mod spans;

use std::path::PathBuf;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{Error, config::Vars};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `LOG_FORMAT`, the service's name (`OTEL_SERVICE_NAME` wins) and whether an OTLP endpoint is
/// set. `RUST_LOG` and the other `OTEL_*` variables are read by their libraries.
#[derive(Debug, Clone)]
pub struct Config {
    pub service_name: String,
    pub log_format: LogFormat,
    pub export: bool,
    /// Whether the endpoint is reached over TLS: anything but `http://`.
    pub tls: bool,
    /// The CA that verifies the collector, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

impl Config {
    pub fn from_vars(vars: &Vars, service: &'static str) -> Result<Self, Error> {
        let log_format = match vars.get("LOG_FORMAT").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(Error::invalid("LOG_FORMAT", other, "expected text or json")),
        };
        let endpoint = vars
            .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or(vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"));
        Ok(Self {
            service_name: vars.get("OTEL_SERVICE_NAME").unwrap_or(service).to_string(),
            log_format,
            export: endpoint.is_some(),
            tls: endpoint.is_some_and(|e| !e.trim().starts_with("http://")),
            ca_file: vars
                .get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .or(vars.get("OTEL_EXPORTER_OTLP_CERTIFICATE"))
                .map(PathBuf::from),
        })
    }

    /// The exporter's TLS settings, when its endpoint uses TLS.
    fn tls_config(&self) -> Result<Option<ClientTlsConfig>, Error> {
        if !self.tls {
            return Ok(None);
        }
        let config = ClientTlsConfig::new();
        Ok(Some(match &self.ca_file {
            None => config.with_native_roots(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::invalid(
                        "OTEL_EXPORTER_OTLP_CERTIFICATE",
                        path.display(),
                        format!("cannot read it: {e}"),
                    )
                })?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
        }))
    }
}

/// Keeps the tracer provider alive; `shutdown` flushes spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Installs logging and tracing. Call once, first thing in `main`.
pub fn init(config: &Config) -> Result<Telemetry, Error> {
    let resource = Resource::builder().with_service_name(config.service_name.clone());
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    if config.export {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(tls) = config.tls_config()? {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel =
        tracing_opentelemetry::layer().with_tracer(provider.tracer(config.service_name.clone()));

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,redis=error"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match config.log_format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry
            .with(fmt::layer().event_format(json::JsonWithTrace))
            .init(),
    }
    if config.export {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Flushes and stops the exporter. Blocking work, so it runs off the async threads.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_endpoints_use_tls_with_the_system_roots_or_the_given_ca() {
        let config = |pairs: &[(&str, &str)]| Config::from_vars(&Vars::from_pairs(pairs), "svc");
        let off = config(&[]).unwrap();
        assert!(!off.export && !off.tls);
        assert!(off.tls_config().unwrap().is_none());
        let plain = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")]).unwrap();
        assert!(plain.export && !plain.tls);
        let https = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4317"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://otel.example.com",
            ),
        ])
        .unwrap();
        assert!(https.export && https.tls && https.ca_file.is_none());
        let with_ca = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example.com"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ])
        .unwrap();
        let err = with_ca.tls_config().unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"), "{err}");
    }
}
