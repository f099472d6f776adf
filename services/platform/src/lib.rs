//! What every Rocket Rides service shares: configuration from the environment, logging, the
//! Postgres pool and schema, the Redis connection, gRPC health and reflection, shutdown on
//! signals, and the log record that travels from the outbox through the stream to consumers.

pub mod config;
pub mod db;
mod error;
pub mod grpc;
pub mod grpc_layer;
pub mod health;
pub mod metrics;
pub mod record;
pub mod redis;
pub mod retry;
pub mod shutdown;
pub mod stream;
pub mod telemetry;

pub use error::Error;
