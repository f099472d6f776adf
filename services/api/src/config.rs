//! The api's configuration, loaded once at start-up.

use std::{net::SocketAddr, time::Duration};

use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces},
    postgres::PostgresConfig,
};

use crate::group::Limits;

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50051);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `DATABASE_URL`; `DATABASE_POOL_SIZE` (default 16).
    pub postgres: PostgresConfig,
    /// Group commit: `BATCH_MAX_RIDES` (default 256), `BATCH_MAX_WAIT_MS` (default 0: a lone
    /// caller waits for no one), `MAX_PENDING_RIDES` (default 4096; past it, calls are shed
    /// with RESOURCE_EXHAUSTED), `WRITERS` (default 4, batches in flight at once).
    pub batch: Limits,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        Ok(Self {
            common: Common::from_vars(vars, crate::NAME, DEFAULT_LISTEN_ADDR)?,
            postgres: PostgresConfig::from_vars(vars, 16)?,
            batch: Limits {
                batch_max: vars.positive("BATCH_MAX_RIDES", 256)? as usize,
                batch_wait: Duration::from_millis(vars.parse_or("BATCH_MAX_WAIT_MS", 0)?),
                queue: vars.positive("MAX_PENDING_RIDES", 4096)? as usize,
                writers: vars.positive("WRITERS", 4)? as usize,
            },
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

    #[test]
    fn defaults_and_requirements() {
        let vars = Vars::from_pairs(&[("DATABASE_URL", "postgres://u:p@db/rr")]);
        let config = Config::from_vars(&vars).unwrap();
        assert_eq!(config.common.listen_addr, DEFAULT_LISTEN_ADDR);
        assert_eq!(config.postgres.pool_size, 16);
        assert!(Config::from_vars(&Vars::default()).is_err());
    }
}
