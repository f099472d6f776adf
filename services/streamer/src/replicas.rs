//! Knowing that Redis replicas hold what the stream holds (`REDIS_WAIT_REPLICAS`).
//!
//! After writing a batch, the streamer sends `WAIT` on the connection that wrote it: `WAIT`
//! counts the replicas that acknowledged that connection's writes. Entries the streamer adopts
//! (found in the stream after a restart, a reconnect or a double send) were written on some
//! other connection, and `WAIT` proves nothing about them: depending on the Redis version, on a
//! connection that wrote nothing it is satisfied by any connected replica, however far behind.
//! So adopted entries are confirmed by replication offsets instead: once they are known to be
//! in the stream, the master's offset (`ROLE`) covers them (replication is one ordered stream of
//! everything the master applied), and they count as streamed once enough replicas have
//! acknowledged that offset.

use std::time::Duration;

use redis::{
    Value,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};
use rocket_rides_platform::redis_conn::RedisConnection;
use tokio::time::Instant;

/// How often the master is asked again while replicas catch up (they acknowledge once a second
/// by themselves, and at once when a `WAIT` asks them).
const POLL: Duration = Duration::from_millis(100);

/// What the master of a stream reports of its replication (`ROLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// The master's replication offset: everything it has applied so far lies at or before it.
    pub offset: i64,
    /// Each connected replica's acknowledged offset.
    pub replicas: Vec<i64>,
}

impl Replication {
    /// Parses a `ROLE` reply; a node that is not a master is an error (the stream's slot moved,
    /// or the URL names a replica).
    pub fn parse(reply: &Value) -> Result<Self, String> {
        let Value::Array(items) = reply else {
            return Err(format!("ROLE answered {reply:?}"));
        };
        let role = items.first().and_then(text).unwrap_or_default();
        if role != "master" {
            return Err(format!(
                "the node holding the stream is a {role:?}, not a master: point REDIS_URL at \
                 the master (or at the cluster)"
            ));
        }
        let offset = items
            .get(1)
            .and_then(integer)
            .ok_or_else(|| format!("ROLE gave no offset: {reply:?}"))?;
        let replicas = match items.get(2) {
            Some(Value::Array(replicas)) => replicas
                .iter()
                .map(|replica| match replica {
                    Value::Array(fields) => fields.get(2).and_then(integer),
                    _ => None,
                })
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| format!("ROLE gave an unreadable replica: {reply:?}"))?,
            _ => Vec::new(),
        };
        Ok(Self { offset, replicas })
    }

    /// How many replicas have acknowledged everything up to `offset`.
    pub fn holding(&self, offset: i64) -> u32 {
        self.replicas
            .iter()
            .filter(|&&acked| acked >= offset)
            .count() as u32
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// `ROLE` of the master holding `key`.
pub async fn role(redis: &mut RedisConnection, key: &str) -> redis::RedisResult<Replication> {
    let cmd = redis::cmd("ROLE");
    let reply: Value = match redis {
        RedisConnection::Node(conn) => cmd.query_async(conn).await?,
        RedisConnection::Cluster(conn) => {
            let route = Route::with_key(key, SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            conn.route_command(cmd, routing).await?
        }
    };
    Replication::parse(&reply).map_err(|reason| {
        redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "ROLE", reason))
    })
}

/// Waits (up to `timeout`) until `wanted` replicas of the master holding `key` hold everything
/// that master holds now; returns how many do. For entries known to be in the stream, whoever
/// wrote them.
pub async fn confirm_held(
    redis: &mut RedisConnection,
    key: &str,
    wanted: u32,
    timeout: Duration,
) -> redis::RedisResult<u32> {
    let deadline = Instant::now() + timeout;
    let since = role(redis, key).await?.offset;
    // Only a nudge, not the proof: where WAIT counts this connection's commands, it asks the
    // replicas to acknowledge at once instead of within the second.
    redis
        .wait_for_replicas(key, wanted, timeout.min(POLL * 5))
        .await?;
    loop {
        let held = role(redis, key).await?.holding(since);
        if held >= wanted || Instant::now() >= deadline {
            return Ok(held);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn master(offset: i64, replicas: &[i64]) -> Value {
        Value::Array(vec![
            bulk("master"),
            Value::Int(offset),
            Value::Array(
                replicas
                    .iter()
                    .map(|o| {
                        Value::Array(vec![bulk("127.0.0.1"), bulk("7001"), bulk(&o.to_string())])
                    })
                    .collect(),
            ),
        ])
    }

    #[test]
    fn a_replica_holds_the_entries_once_it_acknowledged_the_masters_offset() {
        let role = Replication::parse(&master(900, &[850, 900, 1200])).unwrap();
        assert_eq!(role.offset, 900);
        // Offsets taken once the entries were known present: a replica at 850 may lack them.
        assert_eq!(role.holding(900), 2);
        assert_eq!(role.holding(1000), 1);
        // A connected replica that acknowledged nothing since proves nothing (what a WAIT on a
        // connection that wrote nothing may count).
        let lagging = Replication::parse(&master(900, &[0])).unwrap();
        assert_eq!(lagging.holding(900), 0);
        assert_eq!(Replication::parse(&master(5, &[])).unwrap().holding(5), 0);
    }

    #[test]
    fn only_a_master_answers_for_its_replicas() {
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(6379),
            bulk("connected"),
            Value::Int(100),
        ]);
        let err = Replication::parse(&replica).unwrap_err();
        assert!(err.contains("not a master"), "{err}");
        assert!(Replication::parse(&Value::Nil).is_err());
    }
}
