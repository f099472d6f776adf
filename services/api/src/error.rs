//! CreateRide's errors and the gRPC status each one becomes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RideError {
    #[error("distance is required: the ride's length in metres, e.g. {{\"distance\": 12.5}}")]
    MissingDistance,
    #[error(
        "distance must be a finite number of metres greater than 0 and at most 1000000, got {0}"
    )]
    InvalidDistance(f64),
    #[error("idempotency_key must be at most 255 characters, got {0}")]
    KeyTooLong(usize),
    #[error(
        "idempotency_key {key:?} was already used for a ride of {distance} m; use a new key for a different ride"
    )]
    KeyReused { key: String, distance: String },
    #[error("the database is unavailable; retry (with the same idempotency_key to stay safe)")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for RideError {
    fn from(e: sqlx::Error) -> Self {
        if rocket_rides_platform::postgres::is_unavailable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Database(e)
        }
    }
}

impl From<RideError> for Status {
    fn from(e: RideError) -> Self {
        let code = match &e {
            RideError::MissingDistance
            | RideError::InvalidDistance(_)
            | RideError::KeyTooLong(_) => Code::InvalidArgument,
            RideError::KeyReused { .. } => Code::FailedPrecondition,
            RideError::Unavailable(source) => {
                tracing::warn!(error = %source, "CreateRide: database unavailable");
                Code::Unavailable
            }
            RideError::Database(source) => {
                tracing::error!(error = %source, "CreateRide: database error");
                Code::Internal
            }
        };
        Status::new(code, e.to_string())
    }
}
