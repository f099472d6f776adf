//! `consumers`: who reads the log and how far behind each is. Checkpointed consumers (their
//! positions are in Postgres) and Redis consumer groups (as Redis sees them), per
//! partition: position, lag in entries and in seconds (the age of the oldest record not yet
//! done), pending entries.

use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use rocket_rides_log::StreamId;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    Log,
    print::{Printer, cell, table},
};

const CHECKPOINTS: &str = "
    SELECT c.name, c.partition, c.last_seq, p.last_seq, COALESCE(c.owner, ''),
           c.lease_until > now(), extract(epoch FROM c.updated_at)::float8
    FROM consumer_positions c JOIN log_partitions p USING (partition)
    WHERE c.stream = $1 AND c.kind = 'checkpoint' ORDER BY c.name, c.partition";

/// Seconds since the record at `seq` of partition `p` was written, if the archive has it.
async fn age(pool: &PgPool, p: i32, seq: i64) -> anyhow::Result<f64> {
    let age: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM log_records
         WHERE partition = $1 AND seq = $2",
    )
    .bind(p)
    .bind(seq)
    .fetch_optional(pool)
    .await?;
    Ok(age.unwrap_or(0.0).max(0.0))
}

pub async fn run(log: &Log, out: &Printer) -> anyhow::Result<()> {
    let rows: Vec<(String, i32, i64, i64, String, bool, f64)> = sqlx::query_as(CHECKPOINTS)
        .bind(&log.stream)
        .fetch_all(&log.pool)
        .await?;
    let mut checkpointed = Vec::new();
    for (name, p, at, head, owner, leased, updated) in rows {
        let lag = (head - at).max(0);
        let seconds = if lag > 0 {
            age(&log.pool, p, at + 1).await?
        } else {
            0.0
        };
        checkpointed.push(json!({
            "consumer": name, "partition": p, "last_seq": at, "head_seq": head,
            "lag_entries": lag, "lag_seconds": seconds,
            "owner": if leased { Value::from(owner) } else { Value::Null },
            "updated_at_unix": updated,
        }));
    }
    let mut redis = log.connect()?;
    let mut groups = Vec::new();
    for p in 0..log.partitions {
        let key = log.stream_key(p);
        let info: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut redis)
            .await;
        let Ok(info) = info else { continue }; // no stream yet
        for g in info.groups {
            let pending: StreamPendingReply = redis::cmd("XPENDING")
                .arg(&key)
                .arg(&g.name)
                .query_async(&mut redis)
                .await?;
            let delivered = g.last_delivered_id.parse::<StreamId>()?.log_seq();
            let oldest = match &pending {
                StreamPendingReply::Data(d) => d.start_id.parse::<StreamId>()?.log_seq(),
                _ => delivered + 1,
            };
            let lag = g.pending + g.lag.unwrap_or(0);
            let seconds = if lag > 0 {
                age(&log.pool, p, oldest).await?
            } else {
                0.0
            };
            groups.push(json!({
                "group": g.name, "partition": p, "stream": key, "members": g.consumers,
                "last_delivered_id": g.last_delivered_id, "pending": g.pending,
                "lag_entries": lag, "lag_seconds": seconds,
            }));
        }
    }
    let doc = json!({"stream": log.stream, "checkpointed": checkpointed, "groups": groups});
    out.document(&doc, || {
        let seconds = |v: &Value| format!("{:.1}", v.as_f64().unwrap_or(0.0));
        let mut rows = vec![
            [
                "KIND",
                "NAME",
                "PARTITION",
                "POSITION",
                "LAG",
                "LAG S",
                "PENDING",
                "OWNER/MEMBERS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for c in &checkpointed {
            rows.push(vec![
                "checkpoint".into(),
                cell(&c["consumer"]),
                cell(&c["partition"]),
                format!("seq {}", c["last_seq"]),
                cell(&c["lag_entries"]),
                seconds(&c["lag_seconds"]),
                "-".into(),
                cell(&c["owner"]),
            ]);
        }
        for g in &groups {
            rows.push(vec![
                "group".into(),
                cell(&g["group"]),
                cell(&g["partition"]),
                cell(&g["last_delivered_id"]),
                cell(&g["lag_entries"]),
                seconds(&g["lag_seconds"]),
                cell(&g["pending"]),
                format!("{} members", g["members"]),
            ]);
        }
        let mut lines = table(&rows);
        lines[0] = out.bold(&lines[0]);
        lines
    });
    Ok(())
}
