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

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{Error, config};

/// Keeps the tracer provider alive; `shutdown` flushes spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Installs logging and tracing for the service named `service` (`OTEL_SERVICE_NAME` wins).
/// Call once, first thing in `main`.
pub fn init(service: &'static str) -> Result<Telemetry, Error> {
    let exporting = config::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || config::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let mut resource = Resource::builder();
    if config::var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match config::var("LOG_FORMAT").as_deref().unwrap_or("text") {
        "text" => registry.with(fmt::layer().with_target(false)).init(),
        "json" => registry
            .with(fmt::layer().event_format(json::JsonWithTrace))
            .init(),
        other => {
            return Err(Error::Invalid {
                name: "LOG_FORMAT",
                value: other.into(),
                reason: "expected text or json".into(),
            });
        }
    }
    if exporting {
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
