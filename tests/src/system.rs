//! One test's whole world: Postgres, Redis, the schema, and the services it starts (through
//! its `Sandbox`), with what the invariants are checked against: the committed rides, the
//! outbox and the stream.

use std::{ops::Deref, time::Duration};

use redis::streams::StreamRangeReply;
use rocket_rides_log::{Entry, StreamId};
use sqlx::PgPool;

use crate::{
    postgres::Postgres,
    redis_cluster::RedisCluster,
    redis_server::RedisServer,
    sandbox::{Sandbox, temp_dir},
    service::{Api, Consumer, Kind, Streamer, bin_path, kind},
    wait_until,
};

pub struct System {
    pub pg: Postgres,
    /// The standalone Redis the services use, unless they run on `cluster`.
    pub redis: RedisServer,
    /// A Redis Cluster, when the system was started on one (`start_on_cluster`); the services'
    /// REDIS_URL then lists its nodes.
    pub cluster: Option<RedisCluster>,
    pub db: PgPool,
    // Last, so the servers are stopped before the sandbox prints logs and removes the directory.
    sandbox: Sandbox,
}

/// The usual pipeline, every part SERVING.
pub struct Pipeline {
    pub api: Api,
    pub streamer: Streamer,
    pub consumers: Vec<Consumer>,
}

/// What the committed rides add up to: what every caught-up consumer must report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    pub distance: f64,
    pub rides: i64,
}

impl System {
    /// Starts Postgres (fsync off, for speed) and Redis and applies the schema with
    /// `rocket-rides-api migrate`.
    pub async fn start() -> Self {
        Self::start_with(false, false).await
    }

    /// Like `start`, with Postgres as durable as in production (for benchmarks).
    pub async fn start_durable() -> Self {
        Self::start_with(true, false).await
    }

    /// Like `start`, with the services on a Redis Cluster of 3 masters and 3 replicas.
    pub async fn start_on_cluster() -> Self {
        Self::start_with(false, true).await
    }

    /// `start_on_cluster` with Postgres as durable as in production (for benchmarks).
    pub async fn start_durable_on_cluster() -> Self {
        Self::start_with(true, true).await
    }

