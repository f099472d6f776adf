//! What a failed group-commit statement may have written, and how the api finds out.
//!
//! The statement is one implicit transaction: Postgres commits it when it has run it and read
//! the Sync that follows (the extended protocol's end of a statement), before it answers. So:
//! - a failure before the statement's execution was sent (taking or testing a connection,
//!   preparing the statement, encoding its arguments) wrote nothing;
//! - an ERROR from Postgres rolled the statement back: nothing was written;
//! - Postgres ending the session (a FATAL or PANIC, e.g. a shutdown or `pg_terminate_backend`)
//!   before any of the statement's rows came back wrote nothing either: Postgres sends the rows
//!   and the statement's completion before it commits, on the same ordered stream, ahead of the
//!   FATAL;
//! - anything else once it was sent (the connection reset or closed, sqlx's `Error::Io`; a
//!   FATAL after rows; a protocol or decoding error) leaves the outcome unknown: Postgres may
//!   have committed and lost only the answer.
//!
//! An unknown outcome is resolved by idempotency key: once the statement's backend is gone
//! (`session::settle`), a key that is in `rides` names its committed ride, and a key that is not
//! proves that the statement did not commit, so that nothing of its batch was written. Calls
//! without a key in a batch whose keys prove nothing are answered `Unknown`.

use std::{collections::HashMap, time::Duration};

use rocket_rides_platform::{retry::Backoff, telemetry::spans};
use sqlx::{PgConnection, PgPool, postgres::PgDatabaseError, postgres::PgSeverity};
use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    error::RideError,
    group::{NewRide, Reply, Written, check_same_ride},
    session::{self, Backend},
    wake::Waker,
};

/// How long the api keeps trying to resolve an unknown outcome (Postgres to answer again, the
/// old backend to end) before it answers that it could not.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(10);

/// The rides already under some idempotency keys (reads only `rides`, the api's own table).
const FIND_BY_KEYS: &str = "
    SELECT idempotency_key, id, distance::text, rider_id FROM rides
    WHERE idempotency_key = ANY($1)";

/// A failed statement, by what it may have written.
#[derive(Debug)]
pub enum Failure {
    /// Nothing of the batch was written.
    NothingWritten(sqlx::Error),
    /// The batch may or may not have been committed.
    Unknown(sqlx::Error),
}

/// How far a statement had got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing of its execution was sent.
    NotSent,
    /// Sent; `rows` tells whether any of its result rows came back.
    Sent { rows: bool },
}

/// What an error says about the session and the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Postgres refused the statement (severity ERROR): it rolled back.
    Refused,
    /// Postgres ended the session (severity FATAL or PANIC).
    SessionEnded,
    /// Raised before anything was written to the connection.
    Unsent,
    /// The connection broke, or an answer could not be read.
    Broken,
}

fn cause(e: &sqlx::Error) -> Cause {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
            Some(pg) => match pg.severity() {
                PgSeverity::Fatal | PgSeverity::Panic => Cause::SessionEnded,
                _ => Cause::Refused,
            },
            None => Cause::Broken,
        },
        sqlx::Error::Encode(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Cause::Unsent
        }
        _ => Cause::Broken,
    }
}

/// Whether an error with `cause`, raised at `stage`, proves that nothing was written.
fn wrote_nothing(stage: Stage, cause: Cause) -> bool {
    match (stage, cause) {
        (Stage::NotSent, _) | (_, Cause::Unsent | Cause::Refused) => true,
        // Before any row, the statement had not completed; after one, the FATAL may have come
        // after the commit.
        (Stage::Sent { rows }, Cause::SessionEnded) => !rows,
        (Stage::Sent { .. }, Cause::Broken) => false,
    }
}

/// What `error`, raised at `stage`, says was written.
pub fn classify(error: sqlx::Error, stage: Stage) -> Failure {
    if wrote_nothing(stage, cause(&error)) {
        Failure::NothingWritten(error)
    } else {
        Failure::Unknown(error)
    }
}

/// A ride as the database holds it under its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: i64,
    pub distance: String,
    pub rider: Option<String>,
}

