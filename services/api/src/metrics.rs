//! The api's metrics, registered once (after the recorder is installed).

use metrics::{Counter, Histogram, counter, histogram};

#[derive(Clone)]
pub struct Metrics {
    /// `rocket_rides_rides_created_total`: rides committed.
    pub rides_created: Counter,
    /// `rocket_rides_api_batch_size`: rides written per group commit.
    pub batch_size: Histogram,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            rides_created: counter!("rocket_rides_rides_created_total"),
            batch_size: histogram!("rocket_rides_api_batch_size"),
        }
    }
}
