//! Test harness: real Postgres and Redis servers in throwaway directories on free ports, the
//! real service binaries as child processes behind typed handles (`Api`, `Streamer`,
//! `Consumer`, `Simulator`), and helpers that wait on conditions (never on bare sleeps) and
//! check the invariants in SQL, through GetTotal, health and metrics.

pub mod grpcurl;
pub mod metrics;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod sandbox;
pub mod service;
pub mod system;
pub mod wait;

pub use metrics::Metrics;
pub use sandbox::Sandbox;
pub use service::{Api, Consumer, History, Kind, Service, Simulator, Streamer, kind};
pub use system::{Committed, Pipeline, System};
pub use tonic_health::pb::health_check_response::ServingStatus;
pub use wait::wait_until;

/// The stream of partition `p` of the log the tests use (`STREAM_NAME` unset).
pub fn stream(p: i32) -> String {
    rocket_rides_log::partition::stream_key(rocket_rides_log::stream::DEFAULT_STREAM, p)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}
