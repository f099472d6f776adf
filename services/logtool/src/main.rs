//! `rocket-rides-log`: look inside the log. Reads Redis and Postgres with the services' own
//! variables (`REDIS_URL`, `DATABASE_URL`, `STREAM_NAME`); changes nothing but dead letters,
//! and those only with `--execute`. Exits 0, 1 on failure, 2 on bad usage or configuration.

mod consumers;
mod dead_letters;
mod info;
mod print;
mod range;
mod tail;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rocket_rides_log::{archive, partition, stream::DEFAULT_STREAM};
use rocket_rides_platform::{
    config::Vars, postgres::PostgresConfig, redis_conn::RedisConfig, redis_conn::RedisConnection,
};
use sqlx::PgPool;

use crate::print::Printer;

#[derive(Parser)]
#[command(
    name = "rocket-rides-log",
    version,
    about = "Look inside the Rocket Rides log: follow it, read it by seq, see its partitions and \
             who consumes it, handle its dead letters",
    after_help = "Connects with the services' variables: REDIS_URL (a comma-separated list for a \
                  Redis Cluster), DATABASE_URL, STREAM_NAME. Colour when stdout is a terminal \
                  (NO_COLOR turns it off)."
)]
struct Cli {
    /// One JSON object per line (tail, range, revrange) or one JSON document (info, consumers,
    /// dead-letters).
    #[arg(long, global = true)]
    json: bool,
    /// The log's name.
    #[arg(long, global = true, env = "STREAM_NAME", default_value = DEFAULT_STREAM)]
    stream: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Follow the log live: every partition (or one), from now or from a seq.
    Tail {
        #[arg(long, short)]
        partition: Option<i32>,
        /// Start at this seq in each partition followed (default: only new entries).
        #[arg(long)]
        from: Option<i64>,
    },
    /// Read records by seq, oldest first; the archive in Postgres serves what the stream has
    /// trimmed.
    Range(range::Args),
    /// Read records by seq, newest first.
    Revrange(range::Args),
    /// The log's partitions: stream lengths, first and last seq, epochs, the archive's range.
    Info,
    /// Every checkpointed consumer and consumer group: position, lag (entries and seconds),
    /// pending entries.
    Consumers,
    /// The entries readers set aside: list them, send them back to their group, or drop them.
    #[command(subcommand)]
    DeadLetters(dead_letters::Command),
}

/// Bad usage or configuration: exit code 2, as for what clap refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(String);

/// What a command reads from.
pub struct Log {
    pub stream: String,
    pub partitions: i32,
    pub pool: PgPool,
    pub redis: RedisConfig,
}

impl Log {
    pub fn connect(&self) -> anyhow::Result<RedisConnection> {
        Ok(self.redis.connect(std::time::Duration::from_secs(10))?)
    }

    pub fn stream_key(&self, p: i32) -> String {
        partition::stream_key(&self.stream, p)
    }

    /// The partitions `only` selects (all without it), checked.
    pub fn partitions(&self, only: Option<i32>) -> anyhow::Result<Vec<i32>> {
        match only {
            None => Ok((0..self.partitions).collect()),
            Some(p) if (0..self.partitions).contains(&p) => Ok(vec![p]),
            Some(p) => Err(Usage(format!(
                "no partition {p}: the log has {} (0 to {})",
                self.partitions,
                self.partitions - 1
            ))
            .into()),
        }
    }
}

async fn open(stream: String) -> anyhow::Result<Log> {
    let vars = Vars::from_env();
    let usage = |e: &dyn std::fmt::Display| Usage(e.to_string());
    let redis = RedisConfig::from_vars(&vars).map_err(|e| usage(&e))?;
    let pool = PostgresConfig::from_vars(&vars, 2)
        .map_err(|e| usage(&e))?
        .pool()?;
    let (_, _, partitions) = archive::log(&pool)
        .await
        .context("cannot read the log's head from Postgres (DATABASE_URL)")?;
    Ok(Log {
        stream,
        partitions,
        pool,
        redis,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let log = open(cli.stream).await?;
    let out = Printer::new(cli.json);
    match cli.command {
        Command::Tail { partition, from } => tail::run(&log, &out, partition, from).await,
        Command::Range(args) => range::run(&log, &out, &args, false).await,
        Command::Revrange(args) => range::run(&log, &out, &args, true).await,
        Command::Info => info::run(&log, &out).await,
        Command::Consumers => consumers::run(&log, &out).await,
        Command::DeadLetters(command) => dead_letters::run(&log, &out, command).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocket-rides-log: {e:#}");
            match e.downcast_ref::<Usage>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}
