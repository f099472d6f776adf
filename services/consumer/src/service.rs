//! `ConsumerService`: the consumer's committed totals.

use rocket_rides_proto::v1::{
    GetTotalRequest, GetTotalResponse, consumer_service_server::ConsumerService,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::checkpoint::Checkpoint;

pub struct Totals {
    pub name: String,
    pub committed: watch::Receiver<Option<Checkpoint>>,
}

#[tonic::async_trait]
impl ConsumerService for Totals {
    async fn get_total(
        &self,
        _: Request<GetTotalRequest>,
    ) -> Result<Response<GetTotalResponse>, Status> {
        let committed = self.committed.borrow().clone().ok_or_else(|| {
            Status::unavailable("the checkpoint is not loaded yet (is Postgres reachable?); retry")
        })?;
        Ok(Response::new(GetTotalResponse {
            consumer: self.name.clone(),
            total_distance: committed.total_distance,
            ride_count: committed.ride_count,
            last_stream_id: committed.stream_id().to_string(),
        }))
    }
}
