//! `rocket-rides-api`: serves `rocketrides.v1.RideService` on LISTEN_ADDR (default
//! 0.0.0.0:50051). `rocket-rides-api migrate` applies the database schema and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rocket_rides_api::{Config, NAME};
use rocket_rides_platform::{config::Vars, postgres::PostgresConfig, runner, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "rocket-rides-api",
    version,
    about = "Serve rocketrides.v1.RideService on LISTEN_ADDR (default 0.0.0.0:50051); with a \
             command, run it and exit",
    after_help = "Configured by environment variables (DATABASE_URL, LISTEN_ADDR, LOG_PARTITIONS, \
                  METRICS_ADDR, ...; see the README). Exit codes: 0, 1 on failure, 2 on bad usage \
                  or configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database schema (and LOG_PARTITIONS to a new log) and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        None => runner::main(NAME, Config::from_vars, rocket_rides_api::run).await,
        Some(Command::Migrate) => migrate().await,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn parses_the_commands() {
        Cli::command().debug_assert();
        let migrate = Cli::try_parse_from(["rocket-rides-api", "migrate"]).unwrap();
        assert!(matches!(migrate.command, Some(Command::Migrate)));
        let unknown = Cli::try_parse_from(["rocket-rides-api", "serve"])
            .err()
            .unwrap();
        assert_eq!(unknown.exit_code(), 2);
    }
}
