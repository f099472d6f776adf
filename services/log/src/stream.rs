//! The log's stream: entry ids ("<milliseconds>-<sequence>", ordered as Redis orders them),
//! the dead-letter stream's name, and entries as read back with XREAD/XRANGE.

use std::{fmt, str::FromStr};

use redis::{
    aio::ConnectionLike,
    streams::{StreamId as RawEntry, StreamRangeReply, StreamReadReply},
};

use crate::record::{LogRecord, RecordError};

/// The stream the services use unless `STREAM_NAME` says otherwise.
pub const DEFAULT_STREAM: &str = "rocket-rides-log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Before every entry: where a new consumer starts reading.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The id of the log record numbered `seq`.
    pub fn of_seq(seq: i64) -> Self {
        Self {
            ms: seq.max(0) as u64,
            seq: 0,
        }
    }

    /// The log position this id stands for (entries are `<seq>-0`).
    pub fn log_seq(self) -> i64 {
        i64::try_from(self.ms).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream id (expected <ms>-<seq>)")]
pub struct BadStreamId(pub String);

impl FromStr for StreamId {
    type Err = BadStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStreamId(s.to_string());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for StreamId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self)
    }
}

/// Where a consumer sets aside entries it cannot parse, so they are kept for inspection and
/// never block the log.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}:dead-letter")
}

/// Queues the XADD that copies entry `source_id` of `stream` to its dead-letter stream, with
/// who gave up on it (`by`: field and value pairs) and why.
pub fn add_dead_letter(
    pipe: &mut redis::Pipeline,
    stream: &str,
    source_id: StreamId,
    by: &[(&str, String)],
    error: &str,
) {
    let cmd = pipe
        .cmd("XADD")
        .arg(dead_letter_stream(stream))
        .arg("*")
        .arg("source_stream")
        .arg(stream)
        .arg("source_id")
        .arg(source_id);
    for (field, value) in by {
        cmd.arg(field).arg(value);
    }
    cmd.arg("error").arg(error).ignore();
}

/// One entry of the log stream: its id, and the record it holds (or why it holds none).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: StreamId,
    pub record: Result<LogRecord, RecordError>,
}

impl Entry {
    pub fn parse(raw: &RawEntry) -> Result<Self, BadStreamId> {
        Ok(Self {
            id: raw.id.parse()?,
            record: LogRecord::from_entry(raw),
        })
    }

    /// The entries of an XREAD reply, in stream order (one stream read at a time).
    pub fn from_read(reply: Option<StreamReadReply>) -> Result<Vec<Self>, BadStreamId> {
        reply
            .iter()
            .flat_map(|r| &r.keys)
            .flat_map(|k| &k.ids)
            .map(Self::parse)
            .collect()
    }

    /// The entries of an XRANGE/XREVRANGE reply, in reply order.
    pub fn from_range(reply: &StreamRangeReply) -> Result<Vec<Self>, BadStreamId> {
        reply.ids.iter().map(Self::parse).collect()
    }
}

/// The newest id the stream has ever held (its `last-generated-id`, which trimming and XDEL
/// leave in place), or ZERO when the stream does not exist (e.g. Redis lost its data).
pub async fn last_id(
    redis: &mut impl ConnectionLike,
    stream: &str,
) -> Result<StreamId, redis::RedisError> {
    let info: redis::RedisResult<redis::streams::StreamInfoStreamReply> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(redis)
        .await;
    match info {
        Ok(info) => info.last_generated_id.parse().map_err(|e: BadStreamId| {
            (redis::ErrorKind::Parse, "XINFO STREAM", e.to_string()).into()
        }),
        Err(e) if e.to_string().contains("no such key") => Ok(StreamId::ZERO),
        Err(e) => Err(e),
    }
}

/// The stream's entries from `first` to `last` seq, inclusive.
pub async fn read_range(
    redis: &mut impl ConnectionLike,
    stream: &str,
    first: i64,
    last: i64,
) -> Result<Vec<Entry>, redis::RedisError> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(StreamId::of_seq(first))
        .arg(StreamId::of_seq(last))
        .query_async(redis)
        .await?;
    Entry::from_range(&reply).map_err(|e| (redis::ErrorKind::Parse, "XRANGE", e.to_string()).into())
}

/// The seq of the stream's oldest entry, if it has any.
pub async fn read_first(
    redis: &mut impl ConnectionLike,
    stream: &str,
) -> Result<Option<i64>, redis::RedisError> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    Ok(reply
        .ids
        .first()
        .and_then(|e| e.id.parse::<StreamId>().ok())
        .map(StreamId::log_seq))
}

/// Appends records after a check, in one round trip: the stream must end at the seq the caller
/// believes it does (its last id `<seq>-n`: an entry another program added after the log's own
/// is the readers' to set aside), or nothing is written. Atomic like MULTI/EXEC (no other client's command
/// runs in between), so the check holds for the writes.
const APPEND_AFTER: &str = r"
local top = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then top = info[i + 1] end
    end
end
if string.match(top, '^(%d+)-') ~= ARGV[1] then return top end
local i = 2
while i <= #ARGV do
    local pairs = tonumber(ARGV[i + 1])
    redis.call('XADD', KEYS[1], ARGV[i], unpack(ARGV, i + 2, i + 1 + 2 * pairs))
    i = i + 2 + 2 * pairs
end
return false
";

/// Writes `records`, each at its own id, only if the stream ends at seq `after`: otherwise writes
/// nothing and returns the id the stream ends at (it moved: lost entries, or entries of a
/// previous attempt), for the caller to find out why.
pub async fn append_after(
    redis: &mut impl ConnectionLike,
    stream: &str,
    after: i64,
    records: &[LogRecord],
) -> Result<Option<StreamId>, redis::RedisError> {
    let mut eval = redis::cmd("EVAL");
    eval.arg(APPEND_AFTER).arg(1).arg(stream).arg(after);
    for record in records {
        let fields = record.fields();
        eval.arg(record.stream_id()).arg(fields.len()).arg(fields);
    }
    let moved: Option<String> = eval.query_async(redis).await?;
    moved
        .map(|top| top.parse())
        .transpose()
        .map_err(|e: BadStreamId| (redis::ErrorKind::Parse, "append", e.to_string()).into())
}

/// Queues the XADD that writes `record` at its own id.
pub fn add(pipe: &mut redis::Pipeline, stream: &str, record: &LogRecord) {
    pipe.cmd("XADD")
        .arg(stream)
        .arg(record.stream_id())
        .arg(record.fields())
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_numerically_and_round_trips() {
        let a: StreamId = "9-5".parse().unwrap();
        let b: StreamId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!("10".parse::<StreamId>().is_err());
        assert!("a-1".parse::<StreamId>().is_err());
        assert_eq!("0-0".parse::<StreamId>().unwrap(), StreamId::ZERO);
    }
}
