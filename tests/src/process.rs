//! A child process with its output in a log file, killed when dropped.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::wait::{poll_until, wait_until};

pub struct Process {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Process {
    pub fn new(name: &str, command: &[&str], env: &[(String, String)], log_dir: &Path) -> Self {
        Self {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
            log: log_dir.join(format!("{name}.log")),
            user: None,
            child: None,
        }
    }

    /// Runs the process as this uid/gid (Postgres refuses to run as root).
    pub fn as_user(mut self, user: Option<(u32, u32)>) -> Self {
        self.user = user;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Changes (or adds) a variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn start(&mut self) -> &mut Self {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        self.child =
            Some(cmd.spawn().unwrap_or_else(|e| {
                panic!("cannot start {} ({:?}): {e}", self.name, self.command)
            }));
        self
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) and waits for the process to exit.
    pub async fn stop(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        crate::signal(pid, signal);
        self.wait_exit(timeout).await
    }

    /// Waits for the process to exit on its own; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let status = wait_until(&format!("{} to exit", self.name), timeout, || {
            let polled = child.try_wait();
            async move {
                match polled {
                    Ok(Some(status)) => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        self.child = None;
        status
    }

    /// Waits until the process has installed a handler for `signal` (its `SigCgt` mask in
    /// /proc), polling every millisecond: the earliest moment a signal can be handled at all,
    /// since until then the default action (for SIGTERM: die) applies.
    pub async fn wait_until_catching(&mut self, signal: i32, timeout: Duration) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let (name, child) = (&self.name, &mut self.child);
        let what = format!("{name} to catch signal {signal}");
        poll_until(&what, timeout, Duration::from_millis(1), || {
            let exited = child.as_mut().map(|c| c.try_wait());
            async move {
                if let Some(Ok(Some(status))) = exited {
                    panic!("{name} exited ({status}) before catching signal {signal}");
                }
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map_err(|e| e.to_string())?;
                let caught = status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    .ok_or("no SigCgt in /proc/<pid>/status")?;
                if caught & (1 << (signal - 1)) != 0 {
                    Ok(())
                } else {
                    Err(format!("SigCgt {caught:#x}"))
                }
            }
        })
        .await;
    }

    pub async fn kill(&mut self) {
        self.stop(libc::SIGKILL, Duration::from_secs(10)).await;
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times `needle` occurs in the output so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// The last `lines` lines of output, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
