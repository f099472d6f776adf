//! Waiting on conditions with deadlines.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::Instant;

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` naming `what` and
/// the last thing `check` reported.
pub async fn wait_until<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    poll_until(what, timeout, Duration::from_millis(50), check).await
}

/// `wait_until`, polling every `every`: for conditions that must be caught as soon as they hold.
pub async fn poll_until<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
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
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
