//! The Postgres pool. Pools connect lazily, so a service starts (and reports NOT_SERVING)
//! while Postgres is still down, and recovers by itself when it comes back.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    PgConnection, PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Error, config::Vars};

/// How long a request waits for a connection before it is answered UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle in a transaction for 10 s ends the session; a peer that stops answering TCP is dropped
/// within about 10 s.
const SESSION_TIMEOUTS: [(&str, &str); 5] = [
    ("idle_in_transaction_session_timeout", "10s"),
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "10000"),
];

/// `DATABASE_URL` and `DATABASE_POOL_SIZE`. The URL is a secret: it prints as `[REDACTED]`.
///
/// TLS (rustls) follows libpq's parameters, in the URL or as `PG*` variables: `sslmode`
/// (`prefer` by default; `require` encrypts, `verify-ca`/`verify-full` also check the server)
/// and `sslrootcert` (or `PGSSLROOTCERT`), a PEM file with the CA of a managed or private
/// Postgres. Without `sslrootcert` the server is verified against the system's CA bundle
/// (`SSL_CERT_FILE` names another).
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: SecretString,
    pub pool_size: u32,
}

impl PostgresConfig {
    /// Reads the variables; `pool_size` is the service's default for `DATABASE_POOL_SIZE`.
    pub fn from_vars(vars: &Vars, pool_size: u32) -> Result<Self, Error> {
        let url = vars.required(
            "DATABASE_URL",
            "set it to a Postgres URL such as postgres://user:password@127.0.0.1:5432/rocketrides",
        )?;
        let config = Self {
            url: url.into(),
            pool_size: vars.positive("DATABASE_POOL_SIZE", pool_size)?,
        };
        config.options()?;
        Ok(config)
    }

    /// Connection options, checked when the configuration was loaded. Every session gets
    /// server-side timeouts, so a client that hangs or vanishes mid-transaction (a frozen
    /// process, a lost network) cannot hold locks for longer than a few seconds.
    pub fn options(&self) -> Result<PgConnectOptions, Error> {
        let options: PgConnectOptions =
            self.url
                .expose_secret()
                .parse()
                .map_err(|e: sqlx::Error| Error::Invalid {
                    name: "DATABASE_URL",
                    value: redacted(self.url.expose_secret()),
                    reason: e.to_string(),
                })?;
        Ok(options.options(SESSION_TIMEOUTS))
    }

    /// A lazily connecting pool.
    pub fn pool(&self) -> Result<PgPool, Error> {
        self.pool_of(self.pool_size)
    }

    /// A lazily connecting pool of at least `size` connections (`DATABASE_POOL_SIZE` if more),
    /// for work that keeps one connection per task.
    pub fn pool_of(&self, size: u32) -> Result<PgPool, Error> {
        Ok(PgPoolOptions::new()
            .max_connections(size.max(self.pool_size))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(self.options()?))
    }
}

/// A pooled connection kept by one task across its statements. A statement on the pool costs
/// two more round trips (the pool pings a connection when it is taken and when it is given
/// back), a third of a small batch's time. A connection that sat idle is given back and a
/// fresh, tested one taken, so a Postgres restart while idle costs no failed statement.
pub struct KeptConnection {
    pool: PgPool,
    kept: Option<(PoolConnection<Postgres>, Instant)>,
}

impl KeptConnection {
    /// Longer idle than this, and the connection is tested again before use.
    const IDLE: Duration = Duration::from_secs(1);

    pub fn new(pool: PgPool) -> Self {
        Self { pool, kept: None }
    }

    /// The kept connection, or one from the pool.
    pub async fn get(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if let Some((_, used)) = &self.kept
            && used.elapsed() > Self::IDLE
        {
            self.kept = None;
        }
        let conn = match self.kept.take() {
            Some((conn, _)) => conn,
            None => self.pool.acquire().await?,
        };
        let (conn, _) = self.kept.insert((conn, Instant::now()));
        Ok(conn)
    }

    /// Gives the connection back after a failed statement; the pool closes it if it is broken.
    pub fn give_back(&mut self) {
        self.kept = None;
    }
}

/// The URL with any password masked, for error messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_redacted_everywhere_it_is_shown() {
        let vars = Vars::from_pairs(&[("DATABASE_URL", "postgres://rides:s3cret@db:5432/rr")]);
        let config = PostgresConfig::from_vars(&vars, 4).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(config.pool_size, 4);
        assert_eq!(
            redacted("postgres://rides:s3cret@db:5432/rr"),
            "postgres://rides:***@db:5432/rr"
        );
        assert_eq!(redacted("postgres://db/rr"), "postgres://db/rr");
        let bad = Vars::from_pairs(&[(
            "DATABASE_URL",
            "postgres://u:s3cret@db/rr?sslmode=sometimes",
        )]);
        let err = PostgresConfig::from_vars(&bad, 4).unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn tls_modes_and_a_root_certificate_are_accepted() {
        use sqlx::postgres::PgSslMode;
        for (query, mode) in [
            ("sslmode=require", PgSslMode::Require),
            (
                "sslmode=verify-full&sslrootcert=/etc/rocket-rides/ca.pem",
                PgSslMode::VerifyFull,
            ),
            ("sslmode=verify-ca&sslrootcert=/ca.pem", PgSslMode::VerifyCa),
            ("sslmode=disable", PgSslMode::Disable),
        ] {
            let url = format!("postgres://rides:s3cret@db.example.com:5432/rr?{query}");
            let vars = Vars::from_pairs(&[("DATABASE_URL", &url)]);
            let config = PostgresConfig::from_vars(&vars, 1).unwrap();
            let got = config.options().unwrap().get_ssl_mode();
            assert_eq!(format!("{got:?}"), format!("{mode:?}"), "{query}");
        }
    }
}
