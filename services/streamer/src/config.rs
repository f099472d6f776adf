//! The streamer's configuration, loaded once at start-up.

use std::{net::SocketAddr, time::Duration};

use rocket_rides_log::stream::DEFAULT_STREAM;
use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces},
    postgres::PostgresConfig,
    redis_conn::RedisConfig,
};

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50053);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `DATABASE_URL`; `DATABASE_POOL_SIZE` (default 4).
    pub postgres: PostgresConfig,
    /// `REDIS_URL`.
    pub redis: RedisConfig,
    /// `REDIS_WAIT_REPLICAS`: replicas that must have a batch (`WAIT`) before it counts as
    /// streamed (default 1 on a cluster, where a master's failover would otherwise lose what
    /// it had not passed on; 0 on a standalone Redis).
    pub wait_replicas: u32,
    /// `STREAM_NAME`: the log's name; partition `p` is the stream `<STREAM_NAME>:{<p>}`.
    pub stream: String,
    /// `LOG_PARTITIONS`: if set, the partition count this streamer expects; it refuses to run
    /// against a log with another (unset: whatever the log has).
    pub partitions: Option<i32>,
    /// `BATCH_SIZE`: records per batch (default 1000).
    pub batch_size: u32,
    /// `BATCH_LINGER_MS`: after a batch smaller than `BATCH_SIZE`, how long to let the next
    /// one gather (default 5; 0 for none). Under a moderate steady load this turns a batch per
    /// record into a batch per few milliseconds; an idle log's first record does not wait.
    pub linger: Duration,
    /// `STREAM_MAX_LEN`: past this length the stream is trimmed (default 10,000).
    pub max_len: u32,
    /// `DOUBLE_SEND_RATE`: share of batches whose sending is "forgotten", as a crash right after
    /// the XADD would, so they are checked and adopted again (default 0).
    pub double_send_rate: f64,
    /// `CONSUMER_EXPIRY`: a consumer silent for this long stops holding the stream back
    /// (default 24h); it catches up from the archive when it returns.
    pub consumer_expiry: Duration,
    /// `LOG_RETENTION`: how long the archive keeps streamed records (default 7d); a partition
    /// is dropped once all its records are older and no unexpired consumer needs them.
    pub log_retention: Duration,
    /// `PROGRESS_TIMEOUT`: failing this long (leading or standing by) makes the streamer report
    /// NOT_SERVING until it gets through again (default 30s).
    pub progress_timeout: Duration,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let redis = RedisConfig::from_vars(vars)?;
        Ok(Self {
            common: Common::from_vars(vars, crate::NAME, DEFAULT_LISTEN_ADDR)?,
            postgres: PostgresConfig::from_vars(vars, 4)?,
            wait_replicas: vars.parse_or("REDIS_WAIT_REPLICAS", u32::from(redis.cluster))?,
            redis,
            stream: vars
                .get("STREAM_NAME")
                .unwrap_or(DEFAULT_STREAM)
                .to_string(),
            partitions: vars.parse("LOG_PARTITIONS")?,
            batch_size: vars.positive("BATCH_SIZE", 1000)?,
            linger: Duration::from_millis(vars.parse_or("BATCH_LINGER_MS", 5)?),
            max_len: vars.positive("STREAM_MAX_LEN", 10_000)?,
            double_send_rate: vars.rate("DOUBLE_SEND_RATE")?,
            consumer_expiry: vars.duration("CONSUMER_EXPIRY", Duration::from_secs(86_400))?,
            log_retention: vars.duration("LOG_RETENTION", Duration::from_secs(7 * 86_400))?,
            progress_timeout: vars.duration("PROGRESS_TIMEOUT", Duration::from_secs(30))?,
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

    const REQUIRED: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://u:p@db/rr"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ];

    #[test]
    fn defaults() {
        let config = Config::from_vars(&Vars::from_pairs(&REQUIRED)).unwrap();
        assert_eq!(config.stream, "rocket-rides-log");
        assert_eq!((config.batch_size, config.max_len), (1000, 10_000));
        assert_eq!(config.double_send_rate, 0.0);
        assert_eq!(config.postgres.pool_size, 4);
        assert_eq!(config.wait_replicas, 0);
        let mut cluster = REQUIRED.to_vec();
        cluster.push(("REDIS_CLUSTER", "true"));
        let config = Config::from_vars(&Vars::from_pairs(&cluster)).unwrap();
        assert_eq!(config.wait_replicas, 1);
        assert_eq!(config.common.listen_addr, DEFAULT_LISTEN_ADDR);
    }

    #[test]
    fn rejects_bad_values() {
        for (name, value) in [
            ("BATCH_SIZE", "0"),
            ("DOUBLE_SEND_RATE", "2"),
            ("REDIS_URL", "nope"),
        ] {
            let mut vars = REQUIRED.to_vec();
            vars.push((name, value));
            let err = Config::from_vars(&Vars::from_pairs(&vars)).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
