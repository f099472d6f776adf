//! Waiting on conditions with deadlines.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::Instant;

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` naming `what` and
/// the last thing `check` reported.
pub async fn wait_until<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
