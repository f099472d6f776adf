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

/// Adds to `stream` an entry that is no log record, at an id no record has (`<top>-1`, which
/// the streamer's next entry still follows), as another program might; returns its id.
pub async fn add_poison(redis: &mut impl redis::aio::ConnectionLike, stream: &str) -> String {
    let top = rocket_rides_log::stream::last_id(redis, stream)
        .await
        .unwrap();
    let poison = format!("{}-1", top.ms);
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg(&poison)
        .arg("junk")
        .arg("1")
        .query_async(redis)
        .await
        .unwrap();
    poison
}

/// A port nobody listens on right now, and that this test process has not handed out before.
///
/// Ports come from below the kernel's ephemeral range (32768-60999 here): a port taken from that
/// range with `bind(0)` can be grabbed as the source port of any outgoing connection before the
/// service binds it, which made a streamer exit with "Address already in use" in CI.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Start where this process's id points, so two test processes rarely walk the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() * 97 % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}
