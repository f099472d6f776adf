//! CreateRide's errors and the gRPC status each one becomes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RideError {
    #[error("distance is required: the ride's length in metres, e.g. {{\"distance\": 12.5}}")]
    MissingDistance,
    #[error(
        "distance must be a finite number of metres, at least 0.001 (1 mm) and at most 1000000 once rounded to millimetres, got {0}"
    )]
    InvalidDistance(f64),
    #[error("idempotency_key must be at most 255 characters, got {0}")]
    KeyTooLong(usize),
    #[error("rider_id must be at most 255 characters, got {0}")]
    RiderTooLong(usize),
    #[error(
        "idempotency_key {key:?} was already used for a ride of {distance} m; use a new key for a different ride"
    )]
    KeyReused { key: String, distance: String },
    #[error(
        "the ride could not be written (the database is unavailable or failed); nothing was \
         written; retry (with the same idempotency_key to stay safe)"
    )]
    BatchFailed,
    #[error("too many rides are waiting to be written; retry after a short back-off")]
    Overloaded,
    #[error("the api is shutting down; retry against another instance")]
    ShuttingDown,
    #[error("idempotency_key {0:?} conflicted with a ride that is gone; retry")]
    KeyVanished(String),
}

impl From<RideError> for Status {
    fn from(e: RideError) -> Self {
        let code = match &e {
            RideError::MissingDistance
            | RideError::InvalidDistance(_)
            | RideError::KeyTooLong(_)
            | RideError::RiderTooLong(_) => Code::InvalidArgument,
            RideError::KeyReused { .. } => Code::FailedPrecondition,
            RideError::BatchFailed | RideError::ShuttingDown => Code::Unavailable,
            RideError::Overloaded => Code::ResourceExhausted,
            RideError::KeyVanished(_) => Code::Aborted,
        };
        Status::new(code, e.to_string())
    }
}
