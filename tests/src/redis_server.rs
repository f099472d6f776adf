//! A throwaway Redis server with AOF and `appendfsync always`, as production runs it.

use std::{path::Path, time::Duration};

use crate::{free_port, process::Process, wait_until};

pub struct RedisServer {
    pub port: u16,
    data: std::path::PathBuf,
    process: Process,
}

impl RedisServer {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, "redis", &[]).await
    }

    /// A server named `name` (its data in `dir/name`), with `extra` arguments.
    pub async fn start_with(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec![
            "redis-server",
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--dir",
            data.to_str().unwrap(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ];
        args.extend_from_slice(extra);
        let process = Process::new(name, &args, &[], dir);
        let mut redis = Self {
            port,
            data,
            process,
        };
        redis.run().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn run(&mut self) {
        self.process.start();
        let url = self.url();
        wait_until("Redis to answer PING", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            }
        })
        .await;
    }

    pub fn running(&self) -> bool {
        self.process.pid().is_some()
    }

    /// Sends `signal` (e.g. SIGSTOP to freeze Redis, SIGCONT to thaw it).
    pub fn signal(&self, signal: i32) {
        crate::signal(self.process.pid().expect("Redis runs"), signal);
    }

    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Starts again on the same data (the AOF).
    pub async fn restart(&mut self) {
        self.run().await;
    }

    /// Kills Redis and starts it on an empty data directory: everything it held is lost.
    pub async fn wipe(&mut self) {
        self.kill().await;
        std::fs::remove_dir_all(&self.data).unwrap();
        std::fs::create_dir_all(&self.data).unwrap();
        self.run().await;
    }
}
