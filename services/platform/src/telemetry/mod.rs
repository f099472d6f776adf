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

mod json;
pub mod propagation;
pub mod spans;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
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
}

impl Config {
    pub fn from_vars(vars: &Vars, service: &'static str) -> Result<Self, Error> {
        let log_format = match vars.get("LOG_FORMAT").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(Error::invalid("LOG_FORMAT", other, "expected text or json")),
        };
        Ok(Self {
            service_name: vars.get("OTEL_SERVICE_NAME").unwrap_or(service).to_string(),
            log_format,
            export: vars.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || vars.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some(),
        })
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
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
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
