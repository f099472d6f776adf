//! The log record: what the streamer writes to the stream for one ride and consumers read back.
//!
//! A record names the log it belongs to (`log`, random per database), its `partition`, the
//! `epoch` of the partition's leader that numbered it, its position `seq` in the partition
//! (also its stream id, `<seq>-0`, so Redis itself refuses
//! a duplicate or a regression and no clock matters), and the ride. A consumer applies a record
//! only when all of that agrees with the archive in Postgres, never on `seq` alone.

use redis::streams::StreamId as RawEntry;
use rocket_rides_platform::telemetry::propagation::TraceContext;

use crate::StreamId;

/// Largest ride distance in metres (also enforced by the API and the schema).
pub const MAX_DISTANCE: f64 = 1_000_000.0;
/// Distances are whole millimetres: at most this many digits after the point.
pub const DISTANCE_DECIMALS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogRecord {
    pub log: String,
    pub partition: i32,
    pub epoch: i64,
    pub seq: i64,
    pub ride_id: i64,
    /// The distance in metres as an exact decimal ("12.5"), never a float, so every consumer
    /// adds exactly what the database holds.
    pub distance: String,
    /// The ride's trace, continued by whoever wrote this entry.
    #[sqlx(flatten)]
    pub trace: TraceContext,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("field {0:?} is missing or not text")]
    Missing(&'static str),
    #[error("field {field:?} = {value:?} is not valid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl LogRecord {
    /// Where the record lives in the stream.
    pub fn stream_id(&self) -> StreamId {
        StreamId::of_seq(self.seq)
    }

    /// The stream entry's fields, in a stable order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("log", self.log.clone()),
            ("partition", self.partition.to_string()),
            ("epoch", self.epoch.to_string()),
            ("seq", self.seq.to_string()),
            ("ride_id", self.ride_id.to_string()),
            ("distance", self.distance.clone()),
        ];
        if let Some(tp) = &self.trace.traceparent {
            fields.push(("traceparent", tp.clone()));
        }
        if let Some(ts) = &self.trace.tracestate {
            fields.push(("tracestate", ts.clone()));
        }
        fields
    }

    /// How the record reads in an error message: ride, distance, partition, epoch and log.
    pub fn describe(&self) -> String {
        format!(
            "ride {} ({} m, partition {}, epoch {}, log {})",
            self.ride_id, self.distance, self.partition, self.epoch, self.log
        )
    }

    /// Whether `other` is the same record (the trace context aside, which each hop rewrites).
    pub fn same_as(&self, other: &LogRecord) -> bool {
        self.log == other.log
            && self.partition == other.partition
            && self.epoch == other.epoch
            && self.seq == other.seq
            && self.ride_id == other.ride_id
            && same_decimal(&self.distance, &other.distance)
    }

    /// Parses and validates a stream entry. Anything a consumer could not apply safely (a
    /// missing field, a seq that is not the entry's id, a distance that is not a plain decimal
    /// of whole millimetres in range) is an error.
    pub fn from_entry(entry: &RawEntry) -> Result<Self, RecordError> {
        let text = |field: &'static str| {
            entry
                .get::<String>(field)
                .ok_or(RecordError::Missing(field))
        };
        let number = |field: &'static str, min: i64| -> Result<i64, RecordError> {
            let value = text(field)?;
            match value.parse::<i64>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(RecordError::Invalid {
                    field,
                    value,
                    reason: "expected a whole number in range",
                }),
            }
        };
        let distance = text("distance")?;
        if !is_valid_distance(&distance) {
            return Err(RecordError::Invalid {
                field: "distance",
                value: distance,
                reason: "expected a plain decimal of whole millimetres, greater than 0 and at most 1000000",
            });
        }
        let seq = number("seq", 1)?;
        if entry.id != StreamId::of_seq(seq).to_string() {
            return Err(RecordError::Invalid {
                field: "seq",
                value: seq.to_string(),
                reason: "does not match the entry's id",
            });
        }
        // Entries written before the log had partitions carry none: they are partition 0's.
        let partition = match entry.get::<String>("partition") {
            None => 0,
            Some(_) => {
                i32::try_from(number("partition", 0)?).map_err(|_| RecordError::Invalid {
                    field: "partition",
                    value: text("partition").unwrap_or_default(),
                    reason: "expected a partition number",
                })?
            }
        };
        Ok(Self {
            log: text("log")?,
            partition,
            epoch: number("epoch", 0)?,
            seq,
            ride_id: number("ride_id", 1)?,
            distance,
            trace: TraceContext {
                traceparent: entry.get("traceparent"),
                tracestate: entry.get("tracestate"),
            },
        })
    }
}

