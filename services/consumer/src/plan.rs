//! Deciding what a batch does to a consumer, before touching the database. Pure, so the rules
//! are tested here without Redis or Postgres.
//!
//! The archive in Postgres decides what the log holds; the stream is how records arrive fast.
//! A consumer applies the records after its checkpoint, in order, only where the stream's entry
//! is the archived record (same log, epoch, seq, ride and distance). Records the stream no
//! longer holds (trimmed, or a consumer added late) come from the archive. An entry that
//! differs from the archive, or a record neither has, stops the consumer: applying or skipping
//! on seq alone could make its total silently wrong.

use rocket_rides_log::{Entry, LogRecord, RecordError, StreamId};

/// What a batch does, given the seq last applied.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Records to apply, in order: `last_seq + 1`, `+ 2`, ...
    pub apply: Vec<LogRecord>,
    /// Entries that are not valid records: set aside; their archived record is applied.
    pub malformed: Vec<(StreamId, RecordError)>,
    /// Why the consumer must stop after applying `apply`, if it must.
    pub halt: Option<Halt>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    #[error(
        "record {expected} is in neither the stream nor the archive (pruned after LOG_RETENTION?)"
    )]
    Gap { expected: i64 },
    #[error("stream entry {seq} is not the archived record: {reason}")]
    Diverged { seq: i64, reason: String },
    #[error(
        "the stream ends at seq {stream_top}, before this consumer's checkpoint {checkpoint}: \
         Redis lost entries; run `rocket-rides-streamer republish`"
    )]
    RedisBehind { stream_top: i64, checkpoint: i64 },
    #[error(
        "this database's log streams to {log:?} but STREAM_NAME is {configured:?}; set \
         STREAM_NAME={log:?} (a log has one stream)"
    )]
    StreamName { log: String, configured: String },
}

/// Plans the records after `last_seq` from the stream's `entries` (in stream order, all after
/// the checkpoint) and the `archived` records from `last_seq + 1` on, which are every record
/// the archive holds up to `archived_upto`.
pub fn plan(last_seq: i64, entries: &[Entry], archived: &[LogRecord], archived_upto: i64) -> Plan {
    let mut plan = Plan::default();
    let mut archived = archived.iter().peekable();
    let mut next = last_seq + 1;
    // The archive's record for `next`; None when the page read ends before it.
    let mut take = |next: i64| match archived.next_if(|r| r.seq == next) {
        Some(record) => Ok(Some(record.clone())),
        None if next > archived_upto => Ok(None),
        None => Err(()),
    };
    for entry in entries {
        let seq = entry.id.log_seq();
        if seq < next {
            plan.halt = Some(Halt::Diverged {
                seq,
                reason: format!("it is at or before the checkpoint {}", next - 1),
            });
            return plan;
        }
        // Entries the stream no longer holds: from the archive.
        while next < seq {
            match take(next) {
                Ok(Some(record)) => plan.apply.push(record),
                Ok(None) => return plan,
                Err(()) => {
                    plan.halt = Some(Halt::Gap { expected: next });
                    return plan;
                }
            }
            next += 1;
        }
        let kept = match take(next) {
            Ok(Some(kept)) => kept,
            // The page read ends here: what was checked is applied; the next read goes on.
            Ok(None) => return plan,
            Err(()) => {
                plan.halt = Some(Halt::Diverged {
                    seq,
                    reason: "the archive has no such record (was Postgres restored?)".into(),
                });
                return plan;
            }
        };
        match &entry.record {
            Err(e) => {
                plan.malformed.push((entry.id, e.clone()));
                plan.apply.push(kept);
            }
            Ok(record) if record.same_as(&kept) => plan.apply.push(LogRecord {
                trace: record.trace.clone(),
                ..kept
            }),
            Ok(record) => {
                plan.halt = Some(Halt::Diverged {
                    seq,
                    reason: format!(
                        "the stream has {}, the archive {}",
                        record.describe(),
                        kept.describe()
                    ),
                });
                return plan;
            }
        }
        next += 1;
    }
    // Nothing more in the stream: whatever else the archive holds is applied from there.
    while let Ok(Some(record)) = take(next) {
        plan.apply.push(record);
        next += 1;
    }
    plan
}

