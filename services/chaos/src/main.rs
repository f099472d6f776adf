//! `rocket-rides-chaos`: run by a Kubernetes CronJob, it removes one random pod among those
//! matching TARGET_SELECTOR in its namespace that are old enough, never itself, then exits.
//! MODE=evict (default) goes through the Eviction API and so respects PodDisruptionBudgets (a
//! blocked eviction is reported, not retried); MODE=delete deletes, as a node failure would.
//! Either way the victim gets GRACE_PERIOD_SECONDS (default 30) to drain. With DRY_RUN=true it
//! only says which pod it would have removed. Each run's result is a log line and, with
//! EVENTS=true (default), a Kubernetes Event. (The chart's generated passwords are
//! `rocket-rides-secrets`'s job, not this binary's.)

mod choose;
mod config;
mod events;
mod kill;

use anyhow::Context;
use rocket_rides_platform::{config::Vars, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => chaos().await,
        Some("-h" | "--help") => {
            println!(
                "rocket-rides-chaos: one chaos run, configured by the environment (TARGET_SELECTOR, \
                 MODE, GRACE_PERIOD_SECONDS, MIN_AGE_SECONDS, DRY_RUN, EVENTS, NAMESPACE)"
            );
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "unexpected argument {other:?}: rocket-rides-chaos takes none (its settings come from \
             the environment); generated passwords moved to `rocket-rides-secrets ensure`"
        ),
    }
}

/// Without retries: a blocked eviction (429) is reported, not retried.
async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("cannot find the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    kill::client_without_retries(config)
        .context("cannot build a Kubernetes client from the in-cluster config or KUBECONFIG")
}

async fn chaos() -> anyhow::Result<()> {
    let vars = Vars::from_env();
    let telemetry = telemetry::init(&telemetry::Config::from_vars(&vars, "rocket-rides-chaos")?)?;
    let settings = config::Settings::from_vars(&vars)?;
    let client = client().await?;
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let result = kill::run(client.clone(), &namespace, &settings, &mut rand::rng()).await;
    match &result {
        Ok(outcome @ kill::Outcome::EvictionBlocked { .. }) => {
            tracing::warn!(%outcome, mode = %settings.mode, "chaos run done")
        }
        Ok(outcome) => tracing::info!(%outcome, mode = %settings.mode, "chaos run done"),
        Err(e) => tracing::error!(error = %e, mode = %settings.mode, "chaos run failed"),
    }
    if settings.events {
        events::record(client, &namespace, &settings, &result).await;
    }
    telemetry.shutdown().await;
    result.with_context(|| {
        format!(
            "chaos run failed; check that its Role may list pods and {} them in {namespace:?}",
            match settings.mode {
                config::Mode::Evict => "create pods/eviction for",
                config::Mode::Delete => "delete",
            }
        )
    })?;
    Ok(())
}
