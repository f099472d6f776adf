//! One partition stream's consumer group, in Redis's terms: create it at a position, move it,
//! read new entries for a member (`XREADGROUP ... >`), claim entries idle too long
//! (`XAUTOCLAIM`), acknowledge them, dead-letter them, and look at the group and its members
//! (`XINFO`, `XPENDING`). Where the group may start or move is `group_reader`'s business.

use std::{collections::HashMap, time::Duration};

use redis::streams::{
    StreamAutoClaimReply, StreamInfoConsumersReply, StreamInfoGroup, StreamInfoGroupsReply,
    StreamPendingCountReply, StreamPendingReply, StreamReadReply,
};
use rocket_rides_platform::redis_conn::RedisConnection;

use crate::{
    Entry, StreamId,
    stream::{BadStreamId, add_dead_letter},
};

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered with {0}")]
    Protocol(#[from] BadStreamId),
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The stream or its group is gone (Redis lost its data, or someone deleted them).
    #[error("the consumer group {group:?} of {stream:?} does not exist")]
    Missing { stream: String, group: String },
}

/// Entries claimed from members that have not acknowledged them for `idle`, and the ids of
/// pending entries the stream no longer holds, which Redis drops from the pending list.
pub struct Claimed {
    pub entries: Vec<Entry>,
    pub deleted: Vec<StreamId>,
}

/// An entry given up on: where it was, who gave up, why.
pub struct DeadLetter<'a> {
    pub id: StreamId,
    pub deliveries: u64,
    pub reason: &'a str,
}

/// Where the group stands in Redis: the last entry delivered, and the oldest still pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub last_delivered: i64,
    pub oldest_pending: Option<i64>,
    pub pending: u64,
    /// Entries not yet delivered, when Redis can tell.
    pub lag: Option<u64>,
}

impl Standing {
    /// The seq up to which every entry was delivered and acknowledged.
    pub fn done(&self) -> i64 {
        match self.oldest_pending {
            Some(oldest) => (oldest - 1).min(self.last_delivered),
            None => self.last_delivered,
        }
    }
}

/// The consumer groups of `stream`, by name, with their last delivered seq.
pub async fn groups_of(
    redis: &mut RedisConnection,
    stream: &str,
) -> Result<Vec<(String, i64)>, GroupError> {
    let reply: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await;
    let groups = match reply {
        Ok(reply) => reply.groups,
        Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    groups
        .into_iter()
        .map(|g| Ok((g.name, g.last_delivered_id.parse::<StreamId>()?.log_seq())))
        .collect()
}

/// A consumer group of one partition's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub stream: String,
    pub name: String,
}

impl Group {
    fn error(&self, e: redis::RedisError) -> GroupError {
        if e.code() == Some("NOGROUP") {
            GroupError::Missing {
                stream: self.stream.clone(),
                group: self.name.clone(),
            }
        } else {
            GroupError::Redis(e)
        }
    }

    /// Creates the group with everything up to `at` delivered, if it does not exist (creating
    /// an empty stream if need be); true if it was created.
    pub async fn create(
        &self,
        redis: &mut RedisConnection,
        at: StreamId,
    ) -> Result<bool, GroupError> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(at)
            .arg("MKSTREAM")
            .query_async(redis)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the group's last-delivered id to `at`: entries after it are delivered (again).
    pub async fn set_id(
        &self,
        redis: &mut RedisConnection,
        at: StreamId,
    ) -> Result<(), GroupError> {
        redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(at)
            .query_async::<()>(redis)
            .await
            .map_err(|e| self.error(e))
    }

