//! A group-commit writer's own Postgres session, kept across batches, and which server process
//! (backend) serves it. When the connection breaks after a statement was sent, the statement's
//! backend may still be running it, and may still commit it: looking the rides up from another
//! session proves nothing until that backend is gone. `settle` ends it (or waits for it to end),
//! after which its transaction is over, committed or rolled back, and what it wrote is readable.

use std::time::{Duration, Instant};

use rocket_rides_platform::telemetry::spans;
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tracing::Instrument;

/// A backend, by process id and start time (a process id alone may be reused by a later backend,
/// or belong to another server after a failover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    /// `backend_start` in microseconds since the epoch.
    pub started: i64,
}

/// The session's own backend. `pg_stat_get_activity(pid)` reads one backend's entry only.
const IDENTIFY: &str = "
    SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
    FROM pg_stat_get_activity(pg_backend_pid())";

/// Ends the backend if it still runs; a row while it does.
const TERMINATE: &str = "
    SELECT pg_terminate_backend(pid)
    FROM pg_stat_get_activity($1)
    WHERE (extract(epoch FROM backend_start) * 1000000)::int8 = $2";

/// A row while the backend still runs (when this role may not end it).
const PROBE: &str = "
    SELECT true
    FROM pg_stat_get_activity($1)
    WHERE (extract(epoch FROM backend_start) * 1000000)::int8 = $2";

/// SQLSTATE insufficient_privilege: the backend belongs to a role this one may not signal.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

pub struct Session {
    pool: PgPool,
    kept: Option<Kept>,
}

struct Kept {
    conn: PoolConnection<Postgres>,
    backend: Backend,
    used: Instant,
}

impl Session {
    /// Idle longer than this, and the connection is tested again before use, so a Postgres
    /// restart while idle costs no failed statement.
    const IDLE: Duration = Duration::from_secs(1);

    pub fn new(pool: PgPool) -> Self {
        Self { pool, kept: None }
    }

    /// The kept connection (tested again if it sat idle), or a new one from the pool; and its
    /// backend.
    pub async fn get(&mut self) -> Result<(&mut PgConnection, Backend), sqlx::Error> {
        if let Some(kept) = &mut self.kept
            && kept.used.elapsed() > Self::IDLE
        {
            // Asking who it is tests it, in one round trip, like the pool's own ping.
            let alive = matches!(identify(&mut kept.conn).await, Ok(b) if b == kept.backend);
            if !alive {
                self.kept = None;
            }
        }
        if self.kept.is_none() {
            let mut conn = self.pool.acquire().await?;
            let backend = identify(&mut conn).await?;
            self.kept = Some(Kept {
                conn,
                backend,
                used: Instant::now(),
            });
        }
        let kept = self.kept.as_mut().expect("a connection was just kept");
        kept.used = Instant::now();
        Ok((&mut kept.conn, kept.backend))
    }

    /// Gives the connection back after a failed statement; the pool closes it if it is broken.
    pub fn give_back(&mut self) {
        self.kept = None;
    }

    /// Closes the connection instead of giving it back: its backend is about to be ended, so
    /// nobody else may use it.
    pub fn discard(&mut self) {
        if let Some(mut kept) = self.kept.take() {
            kept.conn.close_on_drop();
        }
    }
}

async fn identify(conn: &mut PgConnection) -> Result<Backend, sqlx::Error> {
    let (pid, started) = sqlx::query_as::<_, (i32, i64)>(IDENTIFY)
        .fetch_one(conn)
        .instrument(spans::postgres("SELECT the session's backend"))
        .await?;
    Ok(Backend { pid, started })
}

/// Whether `backend` has ended, asking it to end if it has not (or only looking, once this role
/// turned out not to be allowed to end it: then `may_end` becomes false).
pub async fn settle(
    conn: &mut PgConnection,
    backend: Backend,
    may_end: &mut bool,
) -> Result<bool, sqlx::Error> {
    let probe = |sql| sqlx::query(sql).bind(backend.pid).bind(backend.started);
    if *may_end {
        match probe(TERMINATE)
            .fetch_optional(&mut *conn)
            .instrument(spans::postgres("SELECT pg_terminate_backend"))
            .await
        {
            Ok(running) => return Ok(running.is_none()),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::warn!(
                    pid = backend.pid,
                    "this role may not end the backend of a broken session; waiting for it to end by itself"
                );
                *may_end = false;
            }
            Err(e) => return Err(e),
        }
    }
    let running = probe(PROBE)
        .fetch_optional(conn)
        .instrument(spans::postgres("SELECT pg_stat_get_activity"))
        .await?;
    Ok(running.is_none())
}
