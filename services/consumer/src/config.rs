//! The consumer's configuration, loaded once at start-up.

use std::{net::SocketAddr, time::Duration};

use rocket_rides_log::stream::DEFAULT_STREAM;
use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces, host_name},
    postgres::PostgresConfig,
    redis_conn::RedisConfig,
};

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50052);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `DATABASE_URL`; `DATABASE_POOL_SIZE` (default 4).
    pub postgres: PostgresConfig,
    /// `REDIS_URL`.
    pub redis: RedisConfig,
    /// `STREAM_NAME`: the log's name; partition `p` is the stream `<STREAM_NAME>:{<p>}`.
    pub stream: String,
    /// `LOG_PARTITIONS`: if set, the partition count this consumer expects; it refuses to run
    /// against a log with another (unset: whatever the log has).
    pub partitions: Option<i32>,
    /// `CONSUMER_NAME` (required): the consumer's identity, naming its checkpoint and totals.
    pub name: String,
    /// `CONSUMER_INSTANCE` (default: the host name): this process's name among the instances
    /// that run the consumer together, sharing its partitions.
    pub instance: String,
    /// `BATCH_SIZE`: entries per read (default 1000).
    pub batch_size: u32,
    /// `BATCH_LINGER_MS`: after a batch smaller than `BATCH_SIZE`, how long to let the next
    /// one gather (default 5; 0 for none). Under a moderate steady load this turns a batch per
    /// record into a batch per few milliseconds; an idle log's first record does not wait.
    pub linger: Duration,
    /// `CRASH_RATE`: share of batches rolled back after the work, before the commit (default 0).
    pub crash_rate: f64,
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
            name: vars
                .required(
                    "CONSUMER_NAME",
                    "every consumer needs a unique name: it identifies its checkpoint",
                )?
                .to_string(),
            partitions: vars.parse("LOG_PARTITIONS")?,
            instance: match vars.get("CONSUMER_INSTANCE") {
                Some(instance) => instance.to_string(),
                None => host_name(),
            },
            batch_size: vars.positive("BATCH_SIZE", 1000)?,
            linger: Duration::from_millis(vars.parse_or("BATCH_LINGER_MS", 5)?),
            crash_rate: vars.rate("CRASH_RATE")?,
        })
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

    const REQUIRED: [(&str, &str); 3] = [
        ("DATABASE_URL", "postgres://u:p@db/rr"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("CONSUMER_NAME", "c0"),
    ];

    #[test]
    fn defaults() {
        let config = Config::from_vars(&Vars::from_pairs(&REQUIRED)).unwrap();
        assert_eq!(
            (config.name.as_str(), config.stream.as_str()),
            ("c0", "rocket-rides-log")
        );
        assert_eq!((config.batch_size, config.crash_rate), (1000, 0.0));
        assert_eq!(config.common.listen_addr, DEFAULT_LISTEN_ADDR);
    }

    #[test]
    fn a_name_is_required() {
        let err = Config::from_vars(&Vars::from_pairs(&REQUIRED[..2])).unwrap_err();
        assert!(
            err.to_string().starts_with("CONSUMER_NAME is required"),
            "{err}"
        );
    }
}
