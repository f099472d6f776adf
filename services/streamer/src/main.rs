//! `rocket-rides-streamer`: see the library. Serves health on LISTEN_ADDR (default
//! 0.0.0.0:50053). `republish` and `rewind` repair the log and exit (see `repair`).

use std::{process::ExitCode, time::Duration};

use rocket_rides_platform::{config::Vars, runner, telemetry};
use rocket_rides_streamer::{Config, NAME, repair, run};

const USAGE: &str = "usage: rocket-rides-streamer [republish|rewind]
  (no argument)  stream the log
  republish      Redis lost data: rewrite the entries the stream lacks from the archive, then exit
                 (non-zero, naming each partition it could not repair, if any)
  rewind         Postgres was restored: drop the entries Postgres no longer has, then exit";

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => runner::main(NAME, Config::from_vars, run).await,
        Some(command @ ("republish" | "rewind")) => operate(command).await,
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

/// Runs one repair with the streamer's own configuration.
async fn operate(command: &str) -> ExitCode {
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
        let done = match command {
            "republish" => repair::republish(&config, &pool, &mut redis).await,
            _ => repair::rewind(&config, &pool, &mut redis).await,
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
