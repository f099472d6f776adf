//! Redis stream ids ("<milliseconds>-<sequence>"), ordered as Redis orders them.

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Before every entry: where a new consumer starts reading.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a stream id (expected <ms>-<seq>)");
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

/// Where a consumer sets aside entries it cannot parse, so they are kept for inspection and
/// never block the log.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}:dead-letter")
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
