//! `info`: the log and each partition, as Postgres (head, archive) and Redis (stream) see it.

use rocket_rides_log::{archive, stream};
use serde_json::{Value, json};

use crate::{
    Log,
    print::{Printer, cell as text, table},
};

/// Each partition's state in Postgres, with the archive's range.
const PARTITIONS: &str = "
    SELECT p.partition, p.epoch, p.last_seq, p.streamed_seq, COALESCE(p.leader, ''),
           p.lease_until > now(),
           (SELECT min(seq) FROM log_records r WHERE r.partition = p.partition AND r.seq IS NOT NULL),
           (SELECT count(*) FROM log_records r WHERE r.partition = p.partition AND r.seq IS NULL)
    FROM log_partitions p ORDER BY p.partition";

type Row = (i32, i64, i64, i64, String, bool, Option<i64>, i64);

pub async fn run(log: &Log, out: &Printer) -> anyhow::Result<()> {
    let (log_id, claimed_by, _) = archive::log(&log.pool).await?;
    let rows: Vec<Row> = sqlx::query_as(PARTITIONS).fetch_all(&log.pool).await?;
    let mut redis = log.connect()?;
    let mut partitions = Vec::new();
    for (p, epoch, last_seq, streamed_seq, leader, leased, archive_first, staged) in rows {
        let key = log.stream_key(p);
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await?;
        let first = stream::read_first(&mut redis, &key).await?;
        let top = stream::last_id(&mut redis, &key).await?;
        partitions.push(json!({
            "partition": p,
            "stream": key,
            "length": length,
            "first_seq": first,
            "last_seq": (length > 0).then(|| top.log_seq()),
            "last_stream_id": top.to_string(),
            "epoch": epoch,
            "numbered_seq": last_seq,
            "streamed_seq": streamed_seq,
            "leader": if leased { Value::from(leader) } else { Value::Null },
            "archive_first_seq": archive_first,
            "archive_last_seq": archive_first.map(|_| last_seq),
            "staged": staged,
        }));
    }
    let doc = json!({
        "log_id": log_id,
        "stream": log.stream,
        "claimed_by_stream": claimed_by,
        "partitions": partitions,
    });
    out.document(&doc, || {
        let mut lines = vec![format!(
            "log {}  stream {}  {} partitions",
            out.bold(&log_id),
            out.bold(&log.stream),
            log.partitions
        )];
        let mut rows = vec![
            [
                "PARTITION",
                "STREAM",
                "LENGTH",
                "FIRST",
                "LAST",
                "EPOCH",
                "NUMBERED",
                "STREAMED",
                "ARCHIVE",
                "STAGED",
                "LEADER",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for p in &partitions {
            let archive = match (&p["archive_first_seq"], &p["archive_last_seq"]) {
                (Value::Null, _) => "-".to_string(),
                (a, b) => format!("{}..{}", text(a), text(b)),
            };
            rows.push(vec![
                text(&p["partition"]),
                text(&p["stream"]),
                text(&p["length"]),
                text(&p["first_seq"]),
                text(&p["last_seq"]),
                text(&p["epoch"]),
                text(&p["numbered_seq"]),
                text(&p["streamed_seq"]),
                archive,
                text(&p["staged"]),
                text(&p["leader"]),
            ]);
        }
        lines.extend(table(&rows));
        lines
    });
    Ok(())
}
