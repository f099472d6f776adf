//! The consumer's metrics, registered once with its name as the `consumer` label.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

#[derive(Clone)]
pub struct Metrics {
    /// `rocket_rides_records_applied_total{consumer}`
    pub applied: Counter,
    /// `rocket_rides_records_applied_by_range_total{consumer}`: of those, records checked against
    /// the archive as a range (one digest per batch) rather than one by one.
    pub applied_by_range: Counter,
    /// `rocket_rides_simulated_crashes_total{consumer}`
    pub simulated_crashes: Counter,
    /// `rocket_rides_dead_letters_total{consumer}`: entries set aside.
    pub dead_letters: Counter,
    /// `rocket_rides_consumer_gap{consumer}`: partitions halted (a gap, or a log that disagrees
    /// with the archive).
    pub gap: Gauge,
    /// `rocket_rides_consumer_partitions{consumer}`: partitions this instance owns.
    pub partitions: Gauge,
    /// `rocket_rides_consumer_batch_size{consumer}`
    pub batch_size: Histogram,
    /// `rocket_rides_consumer_batch_duration_seconds{consumer}`
    pub batch_duration: Histogram,
}

impl Metrics {
    pub fn register(consumer: &str) -> Self {
        let label = || [("consumer", consumer.to_string())];
        Self {
            applied: counter!("rocket_rides_records_applied_total", &label()),
            applied_by_range: counter!("rocket_rides_records_applied_by_range_total", &label()),
            simulated_crashes: counter!("rocket_rides_simulated_crashes_total", &label()),
            dead_letters: counter!("rocket_rides_dead_letters_total", &label()),
            gap: gauge!("rocket_rides_consumer_gap", &label()),
            partitions: gauge!("rocket_rides_consumer_partitions", &label()),
            batch_size: histogram!("rocket_rides_consumer_batch_size", &label()),
            batch_duration: histogram!("rocket_rides_consumer_batch_duration_seconds", &label()),
        }
    }
}
