//! `rocket-rides-streamer`: see the library. Serves health on LISTEN_ADDR (default
//! 0.0.0.0:50053).

use std::process::ExitCode;

use rocket_rides_streamer::{Config, NAME, run};

#[tokio::main]
async fn main() -> ExitCode {
    rocket_rides_platform::runner::main(NAME, Config::from_vars, run).await
}
