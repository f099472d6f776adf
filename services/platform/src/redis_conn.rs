//! The Redis connection: a standalone server through one multiplexed connection that reconnects
//! by itself, or a Redis Cluster through a client that routes each command to the master of its
//! key's slot and follows the cluster when slots move or a replica is promoted.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{Error, config::Vars};

/// `REDIS_URL`, and whether it names a cluster: a comma-separated list of nodes
/// (`redis://a:6379,redis://b:6379`), or one node with `REDIS_CLUSTER=true`. A secret (it may
/// carry a password): it prints as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: SecretString,
    pub cluster: bool,
}

impl RedisConfig {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let url = vars.required(
            "REDIS_URL",
            "set it to a Redis URL such as redis://127.0.0.1:6379 (for a cluster, a comma-separated \
             list of nodes)",
        )?;
        let cluster = url.contains(',') || vars.flag("REDIS_CLUSTER", false)?;
        let config = Self {
            url: url.into(),
            cluster,
        };
        config.check()?;
        Ok(config)
    }

    fn nodes(&self) -> Vec<&str> {
        self.url.expose_secret().split(',').map(str::trim).collect()
    }

    fn check(&self) -> Result<(), Error> {
        if self.cluster {
            self.cluster_client()?;
        } else {
            self.client()?;
        }
        Ok(())
    }

    fn client(&self) -> Result<redis::Client, Error> {
        redis::Client::open(self.url.expose_secret())
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }

    fn cluster_client(&self) -> Result<ClusterClient, Error> {
        ClusterClient::builder(self.nodes())
            .retries(3)
            .build()
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }

    /// A lazily connecting connection. `response_timeout` must exceed the longest blocking
    /// command sent on it (a consumer's `XREAD BLOCK`).
    pub fn connect(&self, response_timeout: Duration) -> Result<RedisConnection, Error> {
        const CONNECT: Duration = Duration::from_secs(1);
        if self.cluster {
            let config = ClusterConfig::new()
                .set_connection_timeout(CONNECT)
                .set_response_timeout(response_timeout);
            return Ok(RedisConnection::Cluster(
                self.cluster_client()?
                    .get_pending_async_connection_with_config(config),
            ));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(self.client()?, config)
            .map(RedisConnection::Node)
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }
}

/// A connection to a standalone Redis or to a Redis Cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisConnection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Waits (up to `timeout`) until `replicas` replicas of the server holding `key` have this
    /// connection's writes so far (`WAIT`); returns how many have. On a cluster the command goes
    /// to the master of the key's slot, where the writes went, not to every master.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Self::Node(conn) => wait.query_async(conn).await,
            Self::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                redis::from_redis_value(conn.route_command(wait, routing).await?)
                    .map_err(Into::into)
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Whether Redis answers PING within a second.
pub async fn ping(conn: &RedisConnection) -> bool {
    let mut conn = conn.clone();
    let ping = redis::cmd("PING");
    let probe = ping.query_async::<String>(&mut conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_or_the_flag_means_a_cluster() {
        let config = |pairs: &[(&str, &str)]| RedisConfig::from_vars(&Vars::from_pairs(pairs));
        let one = config(&[("REDIS_URL", "redis://127.0.0.1:6379")]).unwrap();
        assert!(!one.cluster);
        let list = config(&[("REDIS_URL", "redis://a:7000, redis://b:7001")]).unwrap();
        assert!(list.cluster);
        assert_eq!(list.nodes(), ["redis://a:7000", "redis://b:7001"]);
        let flagged =
            config(&[("REDIS_URL", "redis://a:7000"), ("REDIS_CLUSTER", "true")]).unwrap();
        assert!(flagged.cluster);
        let err = config(&[("REDIS_URL", "redis://a:7000,nope")]).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
    }
}