/// The rides under `keys`.
pub async fn find(
    db: &mut PgConnection,
    keys: &[&str],
) -> Result<HashMap<String, Stored>, sqlx::Error> {
    let rows = sqlx::query_as::<_, (String, i64, String, Option<String>)>(FIND_BY_KEYS)
        .bind(keys)
        .fetch_all(db)
        .instrument(spans::postgres("SELECT rides by idempotency_key"))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key, id, distance, rider)| {
            (
                key,
                Stored {
                    id,
                    distance,
                    rider,
                },
            )
        })
        .collect())
}

/// What is to be found out for calls that could not be answered at once.
#[derive(Debug, Clone, Copy)]
pub enum Question {
    /// Their statement's outcome is unknown; `backend` ran it.
    Unknown { backend: Backend },
    /// Their statement committed, but the rides that already held their keys could not be read.
    Taken,
}

/// Finds out what became of `calls` and answers them, trying for `RESOLVE_WITHIN`.
pub async fn resolve(pool: PgPool, calls: Vec<(NewRide, Reply)>, question: Question, waker: Waker) {
    let keys: Vec<&str> = {
        let mut keys: Vec<&str> = calls.iter().filter_map(|(r, _)| r.key.as_deref()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let backend = match question {
        Question::Unknown { backend } => Some(backend),
        Question::Taken => None,
    };
    let known = if keys.is_empty() {
        // Nothing to look up: no key can tell what became of the statement.
        Known::default()
    } else {
        look_up(&pool, &keys, backend, Instant::now() + RESOLVE_WITHIN).await
    };
    let answers = answer(&calls, &known, question);
    let committed = answers.iter().any(Result::is_ok);
    let counts = Counts::of(&answers);
    let what = match question {
        Question::Unknown { .. } => "resolved a group commit whose answer was lost",
        Question::Taken => "read the rides already under keys of a committed group commit",
    };
    tracing::warn!(
        rides = calls.len(),
        settled = known.settled,
        answered = counts.answered,
        not_written = counts.not_written,
        unknown = counts.unknown,
        refused = counts.refused,
        "{what}"
    );
    if committed {
        waker.wake();
    }
    for ((_, reply), answer) in calls.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// What the api found out about the keys.
#[derive(Debug, Default)]
struct Known {
    /// The last successful lookup.
    stored: Option<HashMap<String, Stored>>,
    /// The statement's backend is gone (always, when there is none to wait for), and the lookup
    /// was made after that: a key it lacks was never committed.
    settled: bool,
}

/// Looks `keys` up, after `backend` (if any) has ended, retrying until `deadline`.
async fn look_up(
    pool: &PgPool,
    keys: &[&str],
    backend: Option<Backend>,
    deadline: Instant,
) -> Known {
    let mut known = Known::default();
    let mut backend_gone = backend.is_none();
    let mut may_end = true;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        let attempt = async {
            let mut conn = pool.acquire().await?;
            if let (false, Some(backend)) = (backend_gone, backend) {
                backend_gone = session::settle(&mut conn, backend, &mut may_end).await?;
            }
            let stored = find(&mut conn, keys).await?;
            Ok::<_, sqlx::Error>((stored, backend_gone))
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok((stored, settled))) => {
                let all_found = keys.iter().all(|k| stored.contains_key(*k));
                known = Known {
                    stored: Some(stored),
                    settled,
                };
                if settled || all_found {
                    return known;
                }
                // The old backend is still ending: look again shortly.
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "looking up rides whose commit answer was lost failed; retrying");
            }
            Err(_) => return known,
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return known;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Each call's answer from what is known.
fn answer(
    calls: &[(NewRide, Reply)],
    known: &Known,
    question: Question,
) -> Vec<Result<Written, RideError>> {
    let empty = HashMap::new();
    let stored = known.stored.as_ref().unwrap_or(&empty);
    let settled = known.settled && known.stored.is_some();
    // A key missing after the old backend ended: its statement did not commit, so nothing of
    // the batch was written.
    let rolled_back = settled
        && calls
            .iter()
            .filter_map(|(r, _)| r.key.as_deref())
            .any(|k| !stored.contains_key(k));
    calls
        .iter()
        .map(|(ride, _)| {
            let Some(key) = ride.key.as_deref() else {
                return Err(if rolled_back {
                    RideError::BatchFailed
                } else {
                    RideError::OutcomeUnknown
                });
            };
            match (stored.get(key), question) {
                (Some(found), Question::Unknown { .. }) => {
                    check_same_ride(key, found, ride).map(|()| Written::Confirmed(found.id))
                }
                (Some(found), Question::Taken) => {
                    check_same_ride(key, found, ride).map(|()| Written::Existing(found.id))
                }
                (None, Question::Unknown { .. }) if settled => Err(RideError::NotCommitted),
                (None, Question::Taken) if settled => Err(RideError::KeyVanished(key.to_string())),
                (None, _) => Err(RideError::OutcomeUnresolved),
            }
        })
        .collect()
}

/// The answers, by kind, for the log.
#[derive(Debug, Default)]
struct Counts {
    /// With a ride.
    answered: usize,
    /// Nothing was written.
    not_written: usize,
    /// Still not known.
    unknown: usize,
    /// The key was reused for another ride, or vanished.
    refused: usize,
}

impl Counts {
    fn of(answers: &[Result<Written, RideError>]) -> Self {
        let mut counts = Self::default();
        for answer in answers {
            let count = match answer {
                Ok(_) => &mut counts.answered,
                Err(RideError::BatchFailed | RideError::NotCommitted) => &mut counts.not_written,
                Err(RideError::OutcomeUnknown | RideError::OutcomeUnresolved) => {
                    &mut counts.unknown
                }
                Err(_) => &mut counts.refused,
            };
            *count += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, error::Error as StdError, fmt, io};

    use rocket_rides_platform::telemetry::propagation::TraceContext;
    use sqlx::error::{DatabaseError, ErrorKind};
    use tokio::sync::oneshot;

    use super::*;

    fn io(kind: io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(io::Error::new(kind, "test"))
    }

    const SENT: Stage = Stage::Sent { rows: false };
    const SENT_ROWS: Stage = Stage::Sent { rows: true };
    const STAGES: [Stage; 3] = [Stage::NotSent, SENT, SENT_ROWS];

    fn unknown(e: sqlx::Error, stage: Stage) -> bool {
        matches!(classify(e, stage), Failure::Unknown(_))
    }

    #[test]
    fn a_broken_connection_after_the_statement_was_sent_is_an_unknown_outcome() {
        // sqlx reports a reset, a connection closed mid-answer (EOF) and a failed write as
        // `Error::Io`: the server may have committed before the answer was lost.
        for kind in [
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
        ] {
            assert_eq!(cause(&io(kind)), Cause::Broken);
            assert!(unknown(io(kind), SENT), "{kind:?}");
            assert!(unknown(io(kind), SENT_ROWS), "{kind:?}");
        }
        assert!(unknown(sqlx::Error::Protocol("garbled".into()), SENT));
        assert!(unknown(sqlx::Error::WorkerCrashed, SENT));
        let decode = sqlx::Error::ColumnDecode {
            index: "0".into(),
            source: "bad".into(),
        };
        assert!(unknown(decode, SENT_ROWS));
        // A database error whose severity cannot be read proves nothing.
        let foreign = sqlx::Error::Database(Box::new(Foreign));
        assert_eq!(cause(&foreign), Cause::Broken);
        assert!(unknown(foreign, SENT));
    }

    #[test]
    fn a_failure_before_the_statement_was_sent_wrote_nothing() {
        for e in [
            io(io::ErrorKind::ConnectionRefused),
            io(io::ErrorKind::UnexpectedEof),
            sqlx::Error::Protocol("garbled".into()),
            sqlx::Error::Database(Box::new(Foreign)),
        ] {
            assert!(!unknown(e, Stage::NotSent));
        }
        // Raised before anything is written, wherever they come from.
        for stage in STAGES {
            assert!(!unknown(sqlx::Error::Encode("too big".into()), stage));
            assert!(!unknown(sqlx::Error::PoolTimedOut, stage));
            assert!(!unknown(sqlx::Error::PoolClosed, stage));
        }
    }

    #[test]
    fn what_postgres_reports_decides_once_sent() {
        // An ERROR rolls the statement back, whenever it comes.
        for stage in STAGES {
            assert!(wrote_nothing(stage, Cause::Refused));
        }
        // Postgres ending the session before any row: the statement had not completed.
        assert!(wrote_nothing(SENT, Cause::SessionEnded));
        // After rows, it may have ended the session after the commit.
        assert!(!wrote_nothing(SENT_ROWS, Cause::SessionEnded));
        assert!(!wrote_nothing(SENT, Cause::Broken));
        assert!(!wrote_nothing(SENT_ROWS, Cause::Broken));
        assert!(wrote_nothing(Stage::NotSent, Cause::Broken));
    }

    /// A database error that is not Postgres'.
    #[derive(Debug)]
    struct Foreign;

    impl fmt::Display for Foreign {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("foreign")
        }
    }

    impl StdError for Foreign {}

    impl DatabaseError for Foreign {
        fn message(&self) -> &str {
            "foreign"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            None
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn call(distance: &str, key: Option<&str>, rider: Option<&str>) -> (NewRide, Reply) {
        let (reply, _) = oneshot::channel();
        let ride = NewRide {
            decimal: distance.into(),
            key: key.map(String::from),
            rider: rider.map(String::from),
            trace: TraceContext::default(),
        };
        (ride, reply)
    }

    fn known(entries: &[(&str, i64, &str, Option<&str>)], settled: bool) -> Known {
        let stored = entries
            .iter()
            .map(|&(key, id, distance, rider)| {
                let stored = Stored {
                    id,
                    distance: distance.into(),
                    rider: rider.map(String::from),
                };
                (key.to_string(), stored)
            })
            .collect();
        Known {
            stored: Some(stored),
            settled,
        }
    }

    const UNKNOWN: Question = Question::Unknown {
        backend: Backend { pid: 1, started: 1 },
    };

    #[test]
    fn a_committed_batch_is_confirmed_by_key_and_unknown_without_one() {
        let calls = [
            call("10", Some("a"), Some("r1")),
            call("10", Some("a"), Some("r1")),
            call("10", Some("a"), Some("r2")),
            call("20", Some("a"), Some("r1")),
            call("7", None, None),
        ];
        let answers = answer(&calls, &known(&[("a", 5, "10", Some("r1"))], true), UNKNOWN);
        assert!(matches!(answers[0], Ok(Written::Confirmed(5))));
        assert!(matches!(answers[1], Ok(Written::Confirmed(5))));
        assert!(matches!(answers[2], Err(RideError::RiderMismatch { .. })));
        assert!(matches!(answers[3], Err(RideError::KeyReused { .. })));
        // One key present proves nothing about a call without one: an earlier ride may hold it.
        assert!(matches!(answers[4], Err(RideError::OutcomeUnknown)));
    }

    #[test]
    fn a_key_missing_once_the_backend_ended_proves_nothing_was_written() {
        let calls = [call("10", Some("a"), None), call("7", None, None)];
        let answers = answer(&calls, &known(&[], true), UNKNOWN);
        assert!(matches!(answers[0], Err(RideError::NotCommitted)));
        assert!(matches!(answers[1], Err(RideError::BatchFailed)));
        // Before the old backend is known to have ended, a missing key proves nothing.
        let answers = answer(&calls, &known(&[], false), UNKNOWN);
        assert!(matches!(answers[0], Err(RideError::OutcomeUnresolved)));
        assert!(matches!(answers[1], Err(RideError::OutcomeUnknown)));
        // But a key found is committed, settled or not.
        let answers = answer(&calls, &known(&[("a", 9, "10", None)], false), UNKNOWN);
        assert!(matches!(answers[0], Ok(Written::Confirmed(9))));
        assert!(matches!(answers[1], Err(RideError::OutcomeUnknown)));
        // And when Postgres never answered again.
        let answers = answer(&calls, &Known::default(), UNKNOWN);
        assert!(matches!(answers[0], Err(RideError::OutcomeUnresolved)));
        assert!(matches!(answers[1], Err(RideError::OutcomeUnknown)));
        // Without any key there is nothing to look up.
        let answers = answer(&calls[1..], &Known::default(), UNKNOWN);
        assert!(matches!(answers[0], Err(RideError::OutcomeUnknown)));
    }

    #[test]
    fn taken_keys_read_later_are_existing_rides() {
        let calls = [call("10", Some("a"), None), call("3", Some("b"), None)];
        let answers = answer(
            &calls,
            &known(&[("a", 4, "10.000", None)], true),
            Question::Taken,
        );
        assert!(matches!(answers[0], Ok(Written::Existing(4))));
        assert!(matches!(&answers[1], Err(RideError::KeyVanished(k)) if k == "b"));
        let answers = answer(&calls, &Known::default(), Question::Taken);
        assert!(matches!(answers[0], Err(RideError::OutcomeUnresolved)));
    }
}
