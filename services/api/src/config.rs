//! The api's configuration, loaded once at start-up.

use std::net::SocketAddr;

use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces},
    postgres::PostgresConfig,
};

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50051);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `DATABASE_URL`; `DATABASE_POOL_SIZE` (default 16).
    pub postgres: PostgresConfig,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        Ok(Self {
            common: Common::from_vars(vars, crate::NAME, DEFAULT_LISTEN_ADDR)?,
            postgres: PostgresConfig::from_vars(vars, 16)?,
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
