//! `HistoryService`: the read model, as projected so far.

use rocket_rides_proto::{
    prost_types::Timestamp,
    v1::{
        GetRideRequest, ListRidesRequest, ListRidesResponse, Ride,
        history_service_server::HistoryService,
    },
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::project;

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1000;

pub struct History {
    pub pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> Status {
    Status::unavailable(format!("cannot read the history from Postgres: {e}; retry"))
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

impl From<project::Ride> for Ride {
    fn from(r: project::Ride) -> Self {
        Ride {
            ride_id: r.ride_id,
            rider_id: r.rider_id.unwrap_or_default(),
            distance: r.distance,
            partition: r.partition,
            seq: r.seq,
            stream_id: rocket_rides_log::StreamId::of_seq(r.seq).to_string(),
            created_at: Some(timestamp(r.created_us)),
            recorded_at: Some(timestamp(r.recorded_us)),
        }
    }
}

/// The page size asked for, checked: 0 means the default; more than the maximum is capped.
fn page_size(asked: i32) -> Result<i64, Status> {
    match asked {
        0 => Ok(DEFAULT_PAGE_SIZE.into()),
        n if n < 0 => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {n})"
        ))),
        n => Ok(n.min(MAX_PAGE_SIZE).into()),
    }
}

/// The page token: the id of the last ride of the previous page (empty: from the newest).
fn page_start(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(i64::MAX);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "page_token {token:?} is not one this service issued; pass next_page_token from \
                 the previous response, or nothing for the first page"
            ))
        })
}

#[tonic::async_trait]
impl HistoryService for History {
    async fn get_ride(&self, request: Request<GetRideRequest>) -> Result<Response<Ride>, Status> {
        let ride_id = request.into_inner().ride_id;
        if ride_id <= 0 {
            return Err(Status::invalid_argument(format!(
                "ride_id must be positive (got {ride_id})"
            )));
        }
        match project::get(&self.pool, ride_id)
            .await
            .map_err(unavailable)?
        {
            Some(ride) => Ok(Response::new(ride.into())),
            None => Err(Status::not_found(format!(
                "ride {ride_id} is not in the history (yet): it may not exist, or not be \
                 projected from the log yet"
            ))),
        }
    }

    async fn list_rides(
        &self,
        request: Request<ListRidesRequest>,
    ) -> Result<Response<ListRidesResponse>, Status> {
        let request = request.into_inner();
        if request.rider_id.is_empty() {
            return Err(Status::invalid_argument("rider_id is required"));
        }
        let limit = page_size(request.page_size)?;
        let before = page_start(&request.page_token)?;
        // One more than the page tells whether another page follows.
        let mut rides = project::list(&self.pool, &request.rider_id, before, limit + 1)
            .await
            .map_err(unavailable)?;
        let next_page_token = if rides.len() as i64 > limit {
            rides.truncate(limit as usize);
            rides
                .last()
                .map(|r| r.ride_id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListRidesResponse {
            rides: rides.into_iter().map(Ride::from).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn page_tokens() {
        assert_eq!(page_start("").unwrap(), i64::MAX);
        assert_eq!(page_start("42").unwrap(), 42);
        for bad in ["x", "-3", "0", "1.5"] {
            assert_eq!(
                page_start(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn timestamps_split_micros() {
        let t = timestamp(1_700_000_000_123_456);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_000));
    }
}
