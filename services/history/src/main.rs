//! `rocket-rides-history`: see the library. Serves HistoryService on LISTEN_ADDR (default
//! 0.0.0.0:50055).

use std::process::ExitCode;

use rocket_rides_history::{Config, NAME, run};

#[tokio::main]
async fn main() -> ExitCode {
    rocket_rides_platform::runner::main(NAME, Config::from_vars, run).await
}
