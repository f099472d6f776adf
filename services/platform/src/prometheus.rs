//! Prometheus metrics at `METRICS_ADDR` (`GET /metrics`, text format). Unset means off: every
//! metric handle is then a no-op. Services keep typed handles (their `metrics.rs`), created
//! after this is installed.

use std::{future::Future, net::SocketAddr};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::{BoxError, Error};

/// Buckets for every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for batch sizes, in records.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// Installs the global recorder and binds `addr`; the returned future serves scrapes (the
/// runner runs it as a task). Must run inside the Tokio runtime.
pub fn install(
    addr: SocketAddr,
) -> Result<impl Future<Output = Result<(), BoxError>> + Send + 'static, Error> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)?
        .build()?;
    metrics::set_global_recorder(recorder)
        .map_err(|e| Error::Metrics(metrics_exporter_prometheus::BuildError::from(e)))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    // The exporter's error is not a std error; keep what it says.
    Ok(async move { exporter.await.map_err(|e| format!("{e:?}").into()) })
}

/// Raises a gauge by one while alive, so it drops back however what it counts ends (a
/// partition led, a partition halted).
pub struct Raised(metrics::Gauge);

impl Raised {
    pub fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
