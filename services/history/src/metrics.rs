//! The history service's metrics. Group-wide figures (pending, lag) are what Redis reports for
//! the whole group: every member exports the same value for a partition.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

#[derive(Clone)]
pub struct Metrics {
    /// `history_deliveries_total`: entries delivered to this member (read or claimed).
    pub deliveries: Counter,
    /// `history_projected_total`: entries projected and acknowledged.
    pub projected: Counter,
    /// `history_claims_total`: entries claimed from members that left them pending.
    pub claims: Counter,
    /// `history_dead_letters_total`: entries given up on.
    pub dead_letters: Counter,
    /// `history_batch_size`
    pub batch_size: Histogram,
}

/// A partition's gauges.
pub struct PartitionGauges {
    /// `history_pending{partition}`: delivered, not yet acknowledged.
    pub pending: Gauge,
    /// `history_lag_entries{partition}`: pending plus not yet delivered.
    pub lag_entries: Gauge,
    /// `history_lag_seconds{partition}`: the age of the oldest ride in the last batch when it
    /// was projected (0 once nothing is pending).
    pub lag_seconds: Gauge,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            deliveries: counter!("history_deliveries_total"),
            projected: counter!("history_projected_total"),
            claims: counter!("history_claims_total"),
            dead_letters: counter!("history_dead_letters_total"),
            batch_size: histogram!("history_batch_size"),
        }
    }

    pub fn partition(&self, partition: i32) -> PartitionGauges {
        let label = || [("partition", partition.to_string())];
        PartitionGauges {
            pending: gauge!("history_pending", &label()),
            lag_entries: gauge!("history_lag_entries", &label()),
            lag_seconds: gauge!("history_lag_seconds", &label()),
        }
    }
}
