//! `rocket-rides-api`: serves `rocketrides.v1.RideService` on LISTEN_ADDR (default
//! 0.0.0.0:50051). `rocket-rides-api migrate` applies the database schema and exits.

use std::process::ExitCode;

use rocket_rides_api::{Config, NAME};
use rocket_rides_platform::{config::Vars, postgres::PostgresConfig, runner, shutdown, telemetry};

const USAGE: &str = "usage: rocket-rides-api [migrate]\n  (no argument)  serve RideService on LISTEN_ADDR\n  migrate         apply the database schema (and LOG_PARTITIONS to a new log) and exit";

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => runner::main(NAME, Config::from_vars, rocket_rides_api::run).await,
        Some("migrate") => migrate().await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn migrate() -> ExitCode {
    let cancel = shutdown::on_signal();
    let vars = Vars::from_env();
    let loaded = telemetry::Config::from_vars(&vars, NAME).and_then(|t| {
        let postgres = PostgresConfig::from_vars(&vars, 2)?;
        let partitions = vars.parse::<i32>("LOG_PARTITIONS")?;
        Ok((telemetry::init(&t)?, postgres, partitions))
    });
    let (telemetry, postgres, partitions) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{NAME} migrate: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rocket_rides_api::migrate(&postgres, partitions, cancel).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "migrate failed");
    }
    telemetry.shutdown().await;
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
