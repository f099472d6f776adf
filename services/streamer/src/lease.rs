//! Leadership of a partition as a lease in its `log_partitions` row, fenced by the epoch. A leader renews its lease
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
    pub partition: i32,
    pub holder: String,
    pub epoch: i64,
    pub server: String,
}

/// Takes the lease if it is free or expired, with an epoch above both the head's and
/// `seen_epoch` (the newest epoch in the stream), so a Postgres that went back in time can never
/// hand out an epoch that the stream has already seen.
pub async fn acquire(
    pool: &PgPool,
    partition: i32,
    holder: &str,
    seen_epoch: i64,
) -> Result<Option<Lease>, sqlx::Error> {
    let taken: Option<(i64, String)> = sqlx::query_as(
        "UPDATE log_partitions SET
            leader = $1,
            lease_until = now() + make_interval(secs => $2),
            epoch = GREATEST(epoch, $3) + 1
         WHERE partition = $4 AND (leader IS NULL OR leader = $1 OR lease_until < now())
         RETURNING epoch, pg_postmaster_start_time()::text",
    )
    .bind(holder)
    .bind(LEASE.as_secs_f64())
    .bind(seen_epoch)
    .bind(partition)
    .fetch_optional(pool)
    .await?;
    Ok(taken.map(|(epoch, server)| Lease {
        partition,
        holder: holder.to_string(),
        epoch,
        server,
    }))
}

/// Gives the lease up (on shutdown), so a standby need not wait for it to expire.
pub async fn release(pool: &PgPool, lease: &Lease) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE log_partitions SET leader = NULL, lease_until = '-infinity'
         WHERE partition = $3 AND leader = $1 AND epoch = $2",
    )
    .bind(&lease.holder)
    .bind(lease.epoch)
    .bind(lease.partition)
    .execute(pool)
    .await?;
    Ok(())
}
