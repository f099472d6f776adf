//! One partition stream's consumer group, in Redis's terms: create it, read new entries for a
//! member (`XREADGROUP ... >`), claim entries idle too long (`XAUTOCLAIM`), acknowledge them,
//! dead-letter them, and look at the group and its members (`XINFO`, `XPENDING`).

use std::{collections::HashMap, time::Duration};

use redis::streams::{
    StreamAutoClaimReply, StreamInfoConsumersReply, StreamInfoGroup, StreamInfoGroupsReply,
    StreamPendingCountReply, StreamReadReply,
};
use rocket_rides_log::{
    Entry, StreamId,
    stream::{BadStreamId, dead_letter_stream},
};
use rocket_rides_platform::redis_conn::RedisConnection;

use crate::config::GROUP;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered with {0}")]
    Protocol(#[from] BadStreamId),
    /// The stream or its group is gone (Redis lost its data, or someone deleted them).
    #[error("the consumer group {GROUP:?} of {0:?} does not exist")]
    Missing(String),
}

impl GroupError {
    fn of(stream: &str, e: redis::RedisError) -> Self {
        if e.code() == Some("NOGROUP") {
            Self::Missing(stream.to_string())
        } else {
            Self::Redis(e)
        }
    }
}

/// Creates the group at the stream's very start if it does not exist (creating an empty stream
/// if need be); true if it was created. Never at `$`: entries already in the stream would be
/// skipped; what the stream no longer holds comes from the archive (see `worker::catch_up`).
pub async fn create(redis: &mut RedisConnection, stream: &str) -> Result<bool, GroupError> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg(StreamId::ZERO)
        .arg("MKSTREAM")
        .query_async(redis)
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Up to `count` entries never delivered to the group, now delivered to `member`; waits up to
/// `block` for one.
pub async fn read_new(
    reader: &mut RedisConnection,
    stream: &str,
    member: &str,
    count: u32,
    block: Duration,
) -> Result<Vec<Entry>, GroupError> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(member)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(reader)
        .await
        .map_err(|e| GroupError::of(stream, e))?;
    Ok(Entry::from_read(reply)?)
}

/// Entries claimed from members (this one included) that have not acknowledged them for
/// `idle`, and the ids of pending entries the stream no longer holds (trimmed), which Redis
/// drops from the pending list.
pub struct Claimed {
    pub entries: Vec<Entry>,
    pub deleted: Vec<StreamId>,
}

/// Claims for `member` what has been pending for at least `idle`, scanning the whole pending
/// list (in pages of `count`).
pub async fn claim(
    redis: &mut RedisConnection,
    stream: &str,
    member: &str,
    idle: Duration,
    count: u32,
) -> Result<Claimed, GroupError> {
    let mut claimed = Claimed {
        entries: Vec::new(),
        deleted: Vec::new(),
    };
    let mut start = StreamId::ZERO;
    loop {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(member)
            .arg(idle.as_millis() as u64)
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(redis)
            .await
            .map_err(|e| GroupError::of(stream, e))?;
        for raw in &reply.claimed {
            claimed.entries.push(Entry::parse(raw)?);
        }
        for id in &reply.deleted_ids {
            claimed.deleted.push(id.parse()?);
        }
        start = reply.next_stream_id.parse()?;
        if start == StreamId::ZERO || claimed.entries.len() >= count as usize {
            return Ok(claimed);
        }
    }
}

/// How many times each of `member`'s pending entries from `first` to `last` was delivered.
pub async fn deliveries(
    redis: &mut RedisConnection,
    stream: &str,
    member: &str,
    first: impl redis::ToRedisArgs,
    last: impl redis::ToRedisArgs,
    count: usize,
) -> Result<HashMap<StreamId, u64>, GroupError> {
    let reply: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg(first)
        .arg(last)
        .arg(count)
        .arg(member)
        .query_async(redis)
        .await
        .map_err(|e| GroupError::of(stream, e))?;
    reply
        .ids
        .iter()
        .map(|p| Ok((p.id.parse()?, p.times_delivered as u64)))
        .collect()
}

/// Acknowledges `ids`: done, off the pending list.
pub async fn ack(
    redis: &mut RedisConnection,
    stream: &str,
    ids: &[StreamId],
) -> Result<(), GroupError> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(ids)
        .query_async::<()>(redis)
        .await
        .map_err(|e| GroupError::of(stream, e))
}

/// An entry given up on: where it was, who gave up, why.
pub struct DeadLetter<'a> {
    pub id: StreamId,
    pub deliveries: u64,
    pub reason: &'a str,
}

/// Copies `letters` to the partition's dead-letter stream and acknowledges them, atomically
/// (the dead-letter stream shares the partition's hash slot).
pub async fn dead_letter(
    redis: &mut RedisConnection,
    stream: &str,
    member: &str,
    letters: &[DeadLetter<'_>],
) -> Result<(), GroupError> {
    let dead_letters = dead_letter_stream(stream);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for letter in letters {
        pipe.cmd("XADD")
            .arg(&dead_letters)
            .arg("*")
            .arg("source_stream")
            .arg(stream)
            .arg("source_id")
            .arg(letter.id)
            .arg("group")
            .arg(GROUP)
            .arg("member")
            .arg(member)
            .arg("deliveries")
            .arg(letter.deliveries)
            .arg("error")
            .arg(letter.reason)
            .ignore();
        pipe.cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(letter.id)
            .ignore();
    }
    pipe.query_async::<()>(redis)
        .await
        .map_err(|e| GroupError::of(stream, e))
}

/// The group as `XINFO GROUPS` shows it (None if the stream has no such group).
pub async fn info(
    redis: &mut RedisConnection,
    stream: &str,
) -> Result<Option<StreamInfoGroup>, GroupError> {
    let reply: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await;
    match reply {
        Ok(reply) => Ok(reply.groups.into_iter().find(|g| g.name == GROUP)),
        Err(e) if e.to_string().contains("no such key") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the members other than `member` that were silent for `expiry` and hold nothing
/// pending (a member that comes back is added again by its next read); returns their names.
pub async fn forget_gone(
    redis: &mut RedisConnection,
    stream: &str,
    member: &str,
    expiry: Duration,
) -> Result<Vec<String>, GroupError> {
    let members: StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(GROUP)
        .query_async(redis)
        .await
        .map_err(|e| GroupError::of(stream, e))?;
    let mut gone = Vec::new();
    for m in members.consumers {
        if m.name != member && m.pending == 0 && m.idle as u128 >= expiry.as_millis() {
            forget(redis, stream, &m.name).await?;
            gone.push(m.name);
        }
    }
    Ok(gone)
}

/// Removes `member` from the group if it holds nothing pending (a clean shutdown).
pub async fn leave(
    redis: &mut RedisConnection,
    stream: &str,
    member: &str,
) -> Result<(), GroupError> {
    let pending = deliveries(redis, stream, member, "-", "+", 1).await?;
    if pending.is_empty() {
        forget(redis, stream, member).await?;
    }
    Ok(())
}

async fn forget(redis: &mut RedisConnection, stream: &str, member: &str) -> Result<(), GroupError> {
    redis::cmd("XGROUP")
        .arg("DELCONSUMER")
        .arg(stream)
        .arg(GROUP)
        .arg(member)
        .query_async::<()>(redis)
        .await
        .map_err(|e| GroupError::of(stream, e))
}
