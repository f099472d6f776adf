//! The history service's configuration, loaded once at start-up.

use std::{net::SocketAddr, time::Duration};

use rocket_rides_log::{reader::group_reader::GroupConfig, stream::DEFAULT_STREAM};
use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces, host_name},
    postgres::PostgresConfig,
    redis_conn::RedisConfig,
};

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50055);

/// The Redis consumer group of every partition's stream.
pub const GROUP: &str = "history";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `DATABASE_URL`; `DATABASE_POOL_SIZE` (default 4).
    pub postgres: PostgresConfig,
    /// `REDIS_URL`.
    pub redis: RedisConfig,
    /// `STREAM_NAME`: the log's name; partition `p` is the stream `<STREAM_NAME>:{<p>}`.
    pub stream: String,
    /// `LOG_PARTITIONS`: if set, the partition count expected (unset: whatever the log has).
    pub partitions: Option<i32>,
    /// `CONSUMER_INSTANCE` (default: the host name): this member's name in the group. Two
    /// live processes must not share one.
    pub instance: String,
    /// `CLAIM_IDLE` (default 10s): an entry delivered this long ago and not acknowledged is
    /// taken over by another member (its member died or is stuck) or retried.
    pub claim_idle: Duration,
    /// `MAX_DELIVERIES` (default 5): an entry that failed this many deliveries goes to the
    /// dead-letter stream.
    pub max_deliveries: u32,
    /// `MEMBER_EXPIRY` (default 1h): a member silent this long with nothing pending is removed
    /// from the group.
    pub member_expiry: Duration,
    /// `BATCH_SIZE`: entries per read (default 500).
    pub batch_size: u32,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        Ok(Self {
            common: Common::from_vars(vars, crate::NAME, DEFAULT_LISTEN_ADDR)?,
            postgres: PostgresConfig::from_vars(vars, 4)?,
            redis: RedisConfig::from_vars(vars)?,
            stream: vars
                .get("STREAM_NAME")
                .unwrap_or(DEFAULT_STREAM)
                .to_string(),
            partitions: vars.parse("LOG_PARTITIONS")?,
            instance: match vars.get("CONSUMER_INSTANCE") {
                Some(instance) => instance.to_string(),
                None => host_name(),
            },
            claim_idle: vars.duration("CLAIM_IDLE", Duration::from_secs(10))?,
            max_deliveries: vars.positive("MAX_DELIVERIES", 5)?,
            member_expiry: vars.duration("MEMBER_EXPIRY", Duration::from_secs(3600))?,
            batch_size: vars.positive("BATCH_SIZE", 500)?,
        })
    }
}

impl Config {
    /// How this process works as a member of the group `history`.
    pub fn group(&self) -> GroupConfig {
        GroupConfig {
            group: GROUP.to_string(),
            stream: self.stream.clone(),
            instance: self.instance.clone(),
            claim_idle: self.claim_idle,
            max_deliveries: self.max_deliveries,
            member_expiry: self.member_expiry,
            batch_size: self.batch_size,
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://u:p@db/rr"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ];

    #[test]
    fn defaults() {
        let config = Config::from_vars(&Vars::from_pairs(&REQUIRED)).unwrap();
        assert_eq!(config.claim_idle, Duration::from_secs(10));
        assert_eq!((config.max_deliveries, config.batch_size), (5, 500));
        assert_eq!(config.common.listen_addr, DEFAULT_LISTEN_ADDR);
        assert!(!config.instance.is_empty());
    }

    #[test]
    fn zero_deliveries_is_refused() {
        let mut vars = REQUIRED.to_vec();
        vars.push(("MAX_DELIVERIES", "0"));
        let err = Config::from_vars(&Vars::from_pairs(&vars)).unwrap_err();
        assert!(err.to_string().contains("MAX_DELIVERIES"), "{err}");
    }
}
