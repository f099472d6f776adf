//! `RideService`: a ride and its log record are written by one statement, hence one
//! transaction, so the log can never carry a ride the database does not have.

use rocket_rides_platform::telemetry::propagation;
use rocket_rides_proto::v1::{
    CreateRideRequest, CreateRideResponse, ride_service_server::RideService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{error::RideError, validate};

/// Inserts the ride (unless its idempotency key is taken) and stages its log record.
const INSERT_RIDE: &str = "
    WITH ride AS (
        INSERT INTO rides (distance, idempotency_key) VALUES ($1::numeric, $2)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, distance
    )
    INSERT INTO staged_log_records (ride_id, distance, traceparent, tracestate)
    SELECT id, distance, $3, $4 FROM ride
    RETURNING ride_id";

/// The ride an idempotency key already names, and whether it has the requested distance.
const FIND_BY_KEY: &str =
    "SELECT id, distance = $2::numeric, distance::text FROM rides WHERE idempotency_key = $1";

pub struct Rides {
    pool: PgPool,
}

impl Rides {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
            .instrument(db_span("INSERT rides, staged_log_records"))
            .await?;
        if let Some(ride_id) = inserted {
            tracing::Span::current().record("ride.id", ride_id);
            metrics::counter!("rocket_rides_rides_created_total").increment(1);
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
            .instrument(db_span("SELECT rides by idempotency_key"))
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

/// A child span for one statement, named for what it does.
fn db_span(statement: &'static str) -> tracing::Span {
    tracing::info_span!(
        "postgres",
        otel.name = statement,
        otel.kind = "client",
        db.system = "postgresql",
    )
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
