//! `ConsumerService`: the logical consumer's committed totals, over every partition, whichever
//! instance owns them: one statement, so one consistent snapshot.

use rocket_rides_log::StreamId;
use rocket_rides_proto::v1::{
    GetTotalRequest, GetTotalResponse, PartitionPosition, consumer_service_server::ConsumerService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

const TOTALS: &str = "
    SELECT partition, last_seq, ride_count, COALESCE(owner, ''),
           (sum(total_distance) OVER ())::float8, (sum(ride_count) OVER ())::bigint
    FROM consumer_positions WHERE stream = $1 AND name = $2
    ORDER BY partition";

pub struct Totals {
    pub stream: String,
    pub name: String,
    pub pool: PgPool,
}

#[tonic::async_trait]
impl ConsumerService for Totals {
    async fn get_total(
        &self,
        _: Request<GetTotalRequest>,
    ) -> Result<Response<GetTotalResponse>, Status> {
        let rows: Vec<(i32, i64, i64, String, f64, i64)> = sqlx::query_as(TOTALS)
            .bind(&self.stream)
            .bind(&self.name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot read the totals from Postgres: {e}; retry"))
            })?;
        let (total_distance, ride_count) = rows.first().map_or((0.0, 0), |r| (r.4, r.5));
        let partitions: Vec<PartitionPosition> = rows
            .into_iter()
            .map(
                |(partition, last_seq, ride_count, owner, ..)| PartitionPosition {
                    partition,
                    last_seq,
                    last_stream_id: StreamId::of_seq(last_seq).to_string(),
                    ride_count,
                    owner,
                },
            )
            .collect();
        let last_stream_id = partitions
            .first()
            .map_or_else(|| StreamId::ZERO.to_string(), |p| p.last_stream_id.clone());
        Ok(Response::new(GetTotalResponse {
            consumer: self.name.clone(),
            total_distance,
            ride_count,
            last_stream_id,
            partitions,
        }))
    }
}
