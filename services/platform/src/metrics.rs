//! Prometheus metrics at `METRICS_ADDR` (`GET /metrics`, text format); unset means off, and
//! every `metrics::counter!` and friends is then a no-op.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::{Error, config};

/// Buckets for every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for batch sizes, in records.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// Serves `/metrics` on `METRICS_ADDR` when it is set. Must run inside the Tokio runtime.
pub fn install() -> Result<Option<SocketAddr>, Error> {
    let Some(addr) = config::var("METRICS_ADDR") else {
        return Ok(None);
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e: std::net::AddrParseError| Error::Invalid {
            name: "METRICS_ADDR",
            value: addr.clone(),
            reason: e.to_string(),
        })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)?
        .install()?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(Some(addr))
}
