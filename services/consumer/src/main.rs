//! `rocket-rides-consumer`: see the library. Serves ConsumerService on LISTEN_ADDR (default
//! 0.0.0.0:50052).

use std::process::ExitCode;

use rocket_rides_consumer::{Config, NAME, run};

#[tokio::main]
async fn main() -> ExitCode {
    rocket_rides_platform::runner::main(NAME, Config::from_vars, run).await
}
