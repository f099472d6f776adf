//! The log's stream: entry ids ("<milliseconds>-<sequence>", ordered as Redis orders them),
//! the dead-letter stream's name, and entries as read back with XREAD/XRANGE.

use std::{fmt, str::FromStr};

use redis::streams::{StreamId as RawEntry, StreamRangeReply, StreamReadReply};

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

/// One entry of the log stream: its id, and the record it holds (or why it holds none).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: StreamId,
    pub record: Result<LogRecord, RecordError>,
}

impl Entry {
    fn parse(raw: &RawEntry) -> Result<Self, BadStreamId> {
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
