//! The simulator's metrics, registered once (after the recorder is installed).

use metrics::{Counter, counter};

#[derive(Clone)]
pub struct Metrics {
    /// `rocket_rides_simulator_rides_acknowledged_total`
    pub acknowledged: Counter,
    /// `rocket_rides_simulator_rides_failed_total`: calls it gave up on.
    pub failed: Counter,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            acknowledged: counter!("rocket_rides_simulator_rides_acknowledged_total"),
            failed: counter!("rocket_rides_simulator_rides_failed_total"),
        }
    }
}
