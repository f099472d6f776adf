//! `rocket-rides-streamer`: see the library. Serves health on LISTEN_ADDR (default
//! 0.0.0.0:50053). `republish` and `rewind` repair the log and exit (see `repair`).

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use rocket_rides_platform::{config::Vars, runner, telemetry};
use rocket_rides_streamer::{Config, NAME, repair, run};

#[derive(Parser)]
#[command(
    name = "rocket-rides-streamer",
    version,
    about = "Stream the log: number committed records and append them to the partitions' \
             streams; with a command, repair the log and exit",
    after_help = "Configured by environment variables (DATABASE_URL, REDIS_URL, STREAM_NAME, \
                  LOG_PARTITIONS, LISTEN_ADDR, METRICS_ADDR, ...; see the README). Exit codes: 0, \
                  1 on failure, 2 on bad usage or configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Redis lost data: rewrite the entries the stream lacks from the archive, then exit
    /// (non-zero, naming each partition it could not repair, if any).
    Republish,
    /// Postgres was restored: drop the entries Postgres no longer has, then exit.
    Rewind,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Self::Republish => "republish",
            Self::Rewind => "rewind",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        None => runner::main(NAME, Config::from_vars, run).await,
        Some(command) => operate(command).await,
    }
}

/// Runs one repair with the streamer's own configuration.
async fn operate(repair: Command) -> ExitCode {
    let command = repair.name();
    let vars = Vars::from_env();
    let loaded = Config::from_vars(&vars)
        .and_then(|config| Ok((telemetry::init(&config.common.telemetry)?, config)));
    let (telemetry, config) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{NAME} {command}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        let pool = config.postgres.pool()?;
        let mut redis = config.redis.connect(Duration::from_secs(30))?;
        let done = match repair {
            Command::Republish => repair::republish(&config, &pool, &mut redis).await,
            Command::Rewind => repair::rewind(&config, &pool, &mut redis).await,
        };
        pool.close().await;
        Ok::<_, Box<dyn std::error::Error>>(done?)
    }
    .await;
    let code = match result {
        Ok(count) => {
            println!("{command}: {count} entries");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "{command} failed");
            eprintln!("{command}: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn parses_the_commands() {
        Cli::command().debug_assert();
        assert!(
            Cli::try_parse_from(["rocket-rides-streamer"])
                .unwrap()
                .command
                .is_none()
        );
        for name in ["republish", "rewind"] {
            let cli = Cli::try_parse_from(["rocket-rides-streamer", name]).unwrap();
            assert_eq!(cli.command.map(Command::name), Some(name));
        }
        let unknown = Cli::try_parse_from(["rocket-rides-streamer", "stream"])
            .err()
            .unwrap();
        assert_eq!(unknown.exit_code(), 2);
    }
}
