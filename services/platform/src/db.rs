//! The Postgres pool and schema. Pools connect lazily, so a service starts (and reports
//! NOT_SERVING) while Postgres is still down, and recovers by itself when it comes back.

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Error, config};

/// The schema, embedded in every binary that needs it.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a connection before it is answered UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection options from `DATABASE_URL`.
pub fn options_from_env() -> Result<PgConnectOptions, Error> {
    let url = config::required(
        "DATABASE_URL",
        "set it to a Postgres URL such as postgres://user:password@127.0.0.1:5432/rocketrides",
    )?;
    url.parse().map_err(|e: sqlx::Error| Error::Invalid {
        name: "DATABASE_URL",
        value: redact(&url),
        reason: e.to_string(),
    })
}

/// A lazily connecting pool of at most `max_connections` (`DATABASE_POOL_SIZE` overrides).
pub fn pool(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, Error> {
    let max = config::positive("DATABASE_POOL_SIZE", max_connections)?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Applies every pending migration. Safe to run twice, and from several processes at once
/// (sqlx serialises them with an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// True when the error means "Postgres cannot be reached right now", as opposed to a bug or a
/// constraint: the caller should answer UNAVAILABLE or retry later.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P0x: the server is shutting down or starting;
            // 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P0") || code == "53300"
        }),
        _ => false,
    }
}

/// Whether Postgres answers a trivial query within a second.
pub async fn ping(pool: &PgPool) -> bool {
    let probe = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(_))
    )
}

/// The URL with its password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://rides:s3cret@db:5432/rocketrides"),
            "postgres://rides:***@db:5432/rocketrides"
        );
        assert_eq!(
            redact("postgres://db/rocketrides"),
            "postgres://db/rocketrides"
        );
    }
}
