//! Client spans for calls to Postgres and Redis, in one recipe, so every service's traces show
//! its dependencies the same way.

/// A client span for Postgres work, named for the statements it runs.
pub fn postgres(statement: &'static str) -> tracing::Span {
    tracing::info_span!(
        "postgres",
        otel.name = statement,
        otel.kind = "client",
        db.system = "postgresql",
    )
}

/// A client span for a Redis command (or pipeline of them).
pub fn redis(command: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = command,
        otel.kind = "client",
        db.system = "redis",
    )
}
