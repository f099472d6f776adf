//! `rocket-rides-chaos`: run by a Kubernetes CronJob, it deletes one random pod among those
//! matching TARGET_SELECTOR in its namespace that are old enough, never itself, then exits.
//! With DRY_RUN=true it only says which pod it would have deleted.

mod choose;
mod config;
mod kill;

use anyhow::Context;
use rocket_rides_platform::{config::Vars, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vars = Vars::from_env();
    let telemetry = telemetry::init(&telemetry::Config::from_vars(&vars, "rocket-rides-chaos")?)?;
    let settings = config::Settings::from_vars(&vars)?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let result = kill::run(client, &namespace, &settings, &mut rand::rng()).await;
    telemetry.shutdown().await;
    let outcome = result.with_context(|| {
        format!("chaos run failed; check that its Role may list and delete pods in {namespace:?}")
    })?;
    tracing::info!(%outcome, "chaos run done");
    Ok(())
}
