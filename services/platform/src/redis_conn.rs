//! The Redis connection: a standalone server through one multiplexed connection that reconnects
//! by itself, or a Redis Cluster through a client that routes each command to the master of its
//! key's slot and follows the cluster when slots move or a replica is promoted.

use std::{path::PathBuf, time::Duration};

use redis::{
    Cmd, Pipeline, RedisFuture, TlsCertificates, Value,
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
///
/// TLS: `rediss://` URLs connect with TLS (rustls), verifying the server against the system's
/// CA bundle (`SSL_CERT_FILE` names another), or against `REDIS_CA_FILE` alone when it is set:
/// a PEM file with the CA of a managed or private Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: SecretString,
    pub cluster: bool,
    /// `REDIS_CA_FILE`.
    pub ca_file: Option<PathBuf>,
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
            ca_file: vars.get("REDIS_CA_FILE").map(PathBuf::from),
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

    /// The CA of `REDIS_CA_FILE`, read and checked, when it is set.
    fn certificates(&self) -> Result<Option<TlsCertificates>, Error> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let invalid = |reason: String| Error::invalid("REDIS_CA_FILE", path.display(), reason);
        if self
            .nodes()
            .iter()
            .any(|node| !node.starts_with("rediss://"))
        {
            return Err(invalid(
                "a CA is only used over TLS: make REDIS_URL a rediss:// URL".into(),
            ));
        }
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid("expected PEM certificates".into()));
        }
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    fn client(&self) -> Result<redis::Client, Error> {
        let url = self.url.expose_secret();
        match self.certificates()? {
            Some(certificates) => redis::Client::build_with_tls(url, certificates),
            None => redis::Client::open(url),
        }
        .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }

    fn cluster_client(&self) -> Result<ClusterClient, Error> {
        let mut builder = ClusterClient::builder(self.nodes()).retries(3);
        if let Some(certificates) = self.certificates()? {
            builder = builder.certs(certificates);
        }
        builder
            .build()
            .map_err(|e| Error::invalid("REDIS_URL", "(redacted)", e))
    }

    /// A connection for blocking reads that wait up to `block`, and one for everything else.
    /// A blocking read needs a connection of its own: on a shared (multiplexed) one, other
    /// commands would queue behind it. Its response timeout exceeds the block, so a blocked
    /// read is not mistaken for a dead server.
    pub fn connect_reader(
        &self,
        block: Duration,
    ) -> Result<(RedisConnection, RedisConnection), Error> {
        const RESPONSE: Duration = Duration::from_secs(5);
        Ok((self.connect(block + RESPONSE)?, self.connect(RESPONSE)?))
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

    /// A self-signed CA, only parsed here.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATugAwIBAgIUa879Izukr8jjd/wFdkgDuiS1JGQwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUcm9ja2V0LXJpZGVzLXRlc3QtY2EwIBcNMjYxMTIzMTUzMjI3
WhgPMjEyNjEwMzAxNTMyMjdaMB8xHTAbBgNVBAMMFHJvY2tldC1yaWRlcy10ZXN0
LWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcbAmLGPsDQf3gf9FTfbSJLR1
U20Rj8ShCX0c1+CTmKywfB94q4AjKGx11SqQEdmTQzhF+WbnWeiS2c+G4U4HaqNT
MFEwHQYDVR0OBBYEFJtbS2BwrFVMYEAC5uS0wxfg2q6EMB8GA1UdIwQYMBaAFJtb
S2BwrFVMYEAC5uS0wxfg2q6EMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
RwAwRAIgfaUzgdTDGhkQBSKlFW9eZjsn8Y2HD06Yv14ufFhUqbACIEHafpgKPYGN
itspJb2AdSpzjrXyySfZE6Zwtbhu9svv
-----END CERTIFICATE-----
";

    #[test]
    fn rediss_urls_and_a_ca_file_are_accepted() {
        let config = |pairs: &[(&str, &str)]| RedisConfig::from_vars(&Vars::from_pairs(pairs));
        let tls = config(&[("REDIS_URL", "rediss://:s3cret@redis.example.com:6380/0")]).unwrap();
        assert!(!tls.cluster && tls.ca_file.is_none());
        let nodes = "rediss://a:7000,rediss://b:7001";
        assert!(config(&[("REDIS_URL", nodes)]).unwrap().cluster);

        let dir = std::env::temp_dir().join(format!("redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, CA).unwrap();
        let ca = ca.to_str().unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let with_ca = config(&[("REDIS_URL", "rediss://r:6380"), ("REDIS_CA_FILE", ca)]).unwrap();
        assert_eq!(with_ca.ca_file.as_deref(), Some(std::path::Path::new(ca)));
        config(&[("REDIS_URL", nodes), ("REDIS_CA_FILE", ca)]).unwrap();

        for (url, file, expected) in [
            ("redis://r:6379", ca, "rediss://"),
            ("rediss://r:6380", "/nonexistent/ca.pem", "cannot read"),
            ("rediss://r:6380", not_pem.to_str().unwrap(), "expected PEM"),
        ] {
            let err = config(&[("REDIS_URL", url), ("REDIS_CA_FILE", file)]).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains("REDIS_CA_FILE") && err.contains(expected),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
