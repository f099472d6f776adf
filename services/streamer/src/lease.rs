//! Leadership as a lease in the log's head row, fenced by the epoch. A leader renews its lease
//! with every numbering statement; a standby takes over once the lease has run out (a leader
//! that died, hung, or lost its network), and takes a new epoch. Everything a leader writes to
//! Postgres is conditional on its epoch still being current, so a frozen leader that wakes up
//! finds itself fenced and can only re-send records that are already numbered, which Redis
//! refuses or which match the archive exactly.

use std::time::Duration;

use sqlx::PgPool;

/// How long a lease lasts without renewal: the time a standby waits for a dead leader.
pub const LEASE: Duration = Duration::from_secs(10);

/// This replica's leadership, while it lasts. It also ends when Postgres restarts (`server`
/// is the postmaster's start time): a restart may be a restore or a failover to an older
/// state, so the next leadership takes a new epoch.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    pub server: String,
}

/// Takes the lease if it is free or expired, with an epoch above both the head's and
/// `seen_epoch` (the newest epoch in the stream), so a Postgres that went back in time can never
/// hand out an epoch that the stream has already seen.
pub async fn acquire(
    pool: &PgPool,
    holder: &str,
    seen_epoch: i64,
) -> Result<Option<Lease>, sqlx::Error> {
    let taken: Option<(i64, String)> = sqlx::query_as(
        "UPDATE log_head SET
            leader = $1,
            lease_until = now() + make_interval(secs => $2),
            epoch = GREATEST(epoch, $3) + 1
         WHERE leader IS NULL OR leader = $1 OR lease_until < now()
         RETURNING epoch, pg_postmaster_start_time()::text",
    )
    .bind(holder)
    .bind(LEASE.as_secs_f64())
    .bind(seen_epoch)
    .fetch_optional(pool)
    .await?;
    Ok(taken.map(|(epoch, server)| Lease {
        holder: holder.to_string(),
        epoch,
        server,
    }))
}

/// Gives the lease up (on shutdown), so a standby need not wait for it to expire.
pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE log_head SET leader = NULL, lease_until = '-infinity'
         WHERE leader = $1 AND epoch = $2",
    )
    .bind(&lease.holder)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(())
}