    /// Up to `count` entries never delivered to the group, now delivered to `member`; waits up
    /// to `block` for one.
    pub async fn read_new(
        &self,
        reader: &mut RedisConnection,
        member: &str,
        count: u32,
        block: Duration,
    ) -> Result<Vec<Entry>, GroupError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.name)
            .arg(member)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(reader)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Entry::from_read(reply)?)
    }

    /// Claims for `member` what has been pending for at least `idle`, scanning the whole
    /// pending list (in pages of `count`).
    pub async fn claim(
        &self,
        redis: &mut RedisConnection,
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
                .arg(&self.stream)
                .arg(&self.name)
                .arg(member)
                .arg(idle.as_millis() as u64)
                .arg(start)
                .arg("COUNT")
                .arg(count)
                .query_async(redis)
                .await
                .map_err(|e| self.error(e))?;
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

    /// `member`'s own pending entries (it restarted, or halted on them), taken again now;
    /// those the stream no longer holds come back as `deleted` (Redis drops them from the
    /// pending list).
    pub async fn read_own(
        &self,
        redis: &mut RedisConnection,
        member: &str,
        count: u32,
    ) -> Result<Claimed, GroupError> {
        let pending = self
            .deliveries(redis, member, "-", "+", count as usize)
            .await?;
        let mut claimed = Claimed {
            entries: Vec::new(),
            deleted: Vec::new(),
        };
        if pending.is_empty() {
            return Ok(claimed);
        }
        let mut ids: Vec<StreamId> = pending.into_keys().collect();
        ids.sort();
        let reply: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(member)
            .arg(0)
            .arg(&ids)
            .query_async(redis)
            .await
            .map_err(|e| self.error(e))?;
        for raw in &reply.ids {
            claimed.entries.push(Entry::parse(raw)?);
        }
        claimed.deleted = ids
            .into_iter()
            .filter(|id| !claimed.entries.iter().any(|e| e.id == *id))
            .collect();
        Ok(claimed)
    }

    /// How many times each of `member`'s pending entries from `first` to `last` was delivered.
    pub async fn deliveries(
        &self,
        redis: &mut RedisConnection,
        member: &str,
        first: impl redis::ToRedisArgs,
        last: impl redis::ToRedisArgs,
        count: usize,
    ) -> Result<HashMap<StreamId, u64>, GroupError> {
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(first)
            .arg(last)
            .arg(count)
            .arg(member)
            .query_async(redis)
            .await
            .map_err(|e| self.error(e))?;
        reply
            .ids
            .iter()
            .map(|p| Ok((p.id.parse()?, p.times_delivered as u64)))
            .collect()
    }

    /// Acknowledges `ids`: done, off the pending list.
    pub async fn ack(
        &self,
        redis: &mut RedisConnection,
        ids: &[StreamId],
    ) -> Result<(), GroupError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(ids)
            .query_async::<()>(redis)
            .await
            .map_err(|e| self.error(e))
    }

    /// Copies `letters` to the partition's dead-letter stream and acknowledges them,
    /// atomically (the dead-letter stream shares the partition's hash slot).
    pub async fn dead_letter(
        &self,
        redis: &mut RedisConnection,
        member: &str,
        letters: &[DeadLetter<'_>],
    ) -> Result<(), GroupError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for letter in letters {
            let by = [
                ("group", self.name.clone()),
                ("member", member.to_string()),
                ("deliveries", letter.deliveries.to_string()),
            ];
            add_dead_letter(&mut pipe, &self.stream, letter.id, &by, letter.reason);
            pipe.cmd("XACK")
                .arg(&self.stream)
                .arg(&self.name)
                .arg(letter.id)
                .ignore();
        }
        pipe.query_async::<()>(redis)
            .await
            .map_err(|e| self.error(e))
    }

    /// The group as `XINFO GROUPS` shows it (None if the stream has no such group).
    pub async fn info(
        &self,
        redis: &mut RedisConnection,
    ) -> Result<Option<StreamInfoGroup>, GroupError> {
        let reply: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(redis)
            .await;
        match reply {
            Ok(reply) => Ok(reply.groups.into_iter().find(|g| g.name == self.name)),
            Err(e) if e.to_string().contains("no such key") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the group stands (None if Redis has no such group).
    pub async fn standing(
        &self,
        redis: &mut RedisConnection,
    ) -> Result<Option<Standing>, GroupError> {
        let Some(info) = self.info(redis).await? else {
            return Ok(None);
        };
        let pending: StreamPendingReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.name)
            .query_async(redis)
            .await
            .map_err(|e| self.error(e))?;
        let oldest_pending = match pending {
            StreamPendingReply::Data(data) => Some(data.start_id.parse::<StreamId>()?.log_seq()),
            _ => None,
        };
        Ok(Some(Standing {
            last_delivered: info.last_delivered_id.parse::<StreamId>()?.log_seq(),
            oldest_pending,
            pending: info.pending as u64,
            lag: info.lag.map(|l| l as u64),
        }))
    }

    /// Removes the members other than `member` that were silent for `expiry` and hold nothing
    /// pending (a member that comes back is added again by its next read); returns their names.
    pub async fn forget_gone(
        &self,
        redis: &mut RedisConnection,
        member: &str,
        expiry: Duration,
    ) -> Result<Vec<String>, GroupError> {
        let members: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(&self.name)
            .query_async(redis)
            .await
            .map_err(|e| self.error(e))?;
        let mut gone = Vec::new();
        for m in members.consumers {
            if m.name != member && m.pending == 0 && m.idle as u128 >= expiry.as_millis() {
                self.forget(redis, &m.name).await?;
                gone.push(m.name);
            }
        }
        Ok(gone)
    }

    /// Removes `member` from the group if it holds nothing pending (a clean shutdown).
    pub async fn leave(&self, redis: &mut RedisConnection, member: &str) -> Result<(), GroupError> {
        let pending = self.deliveries(redis, member, "-", "+", 1).await?;
        if pending.is_empty() {
            self.forget(redis, member).await?;
        }
        Ok(())
    }

    async fn forget(&self, redis: &mut RedisConnection, member: &str) -> Result<(), GroupError> {
        redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(&self.stream)
            .arg(&self.name)
            .arg(member)
            .query_async::<()>(redis)
            .await
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_stops_before_the_oldest_pending_entry() {
        let at = |last_delivered, oldest_pending| Standing {
            last_delivered,
            oldest_pending,
            pending: 0,
            lag: None,
        };
        assert_eq!(at(10, None).done(), 10);
        assert_eq!(at(10, Some(4)).done(), 3);
        assert_eq!(at(10, Some(11)).done(), 10);
    }
}
