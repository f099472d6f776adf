//! Groups of processes sharing a log's partitions: the streamer replicas, or the instances of
//! one logical consumer. Each member renews its row in `log_members` every `HEARTBEAT`; the
//! live members, in name order, share the partitions round-robin (partition `p` is member
//! `p mod n`'s), so every member computes the same assignment without talking to the others.
//! The assignment only says who should take a partition: ownership itself is a lease, so two
//! members that briefly disagree (one has not seen a join yet) can never both work on one.

use std::{collections::BTreeSet, time::Duration};

use rocket_rides_platform::shutdown::CancellationToken;
use sqlx::PgPool;
use tokio::sync::watch;

/// How often a member renews its row and recomputes its share.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A member not renewed for this long has left (crashed, frozen, cut off).
pub const MEMBER_TTL: Duration = Duration::from_secs(10);

const RENEW: &str = "
    INSERT INTO log_members (group_name, member, seen_until)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (group_name, member) DO UPDATE SET seen_until = EXCLUDED.seen_until";
const LIVE: &str = "
    SELECT member FROM log_members WHERE group_name = $1 AND seen_until > now() ORDER BY member";
/// Rows of members gone for an hour are of no use to anyone.
const FORGET: &str = "DELETE FROM log_members WHERE seen_until < now() - interval '1 hour'";
const LEAVE: &str = "DELETE FROM log_members WHERE group_name = $1 AND member = $2";

/// The partitions out of `partitions` that member `index` of `members` should own.
pub fn share(index: usize, members: usize, partitions: i32) -> BTreeSet<i32> {
    (0..partitions)
        .filter(|p| *p as usize % members.max(1) == index)
        .collect()
}

/// Keeps `member` in `group` until `cancel` (then leaves it, so the others take over at once),
/// publishing its share of `partitions` on `mine`. While Postgres is unreachable the last share
/// stands; the leases, which cannot be renewed either, decide.
pub async fn run(
    pool: PgPool,
    group: String,
    member: String,
    partitions: i32,
    mine: watch::Sender<BTreeSet<i32>>,
    cancel: CancellationToken,
) {
    loop {
        let beaten = tokio::select! {
            _ = cancel.cancelled() => break,
            beaten = beat(&pool, &group, &member) => beaten,
        };
        match beaten {
            Ok(live) => {
                let index = live.iter().position(|m| *m == member).unwrap_or(0);
                let share = share(index, live.len(), partitions);
                mine.send_if_modified(|was| {
                    let changed = *was != share;
                    if changed {
                        tracing::info!(members = live.len(), partitions = ?share, "partitions shared out");
                        *was = share;
                    }
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "renewing group membership failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    // Leaving is a courtesy: shutdown does not wait long for it.
    let leave = sqlx::query(LEAVE).bind(&group).bind(&member).execute(&pool);
    let left = tokio::time::timeout(Duration::from_secs(1), leave).await;
    if let Ok(Err(e)) = left {
        tracing::debug!(error = %e, "could not leave the group; it forgets this member after its TTL");
    }
}

/// Renews the member's row; returns the group's live members in order.
async fn beat(pool: &PgPool, group: &str, member: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query(RENEW)
        .bind(group)
        .bind(member)
        .bind(MEMBER_TTL.as_secs_f64())
        .execute(pool)
        .await?;
    sqlx::query(FORGET).execute(pool).await?;
    sqlx::query_scalar(LIVE).bind(group).fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_member_and_shares_differ_by_at_most_one() {
        for members in 1..=5 {
            for partitions in 1..=9 {
                let shares: Vec<BTreeSet<i32>> = (0..members)
                    .map(|i| share(i, members, partitions))
                    .collect();
                let all: Vec<i32> = shares.iter().flatten().copied().collect();
                assert_eq!(all.len(), partitions as usize);
                assert_eq!(
                    all.iter().collect::<BTreeSet<_>>().len(),
                    partitions as usize
                );
                let sizes: Vec<usize> = shares.iter().map(BTreeSet::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{sizes:?}");
            }
        }
    }
}