/// A plain decimal ("12", "0.25"; no sign, exponent or spaces) of whole millimetres, in
/// (0, MAX_DISTANCE].
pub fn is_valid_distance(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match text.split_once('.') {
        None => digits(text),
        Some((int, frac)) => digits(int) && digits(frac) && frac.len() <= DISTANCE_DECIMALS,
    };
    well_formed
        && text.len() <= 32
        && text
            .parse::<f64>()
            .is_ok_and(|d| d > 0.0 && d <= MAX_DISTANCE)
}

/// Two plain decimals with the same value ("12.50" and "12.5").
pub fn same_decimal(a: &str, b: &str) -> bool {
    fn normal(s: &str) -> (&str, &str) {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let int = int.trim_start_matches('0');
        (int, frac.trim_end_matches('0'))
    }
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::Value;

    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> RawEntry {
        RawEntry {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    fn record(seq: i64, distance: &str) -> LogRecord {
        LogRecord {
            log: "l1".into(),
            partition: 2,
            epoch: 3,
            seq,
            ride_id: 42,
            distance: distance.into(),
            trace: TraceContext {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                tracestate: None,
            },
        }
    }

    fn round_trip(record: &LogRecord) -> Result<LogRecord, RecordError> {
        let fields = record.fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        LogRecord::from_entry(&entry(&record.stream_id().to_string(), &pairs))
    }

    #[test]
    fn round_trips_through_fields() {
        let record = record(7, "12.5");
        assert_eq!(round_trip(&record), Ok(record));
    }

    #[test]
    fn rejects_what_a_consumer_cannot_apply() {
        let ok = [
            ("log", "l"),
            ("epoch", "1"),
            ("seq", "1"),
            ("ride_id", "1"),
            ("distance", "1"),
        ];
        assert!(LogRecord::from_entry(&entry("1-0", &ok)).is_ok());
        assert!(
            LogRecord::from_entry(&entry("2-0", &ok)).is_err(),
            "seq must be the id"
        );
        for (field, bad) in [
            ("seq", "0"),
            ("seq", "x"),
            ("epoch", "-1"),
            ("ride_id", "1.5"),
            ("distance", "0"),
            ("distance", "-1"),
            ("distance", "1e3"),
            ("distance", "1e-400"),
            ("distance", "0.0001"),
            ("distance", "NaN"),
            ("distance", "1000000.001"),
            ("distance", " 1"),
            ("distance", "1."),
            ("distance", ".5"),
            ("distance", ""),
        ] {
            let mut fields = ok.to_vec();
            fields.retain(|(k, _)| *k != field);
            fields.push((field, bad));
            assert!(
                LogRecord::from_entry(&entry("1-0", &fields)).is_err(),
                "{field}={bad:?} was accepted"
            );
        }
    }

    #[test]
    fn the_same_record_whatever_its_trace_and_trailing_zeros() {
        let mut other = record(7, "12.500");
        other.trace = TraceContext::default();
        assert!(record(7, "12.5").same_as(&other));
        assert!(!record(7, "12.5").same_as(&record(7, "12.05")));
        assert!(!record(7, "12.5").same_as(&record(8, "12.5")));
        let mut epoch = record(7, "12.5");
        epoch.epoch = 4;
        assert!(!record(7, "12.5").same_as(&epoch));
    }

    proptest::proptest! {
        /// Any field values at all: parsing never panics, and whatever it accepts is safe to
        /// apply (a positive seq that is the id, a plain decimal of millimetres in range).
        #[test]
        fn parsing_arbitrary_entries_is_total_and_safe(
            seq in "\\PC{0,24}",
            ride_id in "\\PC{0,24}",
            distance in "[0-9.eE+-]{0,24}|\\PC{0,24}",
        ) {
            let id = format!("{seq}-0");
            let fields = [("log", "l"), ("epoch", "1"), ("seq", seq.as_str()), ("ride_id", ride_id.as_str()), ("distance", distance.as_str())];
            if let Ok(record) = LogRecord::from_entry(&entry(&id, &fields)) {
                proptest::prop_assert!(record.seq > 0 && record.ride_id > 0);
                let d: f64 = record.distance.parse().unwrap();
                proptest::prop_assert!(d > 0.0 && d <= MAX_DISTANCE);
                proptest::prop_assert!(record.distance.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            }
        }

        /// Every record the streamer can write parses back to itself.
        #[test]
        fn written_records_parse_back(seq in 1i64.., millis in 1u64..=1_000_000_000) {
            let record = record(seq, &format!("{}.{:03}", millis / 1000, millis % 1000));
            proptest::prop_assert_eq!(round_trip(&record), Ok(record));
        }
    }
}