    async fn start_with(durable: bool, on_cluster: bool) -> Self {
        let dir = temp_dir();
        let pg = Postgres::start(dir.path(), durable).await;
        let redis = RedisServer::start(dir.path()).await;
        let cluster = match on_cluster {
            true => Some(RedisCluster::start(dir.path()).await),
            false => None,
        };
        let migrated = migrate(&pg.url(), &[]);
        assert!(
            migrated.status.success(),
            "rocket-rides-api migrate failed: {migrated:?}"
        );
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg.url())
            .await
            .unwrap();
        let redis_url = cluster
            .as_ref()
            .map_or_else(|| redis.url(), RedisCluster::url);
        let sandbox = Sandbox::new(dir, &pg.url(), &redis_url);
        Self {
            pg,
            redis,
            cluster,
            db,
            sandbox,
        }
    }

    /// Runs `rocket-rides-api migrate` again, with `env` (e.g. LOG_PARTITIONS).
    pub fn migrate(&self, env: &[(&str, &str)]) -> std::process::Output {
        migrate(&self.pg.url(), env)
    }

    /// An api, a streamer and one consumer per name, all SERVING.
    pub async fn pipeline(&self, consumers: &[&str], env: &[(&str, &str)]) -> Pipeline {
        let mut api = self.api(env);
        let mut streamer = self.streamer("streamer", env);
        api.start_ready().await;
        streamer.start_ready().await;
        let mut started = Vec::new();
        for name in consumers {
            let mut consumer = self.consumer(name, env);
            consumer.start_ready().await;
            started.push(consumer);
        }
        Pipeline {
            api,
            streamer,
            consumers: started,
        }
    }

    pub async fn committed(&self) -> Committed {
        let (distance, rides) =
            sqlx::query_as("SELECT COALESCE(SUM(distance), 0)::float8, COUNT(*) FROM rides")
                .fetch_one(&self.db)
                .await
                .unwrap();
        Committed { distance, rides }
    }

    /// Records in the outbox, not yet streamed.
    pub async fn staged(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM log_records r WHERE seq IS NULL
             OR seq > (SELECT streamed_seq FROM log_partitions p WHERE p.partition = r.partition)",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// How many entries `stream` holds.
    pub async fn stream_len(&self, stream: &str) -> usize {
        let mut redis = self.redis.connection().await;
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut redis)
            .await
            .unwrap()
    }

    /// Ids of the newest `n` entries of the log stream, newest first.
    pub async fn newest_ids(&self, n: usize) -> Vec<StreamId> {
        let mut redis = self.redis.connection().await;
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(crate::stream(0))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(n)
            .query_async(&mut redis)
            .await
            .unwrap();
        Entry::from_range(&newest)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Waits until the log stream holds at most `max` entries: trimming has caught up.
    pub async fn wait_stream_within(&self, max: usize, timeout: Duration) {
        wait_until(
            &format!("the stream to hold at most {max} entries"),
            timeout,
            || async {
                match self.stream_len(&crate::stream(0)).await {
                    len if len <= max => Ok(()),
                    len => Err(len),
                }
            },
        )
        .await;
    }

    /// Waits until the outbox is drained and every consumer's GetTotal and its row in
    /// `consumers` equal the committed rides exactly.
    pub async fn wait_exact<'a>(
        &self,
        consumers: impl IntoIterator<Item = &'a Consumer>,
        timeout: Duration,
    ) {
        for consumer in consumers {
            wait_until(
                &format!("{} to equal SUM/COUNT(rides) exactly", consumer.name()),
                timeout,
                || self.exact(consumer),
            )
            .await;
        }
    }

    /// Waits until the history's read model holds every ride exactly as `rides` has it (no
    /// ride missing, none unknown, same distance and rider).
    pub async fn wait_history_exact(&self, timeout: Duration) {
        wait_until(
            "the read model to hold every ride as Postgres does",
            timeout,
            || self.history_exact(),
        )
        .await;
    }

    pub async fn history_exact(&self) -> Result<(), String> {
        let (missing, extra): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM rides r WHERE NOT EXISTS
                        (SELECT 1 FROM ride_history h WHERE h.ride_id = r.id
                         AND h.distance = r.distance
                         AND h.rider_id IS NOT DISTINCT FROM r.rider_id)),
                    (SELECT count(*) FROM ride_history h WHERE NOT EXISTS
                        (SELECT 1 FROM rides r WHERE r.id = h.ride_id))",
        )
        .fetch_one(&self.db)
        .await
        .map_err(|e| e.to_string())?;
        match (missing, extra) {
            (0, 0) => Ok(()),
            _ => Err(format!(
                "{missing} rides missing from the history, {extra} unknown"
            )),
        }
    }

    async fn exact(&self, consumer: &Consumer) -> Result<(), String> {
        let expected = self.committed().await;
        let staged = self.staged().await;
        let got = consumer.try_total().await?;
        let exact_in_sql: bool = sqlx::query_scalar(
            "SELECT total_distance = (SELECT COALESCE(SUM(distance), 0) FROM rides)
                AND ride_count = (SELECT COUNT(*) FROM rides)
             FROM consumers WHERE name = $1",
        )
        .bind(consumer.consumer_name())
        .fetch_optional(&self.db)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(false);
        let reported = Committed {
            distance: got.total_distance,
            rides: got.ride_count,
        };
        if staged == 0 && exact_in_sql && reported == expected {
            Ok(())
        } else {
            Err(format!(
                "staged {staged}, expected {expected:?}, GetTotal {reported:?}, exact in SQL {exact_in_sql}"
            ))
        }
    }
}

/// Services are made by the system's sandbox, wired to its Postgres and Redis.
impl Deref for System {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

fn migrate(database_url: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin_path(kind::Api::BINARY))
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
