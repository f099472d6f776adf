//! A throwaway Postgres cluster: `initdb` into a temporary directory, served on a free port.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sqlx::{Connection, PgConnection};

use crate::{free_port, process::Process, wait_until};

pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    process: Process,
}

impl Postgres {
    /// Creates the cluster under `dir` and starts it with database `rocketrides`. `durable`
    /// keeps fsync on (benchmarks); tests turn it off for speed.
    pub async fn start(dir: &Path, durable: bool) -> Self {
        let bin = bin_dir();
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).unwrap();
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            for path in [dir, data.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let postgres = bin.join("postgres");
        let process = Process::new(
            "postgres",
            &[
                postgres.to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", data.display()),
                "-c",
                if durable { "fsync=on" } else { "fsync=off" },
                "-c",
                "max_connections=200",
            ],
            &[],
            dir,
        )
        .as_user(user);
        let mut pg = Self {
            port,
            data,
            process,
        };
        pg.run().await;
        let mut admin = pg.connect("postgres").await;
        sqlx::query("CREATE DATABASE rocketrides")
            .execute(&mut admin)
            .await
            .unwrap();
        pg
    }

    pub fn url(&self) -> String {
        self.url_for("rocketrides")
    }

    /// The URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn connect(&self, db: &str) -> PgConnection {
        PgConnection::connect(&self.url_for(db)).await.unwrap()
    }

    async fn run(&mut self) {
        self.process.start();
        let url = self.url_for("postgres");
        wait_until(
            "Postgres to accept connections",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move { PgConnection::connect(&url).await.map(|_| ()) }
            },
        )
        .await;
    }

    /// Immediate shutdown (SIGQUIT), as in a crash: no checkpoint, recovery at next start.
    pub async fn stop_immediate(&mut self) {
        self.process
            .stop(libc::SIGQUIT, Duration::from_secs(30))
            .await;
    }

    /// Starts again on the same data.
    pub async fn restart(&mut self) {
        self.run().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// A cold copy of the data directory (Postgres is stopped cleanly for it, then started
    /// again), as a backup or a lagging replica would hold it.
    pub async fn snapshot(&mut self) -> PathBuf {
        self.process
            .stop(libc::SIGINT, Duration::from_secs(30))
            .await;
        let copy = self
            .data
            .with_extension(format!("snapshot-{}", rand::random::<u32>()));
        copy_dir(&self.data, &copy);
        self.run().await;
        copy
    }

    /// Puts Postgres back to `snapshot`: stopped at once, its data directory replaced, started.
    /// The database goes back in time, as after a restore or a failover to a lagging replica.
    pub async fn restore(&mut self, snapshot: &Path) {
        self.stop_immediate().await;
        std::fs::remove_dir_all(&self.data).unwrap();
        copy_dir(snapshot, &self.data);
        self.run().await;
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// Postgres's bin directory: `initdb` on PATH, or the newest /usr/lib/postgresql/*/bin.
/// `cp -a`, keeping owners and modes (Postgres insists on them).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "copying {} failed", from.display());
}

fn bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(newest) = candidates.pop() {
        return newest;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|p| p.join("initdb").exists())
        .expect("PostgreSQL is not installed: run `make deps` (apt-get install postgresql)")
}

/// The `postgres` system user's uid and gid when running as root; Postgres refuses root.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs a `postgres` user (the postgresql package creates it)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}
