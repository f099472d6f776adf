//! Logging: `LOG_FORMAT=text` (default, for people) or `json` (one object per line, for log
//! pipelines), filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{ConfigError, config};

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() -> Result<(), ConfigError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match config::var("LOG_FORMAT").as_deref().unwrap_or("text") {
        "text" => registry.with(fmt::layer().with_target(false)).init(),
        "json" => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .init(),
        other => {
            return Err(ConfigError::Invalid {
                name: "LOG_FORMAT",
                value: other.into(),
                reason: "expected text or json".into(),
            });
        }
    }
    Ok(())
}