impl Plan {
    /// Distances (exact decimals) of the records to apply, in order.
    pub fn distances(&self) -> Vec<String> {
        self.apply.iter().map(|r| r.distance.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use rocket_rides_platform::telemetry::propagation::TraceContext;

    use super::*;

    fn record(seq: i64) -> LogRecord {
        LogRecord {
            log: "log-a".into(),
            partition: 0,
            epoch: 1,
            seq,
            ride_id: 100 + seq,
            distance: format!("{seq}.5"),
            trace: TraceContext::default(),
        }
    }

    fn entry(record: LogRecord) -> Entry {
        Entry {
            id: record.stream_id(),
            record: Ok(record),
        }
    }

    /// The checkpoint after the batch, given the one before.
    fn last_seq(plan: &Plan, before: i64) -> i64 {
        plan.apply.last().map_or(before, |r| r.seq)
    }

    fn seqs(plan: &Plan) -> Vec<i64> {
        plan.apply.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn applies_stream_entries_that_match_the_archive() {
        let archive: Vec<_> = (4..=6).map(record).collect();
        let entries: Vec<_> = (4..=6).map(|s| entry(record(s))).collect();
        let p = plan(3, &entries, &archive, 6);
        assert_eq!(seqs(&p), [4, 5, 6]);
        assert_eq!(p.halt, None);
        assert_eq!(last_seq(&p, 3), 6);
    }

    #[test]
    fn catches_up_from_the_archive_where_the_stream_was_trimmed() {
        let archive: Vec<_> = (1..=6).map(record).collect();
        let entries: Vec<_> = (5..=6).map(|s| entry(record(s))).collect();
        assert_eq!(seqs(&plan(0, &entries, &archive, 6)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(&plan(0, &[], &archive, 6)), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn an_entry_that_differs_from_the_archive_stops_the_consumer() {
        let archive: Vec<_> = (1..=3).map(record).collect();
        for change in [
            |r: &mut LogRecord| r.epoch = 2,
            |r: &mut LogRecord| r.log = "log-b".into(),
            |r: &mut LogRecord| r.ride_id = 7,
            |r: &mut LogRecord| r.distance = "2.25".into(),
        ] {
            let mut other = record(2);
            change(&mut other);
            let entries = [entry(record(1)), entry(other), entry(record(3))];
            let p = plan(0, &entries, &archive, 3);
            assert_eq!(seqs(&p), [1], "only what agrees is applied");
            assert!(
                matches!(p.halt, Some(Halt::Diverged { seq: 2, .. })),
                "{:?}",
                p.halt
            );
        }
    }

    #[test]
    fn a_record_in_neither_place_is_a_gap() {
        let archive: Vec<_> = [1, 2, 4].into_iter().map(record).collect();
        let entries = [entry(record(4))];
        let p = plan(0, &entries, &archive, 4);
        assert_eq!(seqs(&p), [1, 2]);
        assert_eq!(p.halt, Some(Halt::Gap { expected: 3 }));
    }

    #[test]
    fn an_entry_the_archive_lacks_stops_the_consumer() {
        // Postgres went back in time: the stream holds records it no longer has.
        let archive: Vec<_> = (1..=2).map(record).collect();
        let entries: Vec<_> = (1..=4).map(|s| entry(record(s))).collect();
        let p = plan(0, &entries, &archive, 10);
        assert_eq!(seqs(&p), [1, 2]);
        assert!(
            matches!(p.halt, Some(Halt::Diverged { seq: 3, .. })),
            "{:?}",
            p.halt
        );
    }

    #[test]
    fn a_malformed_entry_is_set_aside_and_its_archived_record_applied() {
        let archive: Vec<_> = (1..=3).map(record).collect();
        let bad = Entry {
            id: StreamId::of_seq(2),
            record: Err(RecordError::Missing("distance")),
        };
        let p = plan(0, &[entry(record(1)), bad, entry(record(3))], &archive, 3);
        assert_eq!(seqs(&p), [1, 2, 3]);
        assert_eq!(p.malformed.len(), 1);
        assert_eq!(p.halt, None);
    }

    #[test]
    fn stops_where_the_archive_page_ends() {
        let archive: Vec<_> = (1..=2).map(record).collect();
        let entries: Vec<_> = (1..=4).map(|s| entry(record(s))).collect();
        let p = plan(0, &entries, &archive, 2);
        assert_eq!((seqs(&p), p.halt), (vec![1, 2], None));
    }

    proptest::proptest! {
        /// Whatever the stream still holds of the log and however reads are cut, every record
        /// is applied once, in order, and only archived records are applied.
        #[test]
        fn each_record_applies_once_in_order(
            n in 1i64..60,
            trimmed in 0i64..60,
            cuts in proptest::collection::vec(1usize..20, 1..30),
        ) {
            let archive: Vec<_> = (1..=n).map(record).collect();
            let in_stream: Vec<_> = (trimmed.min(n) + 1..=n).map(|s| entry(record(s))).collect();
            let (mut last, mut applied) = (0, Vec::new());
            for cut in cuts.iter().cycle().take(200) {
                if last == n { break; }
                let entries: Vec<_> = in_stream.iter().filter(|e| e.id.log_seq() > last).take(*cut).cloned().collect();
                let page: Vec<_> = archive.iter().filter(|r| r.seq > last).take(*cut).cloned().collect();
                let upto = if page.len() < *cut { n } else { page.last().unwrap().seq };
                let p = plan(last, &entries, &page, upto);
                proptest::prop_assert_eq!(&p.halt, &None);
                applied.extend(seqs(&p));
                last = last_seq(&p, last);
            }
            proptest::prop_assert_eq!(applied, (1..=n).collect::<Vec<_>>());
        }
    }
}
