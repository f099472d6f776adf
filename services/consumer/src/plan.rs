//! Deciding what a batch of stream entries does to a consumer, before touching the database.
//! Pure, so the exactly-once rules are tested here without Redis or Postgres.

use rocket_rides_log::{Entry, LogRecord, RecordError, StreamId};

/// A valid record read from the stream.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub stream_id: StreamId,
    pub record: LogRecord,
    /// Already applied (a double send or a re-send): skipped.
    pub duplicate: bool,
}

/// What a batch does, given the sequence number last applied.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Valid records up to the gap (if any), in stream order.
    pub seen: Vec<Seen>,
    /// Entries that are not valid records: set aside, never applied.
    pub malformed: Vec<(StreamId, RecordError)>,
    /// The checkpoint after the batch: last sequence applied and last entry read.
    pub last_seq: i64,
    pub last_stream_id: Option<StreamId>,
    /// A record that is not the next one: everything between was lost.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub expected_seq: i64,
    pub found_seq: i64,
    pub stream_id: StreamId,
}

/// Applies `seq == last + 1`, skips `seq <= last`, and stops before the first `seq > last + 1`.
pub fn plan(entries: &[Entry], last_seq: i64) -> Plan {
    let mut plan = Plan {
        last_seq,
        ..Plan::default()
    };
    for entry in entries {
        match &entry.record {
            Err(e) => plan.malformed.push((entry.id, e.clone())),
            Ok(record) if record.seq <= plan.last_seq + 1 => {
                let duplicate = record.seq <= plan.last_seq;
                plan.last_seq = plan.last_seq.max(record.seq);
                plan.seen.push(Seen {
                    stream_id: entry.id,
                    record: record.clone(),
                    duplicate,
                });
            }
            Ok(record) => {
                plan.gap = Some(Gap {
                    expected_seq: plan.last_seq + 1,
                    found_seq: record.seq,
                    stream_id: entry.id,
                });
                return plan;
            }
        }
        plan.last_stream_id = Some(entry.id);
    }
    plan
}

impl Plan {
    /// Distances (exact decimals) of the records to apply, in order.
    pub fn distances(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|s| !s.duplicate)
            .map(|s| s.record.distance.clone())
            .collect()
    }

    /// How many records were skipped as already applied.
    pub fn duplicates(&self) -> usize {
        self.seen.iter().filter(|s| s.duplicate).count()
    }
}

#[cfg(test)]
mod tests {
    use rocket_rides_platform::telemetry::propagation::TraceContext;

    use super::*;

    fn id(text: &str) -> StreamId {
        text.parse().unwrap()
    }

    fn entry(at: &str, seq: i64, distance: &str) -> Entry {
        Entry {
            id: id(at),
            record: Ok(LogRecord {
                seq,
                ride_id: seq,
                distance: distance.into(),
                trace: TraceContext::default(),
            }),
        }
    }

    #[test]
    fn applies_in_order_and_skips_double_sends() {
        let batch = [
            entry("1-0", 1, "1.5"),
            entry("1-1", 2, "2"),
            entry("1-2", 1, "1.5"),
            entry("1-3", 2, "2"),
            entry("1-4", 3, "3"),
        ];
        let p = plan(&batch, 0);
        assert_eq!(p.distances(), ["1.5", "2", "3"]);
        assert_eq!(p.duplicates(), 2);
        assert_eq!(p.last_seq, 3);
        assert_eq!(p.last_stream_id, Some(id("1-4")));
        assert_eq!(p.gap, None);
    }

    #[test]
    fn a_resend_after_a_crash_is_all_duplicates() {
        let batch = [entry("5-0", 4, "1"), entry("5-1", 5, "1")];
        let p = plan(&batch, 5);
        assert!(p.distances().is_empty());
        assert_eq!(p.duplicates(), 2);
        assert_eq!(p.last_seq, 5);
        assert_eq!(p.last_stream_id, Some(id("5-1")));
    }

    #[test]
    fn stops_before_a_gap_and_keeps_what_came_before() {
        let batch = [
            entry("1-0", 8, "1"),
            entry("1-1", 10, "1"),
            entry("1-2", 9, "1"),
        ];
        let p = plan(&batch, 7);
        assert_eq!(p.distances(), ["1"]);
        assert_eq!(p.last_seq, 8);
        assert_eq!(p.last_stream_id, Some(id("1-0")));
        assert_eq!(
            p.gap,
            Some(Gap {
                expected_seq: 9,
                found_seq: 10,
                stream_id: id("1-1")
            })
        );
    }

    #[test]
    fn malformed_entries_are_set_aside_and_passed() {
        let bad = Entry {
            id: id("1-1"),
            record: Err(RecordError::Missing("seq")),
        };
        let batch = [entry("1-0", 1, "1"), bad, entry("1-2", 2, "2")];
        let p = plan(&batch, 0);
        assert_eq!(p.distances(), ["1", "2"]);
        assert_eq!(p.malformed.len(), 1);
        assert_eq!(p.malformed[0].0, id("1-1"));
        assert_eq!(p.last_stream_id, Some(id("1-2")));
    }

    /// Builds the stream the streamer could have written for records 1..=n: each in order,
    /// with re-sends of the `k` records up to position `p` wherever `resends` says.
    fn stream(n: i64, resends: &[(i64, i64)]) -> Vec<i64> {
        let mut seqs = Vec::new();
        for seq in 1..=n {
            seqs.push(seq);
            for (p, k) in resends {
                if p % n + 1 == seq {
                    seqs.extend((seq - k + 1).max(1)..=seq);
                }
            }
        }
        seqs
    }

    proptest::proptest! {
        /// However re-sends interleave and however the reads are cut into batches, every
        /// record is applied exactly once, in order.
        #[test]
        fn each_record_applies_once_whatever_the_resends_and_batching(
            n in 1i64..80,
            resends in proptest::collection::vec((0i64..80, 1i64..12), 0..12),
            cuts in proptest::collection::vec(1usize..25, 1..40),
        ) {
            let seqs = stream(n, &resends);
            let entries: Vec<Entry> = seqs
                .iter()
                .enumerate()
                .map(|(i, seq)| entry(&format!("1-{i}"), *seq, "1"))
                .collect();
            let (mut last, mut applied, mut pos) = (0, Vec::new(), 0);
            for cut in cuts.iter().cycle() {
                if pos >= entries.len() {
                    break;
                }
                let batch = &entries[pos..(pos + cut).min(entries.len())];
                let p = plan(batch, last);
                proptest::prop_assert_eq!(&p.gap, &None);
                applied.extend(p.seen.iter().filter(|s| !s.duplicate).map(|s| s.record.seq));
                last = p.last_seq;
                pos += batch.len();
            }
            proptest::prop_assert_eq!(applied, (1..=n).collect::<Vec<_>>());
        }

        /// A record missing from the stream altogether is always reported, never skipped.
        #[test]
        fn a_lost_record_is_always_a_gap(n in 2i64..80, lost in 1i64..80) {
            let lost = lost % (n - 1) + 1;
            let entries: Vec<Entry> = (1..=n)
                .filter(|seq| *seq != lost)
                .map(|seq| entry(&format!("1-{seq}"), seq, "1"))
                .collect();
            let p = plan(&entries, 0);
            let gap = p.gap.expect("gap reported");
            proptest::prop_assert_eq!(gap.expected_seq, lost);
            proptest::prop_assert_eq!(p.last_seq, lost - 1);
        }
    }
}
