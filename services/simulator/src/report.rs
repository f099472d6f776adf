//! A periodic line for people watching `make up`: rides acknowledged, each consumer's totals,
//! and whether the consumers agree.

use std::time::{Duration, Instant};

use rocket_rides_platform::shutdown::CancellationToken;
use rocket_rides_proto::v1::{GetTotalRequest, consumer_service_client::ConsumerServiceClient};
use tonic::transport::Channel;

use crate::rides::Counter;

const EVERY: Duration = Duration::from_secs(5);

pub async fn run(consumers: Vec<Channel>, created: Counter, cancel: CancellationToken) {
    let clients: Vec<_> = consumers
        .into_iter()
        .map(ConsumerServiceClient::new)
        .collect();
    let (mut last_count, mut last_at) = (created.get(), Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let (count, now) = (created.get(), Instant::now());
        let rate = (count - last_count) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_count, last_at) = (count, now);

        let mut totals = Vec::new();
        for client in &clients {
            match client.clone().get_total(GetTotalRequest {}).await {
                Ok(r) => totals.push(Some(r.into_inner())),
                Err(_) => totals.push(None),
            }
        }
        let shown: Vec<String> = totals
            .iter()
            .map(|t| match t {
                Some(t) => format!(
                    "{} {} rides {:.2} m",
                    t.consumer, t.ride_count, t.total_distance
                ),
                None => "(unreachable)".into(),
            })
            .collect();
        let agree = totals.iter().all(|t| {
            t.as_ref().zip(totals[0].as_ref()).is_some_and(|(a, b)| {
                a.ride_count == b.ride_count && a.total_distance == b.total_distance
            })
        });
        tracing::info!(
            "rides acknowledged {count} ({rate:.1}/s) | {} | {}",
            shown.join(" | "),
            if agree {
                "consumers agree"
            } else {
                "consumers catching up"
            }
        );
    }
}
