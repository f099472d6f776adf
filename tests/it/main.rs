//! The integration tests: real Postgres, Redis and service processes, driven through gRPC and
//! checked in SQL, GetTotal, health and metrics. One binary, one module per area, so they
//! compile and link once. Run one with e.g.
//! `cargo test -p rocket-rides-tests --test it -- pipeline::totals_are_exact_under_concurrent_load`.

mod api;
mod cluster;
mod dead_letters;
mod failures;
mod groups;
mod history;
mod log;
mod observability;
mod partitions;
mod pipeline;
mod readers;
mod redis_full;
mod repair;
mod soak;
mod startup;

use std::time::Duration;

/// How long the pipeline may take to catch up after load or a failure.
const CAUGHT_UP: Duration = Duration::from_secs(120);
