//! The log record: what the streamer writes to the stream for one ride and consumers read back.
//!
//! `seq` is the record's position in the log, given by the streamer in the transaction that
//! removes the record from the outbox. A re-sent record carries the same `seq`, so a consumer
//! applies `seq == last + 1`, skips `seq <= last` (a duplicate) and stops on `seq > last + 1`
//! (a gap: something was lost, and skipping would make its total silently wrong).

use redis::streams::StreamId;
use rocket_rides_platform::telemetry::propagation::TraceContext;

/// Largest ride distance in metres (also enforced by the API and the schema).
pub const MAX_DISTANCE: f64 = 1_000_000.0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: i64,
    pub ride_id: i64,
    /// The distance in metres as an exact decimal ("12.5"), never a float, so every consumer
    /// adds exactly what the database holds.
    pub distance: String,
    /// The ride's trace, continued by whoever wrote this entry.
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
    /// The stream entry's fields, in a stable order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
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

    /// Parses and validates a stream entry. Anything a consumer could not apply safely (a
    /// missing field, a non-positive sequence, a distance that is not a plain decimal in range)
    /// is an error, so it can be set aside instead of poisoning a batch.
    pub fn from_entry(entry: &StreamId) -> Result<Self, RecordError> {
        let text = |field: &'static str| {
            entry
                .get::<String>(field)
                .ok_or(RecordError::Missing(field))
        };
        let positive = |field: &'static str| -> Result<i64, RecordError> {
            let value = text(field)?;
            match value.parse::<i64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(RecordError::Invalid {
                    field,
                    value,
                    reason: "expected a whole number of at least 1",
                }),
            }
        };
        let distance = text("distance")?;
        if !is_valid_distance(&distance) {
            return Err(RecordError::Invalid {
                field: "distance",
                value: distance,
                reason: "expected a plain decimal greater than 0 and at most 1000000",
            });
        }
        Ok(Self {
            seq: positive("seq")?,
            ride_id: positive("ride_id")?,
            distance,
            trace: TraceContext {
                traceparent: entry.get("traceparent"),
                tracestate: entry.get("tracestate"),
            },
        })
    }
}

/// A plain decimal ("12", "0.25"; no sign, exponent or spaces) in (0, MAX_DISTANCE].
pub fn is_valid_distance(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match text.split_once('.') {
        None => digits(text),
        Some((int, frac)) => digits(int) && digits(frac),
    };
    // The length cap bounds the work; the smallest positive double needs about 330 digits.
    well_formed
        && text.len() <= 1100
        && text
            .parse::<f64>()
            .is_ok_and(|d| d > 0.0 && d <= MAX_DISTANCE)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::Value;

    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_fields() {
        let record = LogRecord {
            seq: 7,
            ride_id: 42,
            distance: "12.5".into(),
            trace: TraceContext {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                tracestate: None,
            },
        };
        let fields = record.fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(LogRecord::from_entry(&entry(&pairs)), Ok(record));
    }

    #[test]
    fn rejects_what_a_consumer_cannot_apply() {
        let ok = [("seq", "1"), ("ride_id", "1"), ("distance", "1")];
        assert!(LogRecord::from_entry(&entry(&ok)).is_ok());
        for (field, bad) in [
            ("seq", "0"),
            ("seq", "-3"),
            ("seq", "x"),
            ("ride_id", "1.5"),
            ("distance", "0"),
            ("distance", "-1"),
            ("distance", "1e3"),
            ("distance", "NaN"),
            ("distance", "inf"),
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
                LogRecord::from_entry(&entry(&fields)).is_err(),
                "{field}={bad:?} was accepted"
            );
        }
        assert_eq!(
            LogRecord::from_entry(&entry(&[("seq", "1"), ("ride_id", "1")])),
            Err(RecordError::Missing("distance"))
        );
    }

    #[test]
    fn accepts_plain_decimals_in_range() {
        for good in ["1", "12.5", "0.0001", "1000000", "1000000.000", "000.5"] {
            assert!(is_valid_distance(good), "{good:?} was rejected");
        }
    }

    proptest::proptest! {
        /// Any field values at all: parsing never panics, and whatever it accepts is safe to
        /// apply (positive numbers, a plain decimal in range).
        #[test]
        fn parsing_arbitrary_entries_is_total_and_safe(
            seq in "\\PC{0,24}",
            ride_id in "\\PC{0,24}",
            distance in "[0-9.eE+-]{0,24}|\\PC{0,24}",
        ) {
            let fields = [("seq", seq.as_str()), ("ride_id", ride_id.as_str()), ("distance", distance.as_str())];
            if let Ok(record) = LogRecord::from_entry(&entry(&fields)) {
                proptest::prop_assert!(record.seq > 0 && record.ride_id > 0);
                let d: f64 = record.distance.parse().unwrap();
                proptest::prop_assert!(d > 0.0 && d <= MAX_DISTANCE);
                proptest::prop_assert!(record.distance.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            }
        }

        /// Every record the streamer can write parses back to itself.
        #[test]
        fn written_records_parse_back(seq in 1i64.., ride_id in 1i64.., cents in 1u64..=100_000_000) {
            let record = LogRecord {
                seq,
                ride_id,
                distance: format!("{}.{:02}", cents / 100, cents % 100),
                trace: TraceContext::default(),
            };
            let fields = record.fields();
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            proptest::prop_assert_eq!(LogRecord::from_entry(&entry(&pairs)), Ok(record));
        }
    }
}
