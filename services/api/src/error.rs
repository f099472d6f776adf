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
        "idempotency_key {key:?} was already used for a ride of {distance} m, this request is for {requested} m; use a new key for a different ride"
    )]
    KeyReused {
        key: String,
        distance: String,
        requested: String,
    },
    #[error(
        "idempotency_key {key:?} was already used for a ride of {}, this request is for {}; use a new key for a different ride",
        rider_text(.rider),
        rider_text(.requested)
    )]
    RiderMismatch {
        key: String,
        rider: Option<String>,
        requested: Option<String>,
    },
    #[error(
        "the ride could not be written (the database is unavailable or failed); nothing was \
         written; retry (with the same idempotency_key to stay safe)"
    )]
    BatchFailed,
    #[error(
        "the connection to the database broke while the ride was being committed; the api then \
         looked its idempotency_key up: it was not committed, nothing was written; retry with the \
         same idempotency_key"
    )]
    NotCommitted,
    #[error(
        "the connection to the database broke while the ride was being committed, and the \
         database did not answer again in time to find out whether it was; retry with the same \
         idempotency_key: that is safe, it returns the ride if it was created and creates it if not"
    )]
    OutcomeUnresolved,
    #[error(
        "the connection to the database broke while the ride was being committed: the ride may \
         or may not have been created, and without an idempotency_key the api cannot tell which; \
         a retry may create a second ride; send an idempotency_key with each ride so that a \
         retry is safe (it returns the ride if it was created)"
    )]
    OutcomeUnknown,
    #[error("too many rides are waiting to be written; retry after a short back-off")]
    Overloaded,
    #[error("the api is shutting down; retry against another instance")]
    ShuttingDown,
    #[error("idempotency_key {0:?} conflicted with a ride that is gone; retry")]
    KeyVanished(String),
}

/// A rider as messages show it.
fn rider_text(rider: &Option<String>) -> String {
    match rider {
        Some(rider) => format!("rider_id {rider:?}"),
        None => "no rider_id".to_string(),
    }
}

impl From<RideError> for Status {
    fn from(e: RideError) -> Self {
        let code = match &e {
            RideError::MissingDistance
            | RideError::InvalidDistance(_)
            | RideError::KeyTooLong(_)
            | RideError::RiderTooLong(_) => Code::InvalidArgument,
            RideError::KeyReused { .. } | RideError::RiderMismatch { .. } => {
                Code::FailedPrecondition
            }
            RideError::BatchFailed
            | RideError::NotCommitted
            | RideError::OutcomeUnresolved
            | RideError::ShuttingDown => Code::Unavailable,
            RideError::OutcomeUnknown => Code::Unknown,
            RideError::Overloaded => Code::ResourceExhausted,
            RideError::KeyVanished(_) => Code::Aborted,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_key_names_both_values_and_asks_for_a_new_key() {
        let status = Status::from(RideError::RiderMismatch {
            key: "k-1".into(),
            rider: Some("rider-a".into()),
            requested: Some("rider-b".into()),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        for part in ["\"k-1\"", "\"rider-a\"", "\"rider-b\"", "use a new key"] {
            assert!(status.message().contains(part), "{}", status.message());
        }
        let none = RideError::RiderMismatch {
            key: "k-1".into(),
            rider: None,
            requested: Some("rider-b".into()),
        };
        assert!(none.to_string().contains("no rider_id"), "{none}");
        let distance = Status::from(RideError::KeyReused {
            key: "k-1".into(),
            distance: "10".into(),
            requested: "20".into(),
        });
        assert_eq!(distance.code(), Code::FailedPrecondition);
        for part in ["10 m", "20 m", "use a new key"] {
            assert!(distance.message().contains(part), "{}", distance.message());
        }
    }

    #[test]
    fn an_unknown_outcome_says_so_and_how_to_resolve_it() {
        let unknown = Status::from(RideError::OutcomeUnknown);
        assert_eq!(unknown.code(), Code::Unknown);
        for part in ["may or may not have been created", "idempotency_key"] {
            assert!(unknown.message().contains(part), "{}", unknown.message());
        }
        // With a key a retry is safe, so these are retriable.
        for e in [RideError::NotCommitted, RideError::OutcomeUnresolved] {
            let status = Status::from(e);
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.message().contains("same idempotency_key"));
            assert!(!status.message().contains("may or may not"));
        }
    }
}
