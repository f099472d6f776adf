//! The Redis connection: one multiplexed connection that reconnects by itself.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Error, config};

/// A lazily connecting Redis connection from `REDIS_URL`. `response_timeout` must exceed the
/// longest blocking command sent on it (a consumer's `XREAD BLOCK`).
pub fn connect_from_env(response_timeout: Duration) -> Result<ConnectionManager, Error> {
    let url = config::required(
        "REDIS_URL",
        "set it to a Redis URL such as redis://127.0.0.1:6379",
    )?;
    let invalid = |e: redis::RedisError| Error::Invalid {
        name: "REDIS_URL",
        value: url.clone(),
        reason: e.to_string(),
    };
    let client = redis::Client::open(url.as_str()).map_err(invalid)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)
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
