//! `make bench`: how fast the pipeline is next to what its parts can do on this machine, with
//! production durability. `measure` runs the measurements against references on the same
//! Postgres and Redis (pgbench running the original's plain transaction, h2load as an
//! independent client, redis-benchmark's XADD); `report`
//! writes target/bench/report.md with SVG charts beside it. `BENCH_SECONDS`, `BENCH_RUNS` and
//! `BENCH_BACKLOG` shorten or lengthen it (see `measure::Settings`).

mod chart;
mod cpu;
mod measure;
mod report;

use std::path::PathBuf;

use rocket_rides_tests::System;

use crate::{measure::Settings, report::Results};

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    let sys = System::start_durable().await;
    let mut api = sys.api(&measure::QUIET);
    api.start_ready().await;

    let create_ride = measure::create_ride(&sys, &api, &settings).await;
    let limit = measure::limit(&sys, &settings).await;
    let rates = measure::rates(&sys, &settings).await;
    let backlog = measure::backlog(&sys, &settings).await;
    // End to end under a moderate background load (the rate the latency target is set at).
    let end_to_end = measure::end_to_end(&sys, &api, measure::END_TO_END_RATE, &settings).await;
    // A steady moderate load, where per-record costs used to be high.
    let steady = measure::end_to_end(&sys, &api, 1000.0, &settings).await;
    let overload = measure::overload(&sys, &api, 1000, settings.secs.max(10)).await;

    // The log's throughput by partitions, on this Redis and on a 3-master cluster.
    let mut partitioned = Vec::new();
    for partitions in [1, 2, 4, measure::MAX_PARTITIONS] {
        partitioned.push(measure::log_rates(&sys, &settings, partitions).await);
    }
    drop(api);
    drop(sys);
    let cluster = System::start_durable_on_cluster().await;
    for partitions in [1, 2, 4, measure::MAX_PARTITIONS] {
        partitioned.push(measure::log_rates(&cluster, &settings, partitions).await);
    }

    let results = Results {
        settings,
        create_ride,
        limit,
        rates,
        end_to_end,
        steady,
        overload,
        partitioned,
        backlog,
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    println!("{}", report::write(&results, &dir));
    println!("written to {}", dir.join("report.md").display());
}
