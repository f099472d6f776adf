//! The api's metrics, registered once (after the recorder is installed).

use metrics::{Counter, counter};

#[derive(Clone)]
pub struct Metrics {
    /// `rocket_rides_rides_created_total`: rides committed.
    pub rides_created: Counter,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            rides_created: counter!("rocket_rides_rides_created_total"),
        }
    }
}
