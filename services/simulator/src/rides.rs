//! Issuing rides. Each ride gets an idempotency key; a call that fails in a way that may
//! succeed later (UNAVAILABLE, a timeout) is retried with the same key, so a ride is never
//! created twice and never given up on while the simulator runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use rocket_rides_platform::{retry::Backoff, shutdown::CancellationToken, telemetry::propagation};
use rocket_rides_proto::v1::{CreateRideRequest, ride_service_client::RideServiceClient};
use tokio::sync::Semaphore;
use tonic::{Code, transport::Channel};
use tracing::Instrument;

use crate::metrics::Metrics;

/// At most this many rides are in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// Rides acknowledged by the API.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub async fn run(
    api: Channel,
    rate: f64,
    created: Counter,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let client = RideServiceClient::new(api);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (client, created, metrics, cancel) = (
            client.clone(),
            created.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        let span = tracing::info_span!("simulate ride", otel.kind = "client");
        tokio::spawn(
            async move {
                create_one(client, &created, &metrics, &cancel).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Let rides in flight finish, so none is left half-tried.
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// How many riders the simulated rides are spread over.
const RIDERS: u32 = 500;

async fn create_one(
    mut client: RideServiceClient<Channel>,
    created: &Counter,
    metrics: &Metrics,
    cancel: &CancellationToken,
) {
    let distance = (rand::rng().random_range(5.0..=1000.0_f64) * 100.0).round() / 100.0;
    // A few hundred riders, so each partition sees several and each rider several rides.
    let rider = rand::rng().random_range(0..RIDERS);
    let request = CreateRideRequest {
        distance: Some(distance),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        rider_id: format!("rider-{rider}"),
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client.create_ride(traced(request.clone())).await {
            Ok(response) => {
                created.0.fetch_add(1, Ordering::Relaxed);
                metrics.acknowledged.increment(1);
                let ride = response.into_inner();
                tracing::debug!(ride_id = ride.ride_id, distance, "ride created");
                return;
            }
            Err(status) if retryable(status.code()) && !cancel.is_cancelled() => {
                let delay = backoff.next_delay();
                tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?delay, "CreateRide failed; retrying with the same idempotency key");
                // A shutdown does not wait out a backoff (up to 5 s): no call is in flight.
                tokio::select! {
                    _ = cancel.cancelled() => {
                        metrics.failed.increment(1);
                        tracing::warn!(code = ?status.code(), "CreateRide failed; not retried: shutting down");
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(status) => {
                metrics.failed.increment(1);
                tracing::error!(code = ?status.code(), message = status.message(), "CreateRide failed");
                return;
            }
        }
    }
}

/// The request with the current span's trace context in its metadata, so the api's spans
/// join the simulator's trace.
fn traced(request: CreateRideRequest) -> tonic::Request<CreateRideRequest> {
    let mut request = tonic::Request::new(request);
    let trace = propagation::of_span(&tracing::Span::current());
    for (key, value) in [
        ("traceparent", trace.traceparent),
        ("tracestate", trace.tracestate),
    ] {
        if let Some(value) = value.and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// Failures after which the same request may succeed.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown
    )
}
