//! A throwaway Redis Cluster of real redis-servers on this machine: 3 masters with a replica
//! each, made by `redis-cli --cluster create`, with a short node timeout so a killed master's
//! replica takes over within a few seconds.

use std::{path::Path, time::Duration};

use redis::cluster_async::ClusterConnection;

use crate::{free_port, redis_server::RedisServer, wait_until};

const MASTERS: usize = 3;
/// How long a master may be unreachable before its replica is promoted.
const NODE_TIMEOUT_MS: &str = "1000";

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(dir: &Path) -> Self {
        let mut nodes = Vec::new();
        for i in 0..2 * MASTERS {
            let bus = free_port().to_string();
            let conf = format!("nodes-{i}.conf");
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                NODE_TIMEOUT_MS,
            ];
            nodes.push(RedisServer::start_with(dir, &format!("redis-node{i}"), &args).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    /// Every node's URL, comma-separated: the services' `REDIS_URL` for a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub async fn connection(&self) -> ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        redis::cluster::ClusterClient::new(urls)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// SIGKILLs the master of `key`'s slot and waits until a replica has taken its place;
    /// returns (the killed node, the promoted one).
    pub async fn fail_over(&mut self, key: &str, timeout: Duration) -> (usize, usize) {
        let killed = self.master_of(key).await.expect("a master");
        self.nodes[killed].kill().await;
        let promoted = wait_until("a replica to take over", timeout, || async {
            self.master_of(key).await.ok_or("no live master yet")
        })
        .await;
        self.wait_healthy(timeout).await;
        (killed, promoted)
    }

    /// The node that is the master of `key`'s slot now, as a live node sees the cluster (none
    /// while its master is down and no replica has taken over yet).
    pub async fn master_of(&self, key: &str) -> Option<usize> {
        let mut conn = self.connection().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let live = self
            .nodes
            .iter()
            .find(|n| n.running())
            .expect("a live node");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut live.connection().await)
            .await
            .unwrap();
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...`
        let port = nodes
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|f| {
                f[2].contains("master")
                    && !f[2].contains("fail")
                    && f[8..].iter().any(|range| serves(range, slot))
            })
            .and_then(|f| f[1].split(['@', ':']).nth(1)?.parse::<u16>().ok())?;
        self.nodes
            .iter()
            .position(|n| n.port == port && n.running())
    }

    /// Waits until every live node says `cluster_state:ok` (all slots served by live masters)
    /// and every live replica has synchronized with its master: a replica that never did has
    /// no data and cannot take over (CI once killed a master 7 s after the cluster formed,
    /// before its diskless sync began, and no replica ever took over).
    pub async fn wait_healthy(&self, timeout: Duration) {
        wait_until("the Redis Cluster to be healthy", timeout, || async {
            for node in self.nodes.iter().filter(|n| n.running()) {
                let mut conn = node.connection().await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {} is not ok yet", node.port));
                }
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    return Err(format!("replica {} has not synchronized yet", node.port));
                }
            }
            Ok(())
        })
        .await;
    }
}

/// Whether a `CLUSTER NODES` slot range (`5461-10922` or `42`) holds `slot`.
fn serves(range: &str, slot: u16) -> bool {
    let bound = |s: &str| s.parse::<u16>().ok();
    match range.split_once('-') {
        Some((a, b)) => {
            matches!((bound(a), bound(b)), (Some(a), Some(b)) if (a..=b).contains(&slot))
        }
        None => bound(range) == Some(slot),
    }
}
