//! Waking the streamer after commits, outside the rides' transactions (see
//! `rocket_rides_log::sql::WAKE_CHANNEL`). Coalesced: wake-ups that arrive while a NOTIFY is on
//! its way collapse into the next one, so a busy api sends a few per round trip, not one per
//! ride. The streamer also polls, so a lost wake-up only delays, never loses.

use std::sync::Arc;

use rocket_rides_log::sql::WAKE_CHANNEL;
use rocket_rides_platform::{postgres::KeptConnection, shutdown::CancellationToken};
use sqlx::PgPool;
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Asks for a NOTIFY soon; never waits.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Sends the NOTIFYs until `cancel`.
    pub async fn run(self, pool: PgPool, cancel: CancellationToken) {
        let mut db = KeptConnection::new(pool);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.0.notified() => {}
            }
            let sent = match db.get().await {
                Ok(conn) => sqlx::query("SELECT pg_notify($1, '')")
                    .bind(WAKE_CHANNEL)
                    .execute(conn)
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                db.give_back();
                tracing::debug!(error = %e, "waking the streamer failed; it will poll");
            }
        }
    }
}
