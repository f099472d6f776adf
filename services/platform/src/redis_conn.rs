//! The Redis connection: one multiplexed connection that reconnects by itself.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};

use crate::{Error, config::Vars};

/// `REDIS_URL`. A secret (it may carry a password): it prints as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: SecretString,
}

impl RedisConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let url = vars.required(
            "REDIS_URL",
            "set it to a Redis URL such as redis://127.0.0.1:6379",
        )?;
        let config = Self { url: url.into() };
        config.client()?;
        Ok(config)
    }

    fn client(&self) -> Result<redis::Client, Error> {
        redis::Client::open(self.url.expose_secret())
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }

    /// A lazily connecting connection. `response_timeout` must exceed the longest blocking
    /// command sent on it (a consumer's `XREAD BLOCK`).
    pub fn connect(&self, response_timeout: Duration) -> Result<ConnectionManager, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(self.client()?, config)
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }
}

/// Whether Redis answers PING within a second.
pub async fn ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    let ping = redis::cmd("PING");
    let probe = ping.query_async::<String>(&mut conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(_))
    )
}
