//! The plumbing every Rocket Rides service shares: typed configuration, the supervised runner,
//! logging and tracing, Prometheus metrics, the Postgres pool and Redis connection, gRPC health
//! and reflection, shutdown on signals. What the log *is* lives in `rocket-rides-log`.

pub mod config;
mod error;
pub mod grpc;
pub mod grpc_layer;
pub mod health;
pub mod postgres;
pub mod prometheus;
pub mod redis_conn;
pub mod retry;
pub mod runner;
pub mod shutdown;
pub mod telemetry;

pub use error::{BoxError, Error};
