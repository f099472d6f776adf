//! What a batch does to a reader that reads a partition in order from its position (a
//! checkpointed consumer), before touching the database. Pure, so the rules (see the module
//! above) are tested here without Redis or Postgres.

use super::{Halt, Verdict, check};
use crate::{Entry, LogRecord, RecordError, StreamId};

/// What a batch does, given the seq last applied.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Records to apply, in order: `last_seq + 1`, `+ 2`, ...
    pub apply: Vec<LogRecord>,
    /// Entries that are not valid records: set aside; their archived record is applied.
    pub malformed: Vec<(StreamId, RecordError)>,
    /// Why the reader must stop after applying `apply`, if it must.
    pub halt: Option<Halt>,
}

/// Plans the records after `last_seq` from the stream's `entries` (in stream order, all after
/// the position) and the `archived` records from `last_seq + 1` on, which are every record
/// the archive holds up to `archived_upto`.
pub fn plan(last_seq: i64, entries: &[Entry], archived: &[LogRecord], archived_upto: i64) -> Plan {
    let mut plan = Plan::default();
    let mut archived = archived.iter().peekable();
    let mut next = last_seq + 1;
    // The archive's record for `next`: Ok(None) when the page read ends before it, Err when
    // the archive should hold it and does not.
    let mut take = |next: i64| match archived.next_if(|r| r.seq == next) {
        Some(record) => Ok(Some(record)),
        None if next > archived_upto => Ok(None),
        None => Err(()),
    };
    for entry in entries {
        let seq = entry.id.log_seq();
        if seq < next {
            plan.halt = Some(Halt::Diverged {
                seq,
                reason: format!("it is at or before the position {}", next - 1),
            });
            return plan;
        }
        // Entries the stream no longer holds: from the archive.
        while next < seq {
            match take(next) {
                Ok(Some(record)) => plan.apply.push(record.clone()),
                Ok(None) => return plan,
                Err(()) => {
                    plan.halt = Some(Halt::Gap { expected: next });
                    return plan;
                }
            }
            next += 1;
        }
        let kept = match take(next) {
            Ok(Some(kept)) => Some(kept),
            // The page read ends here: what was checked is applied; the next read goes on.
            Ok(None) => return plan,
            Err(()) => None,
        };
        match check(entry, kept) {
            Verdict::Apply(record) => plan.apply.push(record),
            Verdict::SetAside(record, e) => {
                plan.malformed.push((entry.id, e));
                plan.apply.push(record);
            }
            Verdict::Diverged(reason) => {
                plan.halt = Some(Halt::Diverged { seq, reason });
                return plan;
            }
        }
        next += 1;
    }
    // Nothing more in the stream: whatever else the archive holds is applied from there; a
    // record it should hold and does not is a gap, even with the stream empty.
    loop {
        match take(next) {
            Ok(Some(record)) => plan.apply.push(record.clone()),
            Ok(None) => return plan,
            Err(()) => {
                plan.halt = Some(Halt::Gap { expected: next });
                return plan;
            }
        }
        next += 1;
    }
}

/// The usual batch, checked as a whole: entries that are the records right after the
/// position, in order, every one readable. It is applied from the archive, in one statement,
/// if the archive's records over the same range have the same digest; otherwise `plan` finds
/// out what differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Run<'a> {
    pub records: Vec<&'a LogRecord>,
    /// The last seq, and its record's epoch.
    pub upto: i64,
    pub epoch: i64,
    pub digest: String,
}

/// The run `entries` make after `last_seq`, if they are one.
pub fn run(last_seq: i64, entries: &[Entry]) -> Option<Run<'_>> {
    let mut records = Vec::with_capacity(entries.len());
    for (entry, seq) in entries.iter().zip(last_seq + 1..) {
        match &entry.record {
            Ok(record) if entry.id == StreamId::of_seq(seq) && record.seq == seq => {
                records.push(record)
            }
            _ => return None,
        }
    }
    let last = records.last()?;
    Some(Run {
        upto: last.seq,
        epoch: last.epoch,
        digest: crate::archive::digest(records.iter().copied()),
        records,
    })
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
    fn an_empty_stream_over_a_pruned_archive_is_a_gap() {
        // The stream holds nothing after the position and the archive starts later: the
        // records between are gone, which must halt rather than wait for the next entry.
        let archive: Vec<_> = (5..=6).map(record).collect();
        let p = plan(2, &[], &archive, 6);
        assert_eq!(
            (seqs(&p), p.halt),
            (vec![], Some(Halt::Gap { expected: 3 }))
        );
        let p = plan(2, &[], &[], 6);
        assert_eq!(p.halt, Some(Halt::Gap { expected: 3 }));
    }

    #[test]
    fn stops_where_the_archive_page_ends() {
        let archive: Vec<_> = (1..=2).map(record).collect();
        let entries: Vec<_> = (1..=4).map(|s| entry(record(s))).collect();
        let p = plan(0, &entries, &archive, 2);
        assert_eq!((seqs(&p), p.halt), (vec![1, 2], None));
    }

    #[test]
    fn a_run_is_the_records_right_after_the_position_all_readable() {
        let entries: Vec<_> = (4..=6).map(|s| entry(record(s))).collect();
        let run = run(3, &entries).expect("a run");
        assert_eq!((run.upto, run.epoch, run.records.len()), (6, 1, 3));
        let archived: Vec<_> = (4..=6).map(record).collect();
        assert_eq!(run.digest, crate::archive::digest(&archived));
        // Not right after the position, not contiguous, or not readable: no run.
        assert!(super::run(2, &entries).is_none());
        assert!(super::run(3, &[entry(record(4)), entry(record(6))]).is_none());
        let bad = Entry {
            id: StreamId::of_seq(5),
            record: Err(RecordError::Missing("distance")),
        };
        assert!(super::run(3, &[entry(record(4)), bad]).is_none());
        assert!(super::run(3, &[]).is_none());
        // Any difference from the archive changes the digest.
        let mut other = record(5);
        other.distance = "5.25".into();
        let changed = [entry(record(4)), entry(other), entry(record(6))];
        assert_ne!(super::run(3, &changed).unwrap().digest, run.digest);
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
