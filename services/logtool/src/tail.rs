//! `tail`: follows partitions live. One blocking XREAD per partition, each on its own
//! connection (a Redis Cluster keeps partitions in different slots, where one XREAD over all
//! of them would be refused), merged into one output in arrival order. A Redis outage or
//! failover is waited out: each partition goes on from the last entry it printed.

use std::time::Duration;

use anyhow::Context;
use redis::streams::StreamReadReply;
use rocket_rides_log::{Entry, StreamId, stream};
use tokio::sync::mpsc;

use crate::{Log, print::Printer};

const BLOCK: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_secs(1);

pub async fn run(
    log: &Log,
    out: &Printer,
    only: Option<i32>,
    from: Option<i64>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<(i32, Vec<Entry>)>>(64);
    for p in log.partitions(only)? {
        let key = log.stream_key(p);
        let mut redis = log.redis.connect(BLOCK + Duration::from_secs(5))?;
        let mut after = match from {
            Some(seq) => StreamId::of_seq(seq - 1),
            None => stream::last_id(&mut redis, &key)
                .await
                .with_context(|| format!("cannot read {key:?} from Redis (REDIS_URL)"))?,
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(after)
                    .query_async(&mut redis)
                    .await;
                let entries = match read {
                    Ok(reply) => Entry::from_read(reply).map_err(anyhow::Error::from),
                    Err(e) => {
                        eprintln!("rocket-rides-log: reading {key:?}: {e}; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                if let Ok(entries) = &entries
                    && let Some(last) = entries.last()
                {
                    after = last.id;
                }
                let failed = entries.is_err();
                if tx.send(entries.map(|e| (p, e))).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(tx);
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next {
            Some(Ok((p, entries))) => entries.iter().for_each(|e| out.entry(p, e)),
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}
