//! `RideService`: a ride and its log record are written by one statement, hence one
//! transaction, so the log can never carry a ride the database does not have.

use rocket_rides_platform::telemetry::{propagation, spans};
use rocket_rides_proto::v1::{
    CreateRideRequest, CreateRideResponse, ride_service_server::RideService,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    error::RideError,
    group::{GroupCommit, NewRide, Written},
    validate,
};

pub struct Rides {
    group: GroupCommit,
}

impl Rides {
    pub fn new(group: GroupCommit) -> Self {
        Self { group }
    }

    async fn create(&self, req: CreateRideRequest) -> Result<CreateRideResponse, RideError> {
        let distance = validate::distance(req.distance)?;
        let key = validate::idempotency_key(&req.idempotency_key)?;
        let rider = validate::rider_id(&req.rider_id)?;
        let ride = NewRide {
            decimal: validate::decimal(distance),
            key: key.map(String::from),
            rider: rider.map(String::from),
            // The call's own span travels with the record, so the streamer and every consumer
            // join this trace.
            trace: propagation::of_span(&tracing::Span::current()),
        };
        // The call's wait for its group commit, as a client span in the ride's trace.
        let written = self
            .group
            .write(ride)
            .instrument(spans::postgres("INSERT rides, log_records"))
            .await?;
        let (ride_id, message) = match written {
            Written::Created(id) => (id, "ride created"),
            Written::Existing(id) => (
                id,
                "ride already created by an earlier request with this idempotency_key",
            ),
            Written::Confirmed(id) => (
                id,
                "ride committed: the connection to the database broke while it was being \
                 committed, and the api then found it committed under this idempotency_key",
            ),
        };
        tracing::Span::current().record("ride.id", ride_id);
        tracing::debug!(ride_id, distance, "{message}");
        Ok(CreateRideResponse {
            ride_id,
            distance,
            message: message.into(),
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
