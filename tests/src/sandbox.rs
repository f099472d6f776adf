//! A test's throwaway directory and the environment its services share; on a failed test it
//! prints the end of every process's log.

use std::path::Path;

use tempfile::TempDir;

use crate::{
    free_port,
    process::Process,
    service::{Api, Consumer, History, Kind, Service, Simulator, Streamer, bin_path},
};

pub struct Sandbox {
    vars: Vec<(String, String)>,
    dir: TempDir,
}

impl Sandbox {
    /// Services wired to `database_url` and `redis_url`.
    pub fn new(dir: TempDir, database_url: &str, redis_url: &str) -> Self {
        let vars = [
            ("DATABASE_URL", database_url.to_string()),
            ("REDIS_URL", redis_url.to_string()),
            // A simulator calls a real api only when a test names one; never a stray local one.
            ("API_URL", format!("http://{}", nowhere())),
            ("RUST_LOG", "info".to_string()),
        ];
        Self {
            vars: vars.map(|(k, v)| (k.to_string(), v)).to_vec(),
            dir,
        }
    }

    /// Services wired to a Postgres and a Redis that nobody runs: connections are refused.
    pub fn unreachable() -> Self {
        Self::new(
            temp_dir(),
            &format!("postgres://postgres@{}/rocketrides", nowhere()),
            &format!("redis://{}", nowhere()),
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A service (not yet started) named `name`, with the sandbox's environment, listening and
    /// serving metrics on free ports. `env` adds or overrides variables.
    pub fn service<K: Kind>(&self, name: &str, env: &[(&str, &str)]) -> Service<K> {
        let mut vars = self.vars.clone();
        vars.push(("LISTEN_ADDR".into(), nowhere()));
        vars.push(("METRICS_ADDR".into(), nowhere()));
        vars.extend(K::vars(name).into_iter().map(|(k, v)| (k.to_string(), v)));
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        Service::new(Process::new(
            name,
            &[bin_path(K::BINARY).to_str().unwrap()],
            &vars,
            self.dir(),
        ))
    }

    /// Runs `rocket-rides-streamer <command>` (a repair: `republish`, `rewind`) to its end.
    pub fn repair(&self, command: &str) -> std::process::Output {
        std::process::Command::new(bin_path("rocket-rides-streamer"))
            .arg(command)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// Runs a repair, as an operator would after a fault, and checks that it succeeded.
    pub fn repair_ok(&self, command: &str) {
        let out = self.repair(command);
        assert!(
            out.status.success(),
            "{command} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn api(&self, env: &[(&str, &str)]) -> Api {
        self.service("api", env)
    }

    pub fn streamer(&self, name: &str, env: &[(&str, &str)]) -> Streamer {
        self.service(name, env)
    }

    /// A consumer whose CONSUMER_NAME is `name`.
    pub fn consumer(&self, name: &str, env: &[(&str, &str)]) -> Consumer {
        self.service(name, env)
    }

    /// A history member named `name` (its CONSUMER_INSTANCE).
    pub fn history(&self, name: &str, env: &[(&str, &str)]) -> History {
        self.service(name, env)
    }

    /// `rocket-rides-log` with `args` and the sandbox's variables, not yet run.
    pub fn log_tool(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(bin_path("rocket-rides-log"));
        command
            .args(args)
            .env("NO_COLOR", "1")
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        command
    }

    /// A simulator creating rides on `api`.
    pub fn simulator(&self, api: &Api, env: &[(&str, &str)]) -> Simulator {
        let mut simulator: Simulator = self.service("simulator", env);
        simulator.set_env("API_URL", &api.url());
        simulator
    }
}

/// A new throwaway directory.
pub(crate) fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("rocket-rides-test-")
        .tempdir()
        .unwrap()
}

/// `127.0.0.1:<port>` where nobody listens right now.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Drop for Sandbox {
    /// On a failed test, prints the end of every process's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<_> = std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- {} (last 40 lines) -----\n{}",
                log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
