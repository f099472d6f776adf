//! Start-up: a taken LISTEN_ADDR fails fast and says which address, and a SIGTERM that arrives
//! while a service is still starting (Postgres reachable or not) is a clean shutdown, exit 0.

use std::{net::TcpListener, time::Duration};

use rocket_rides_tests::{Kind, Sandbox, ServingStatus, System, kind};

/// How long a service may take to give up on a taken port, or to stop after SIGTERM.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Runs `$check::<K>` for every server binary, in turn.
macro_rules! for_each_server {
    ($check:ident($($arg:expr),*)) => {
        $check::<kind::Api>($($arg),*).await;
        $check::<kind::Streamer>($($arg),*).await;
        $check::<kind::Consumer>($($arg),*).await;
        $check::<kind::Simulator>($($arg),*).await;
    };
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_exits_non_zero_naming_a_listen_address_in_use() {
    let sandbox = Sandbox::unreachable();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for_each_server!(fails_on_taken_address(&sandbox, &addr));
}

async fn fails_on_taken_address<K: Kind>(sandbox: &Sandbox, addr: &str) {
    let mut service = sandbox.service::<K>(K::BINARY, &[("LISTEN_ADDR", addr)]);
    service.start();
    let status = service.wait_exit(PROMPTLY).await;
    assert!(
        status.code().is_some_and(|code| code != 0),
        "{}: expected a non-zero exit code, got {status}",
        K::BINARY
    );
    let log = service.log();
    assert!(
        log.contains(addr),
        "{}: {addr} not named in:\n{log}",
        K::BINARY
    );
}

/// SIGTERM as early as a process can act on it: once it has installed its handler (before
/// that, any process dies of it; no service can do better), then exit 0, promptly.
async fn sigterm_while_starting_exits_zero<K: Kind>(sandbox: &Sandbox) {
    let mut service = sandbox.service::<K>(K::BINARY, &[]);
    service.start();
    service.wait_until_catching(libc::SIGTERM).await;
    let status = service.stop(libc::SIGTERM, PROMPTLY).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}: SIGTERM during start-up gave {status}; log:\n{}",
        K::BINARY,
        service.log_tail(20)
    );
}

/// SIGTERM once it listens but, with its dependencies unreachable, is not yet SERVING.
async fn sigterm_while_not_serving_exits_zero<K: Kind>(sandbox: &Sandbox) {
    let mut service = sandbox.service::<K>(K::BINARY, &[]);
    service.start();
    service.wait_until_status(ServingStatus::NotServing).await;
    let status = service.stop(libc::SIGTERM, PROMPTLY).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}: SIGTERM while NOT_SERVING gave {status}; log:\n{}",
        K::BINARY,
        service.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_start_up_exits_zero_with_postgres_unreachable() {
    let sandbox = Sandbox::unreachable();
    for_each_server!(sigterm_while_starting_exits_zero(&sandbox));
    // The simulator has no dependency to wait for: it is SERVING as soon as it listens.
    sigterm_while_not_serving_exits_zero::<kind::Api>(&sandbox).await;
    sigterm_while_not_serving_exits_zero::<kind::Streamer>(&sandbox).await;
    sigterm_while_not_serving_exits_zero::<kind::Consumer>(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_start_up_exits_zero_with_postgres_reachable() {
    let sys = System::start().await;
    for_each_server!(sigterm_while_starting_exits_zero(&sys));
}
