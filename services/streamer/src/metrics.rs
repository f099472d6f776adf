//! The streamer's metrics, registered once (after the recorder is installed).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

#[derive(Clone)]
pub struct Metrics {
    /// `rocket_rides_records_streamed_total`
    pub records_streamed: Counter,
    /// `rocket_rides_double_sends_total`: batches sent twice by the failure simulation.
    pub double_sends: Counter,
    /// `rocket_rides_streamer_batch_size`
    pub batch_size: Histogram,
    /// `rocket_rides_streamer_batch_duration_seconds`
    pub batch_duration: Histogram,
    /// `rocket_rides_streamer_leader`: how many partitions this replica leads.
    pub leader: Gauge,
    /// `rocket_rides_staged_records`: the outbox's backlog.
    pub staged: Gauge,
    /// `rocket_rides_stream_length`: entries in all partitions' streams.
    pub stream_length: Gauge,
    /// `rocket_rides_streamer_halted`: partitions whose leader here refuses to stream on (the
    /// log disagrees with the archive).
    pub halted: Gauge,
    /// `rocket_rides_oldest_staged_seconds`: age of the oldest record not yet numbered.
    pub oldest_staged: Gauge,
    /// `rocket_rides_archive_age_seconds`: age of the archive's oldest record.
    pub archive_age: Gauge,
}

/// One consumer's lag, as measured by the streamer.
pub struct Lag {
    /// `rocket_rides_consumer_lag_entries{consumer}`
    pub entries: Gauge,
    /// `rocket_rides_consumer_lag_seconds{consumer}`
    pub seconds: Gauge,
    /// `rocket_rides_consumer_expired{consumer}`: 1 while it no longer holds the stream back.
    pub expired: Gauge,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            records_streamed: counter!("rocket_rides_records_streamed_total"),
            double_sends: counter!("rocket_rides_double_sends_total"),
            batch_size: histogram!("rocket_rides_streamer_batch_size"),
            batch_duration: histogram!("rocket_rides_streamer_batch_duration_seconds"),
            leader: gauge!("rocket_rides_streamer_leader"),
            staged: gauge!("rocket_rides_staged_records"),
            stream_length: gauge!("rocket_rides_stream_length"),
            halted: gauge!("rocket_rides_streamer_halted"),
            oldest_staged: gauge!("rocket_rides_oldest_staged_seconds"),
            archive_age: gauge!("rocket_rides_archive_age_seconds"),
        }
    }

    /// Counts one failure of partition `partition`'s leader that it retries
    /// (`rocket_rides_streamer_errors_total{kind,partition}`): `postgres`, `redis`,
    /// `redis_full`, `fenced`, `not_replicated`, `archive_lock_timeout`.
    pub fn error(&self, kind: &'static str, partition: i32) {
        counter!(
            "rocket_rides_streamer_errors_total",
            "kind" => kind,
            "partition" => partition.to_string()
        )
        .increment(1);
    }

    /// `rocket_rides_dead_letters{partition}`: entries waiting in the partition's dead-letter
    /// stream for an operator (`rocket-rides-log dead-letters`).
    pub fn dead_letters(partition: i32) -> Gauge {
        gauge!("rocket_rides_dead_letters", "partition" => partition.to_string())
    }

    pub fn lag(consumer: &str) -> Lag {
        Lag {
            entries: gauge!("rocket_rides_consumer_lag_entries", "consumer" => consumer.to_string()),
            seconds: gauge!("rocket_rides_consumer_lag_seconds", "consumer" => consumer.to_string()),
            expired: gauge!("rocket_rides_consumer_expired", "consumer" => consumer.to_string()),
        }
    }
}
