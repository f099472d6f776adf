//! `RideService`: a ride and its log record are written by one statement, hence one
//! transaction, so the log can never carry a ride the database does not have.

use rocket_rides_log::sql::{FIND_BY_KEY, INSERT_RIDE};
use rocket_rides_platform::telemetry::{propagation, spans};
use rocket_rides_proto::v1::{
    CreateRideRequest, CreateRideResponse, ride_service_server::RideService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{error::RideError, metrics::Metrics, validate};

pub struct Rides {
    pool: PgPool,
    metrics: Metrics,
}

impl Rides {
    pub fn new(pool: PgPool, metrics: Metrics) -> Self {
        Self { pool, metrics }
    }

    async fn create(&self, req: CreateRideRequest) -> Result<CreateRideResponse, RideError> {
        let distance = validate::distance(req.distance)?;
        let key = validate::idempotency_key(&req.idempotency_key)?;
        let decimal = validate::decimal(distance);
        // The call's own span travels with the record, so the streamer and every consumer
        // join this trace.
        let trace = propagation::of_span(&tracing::Span::current());
        let inserted: Option<i64> = sqlx::query_scalar(INSERT_RIDE)
            .bind(&decimal)
            .bind(key)
            .bind(&trace.traceparent)
            .bind(&trace.tracestate)
            .fetch_optional(&self.pool)
            .instrument(spans::postgres("INSERT rides, staged_log_records"))
            .await?;
        if let Some(ride_id) = inserted {
            tracing::Span::current().record("ride.id", ride_id);
            self.metrics.rides_created.increment(1);
            tracing::debug!(ride_id, distance, "ride created");
            return Ok(CreateRideResponse {
                ride_id,
                distance,
                message: "ride created".into(),
            });
        }
        // Only a taken idempotency key makes the insert skip; the conflicting transaction has
        // committed by now (ON CONFLICT waits for it), so its ride is visible.
        let key = key.unwrap_or_default();
        let (ride_id, same, stored): (i64, bool, String) = sqlx::query_as(FIND_BY_KEY)
            .bind(key)
            .bind(&decimal)
            .fetch_one(&self.pool)
            .instrument(spans::postgres("SELECT rides by idempotency_key"))
            .await?;
        if !same {
            return Err(RideError::KeyReused {
                key: key.into(),
                distance: stored,
            });
        }
        Ok(CreateRideResponse {
            ride_id,
            distance,
            message: "ride already created by an earlier request with this idempotency_key".into(),
        })
    }
}

#[tonic::async_trait]
impl RideService for Rides {
    async fn create_ride(
        &self,
        request: Request<CreateRideRequest>,
    ) -> Result<Response<CreateRideResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!(
            "CreateRide",
            ride.distance = request.distance,
            ride.idempotent = !request.idempotency_key.is_empty(),
            ride.id = tracing::field::Empty,
        );
        Ok(Response::new(self.create(request).instrument(span).await?))
    }
}
