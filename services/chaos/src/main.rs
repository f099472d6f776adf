//! `rocket-rides-chaos`: run by a Kubernetes CronJob, it removes one random pod among those
//! matching TARGET_SELECTOR in its namespace that are old enough, never itself, then exits.
//! MODE=evict (default) goes through the Eviction API and so respects PodDisruptionBudgets (a
//! blocked eviction is reported, not retried); MODE=delete deletes, as a node failure would.
//! Either way the victim gets GRACE_PERIOD_SECONDS (default 30) to drain. With DRY_RUN=true it
//! only says which pod it would have removed. Each run's result is a log line and, with
//! EVENTS=true (default), a Kubernetes Event.
//!
//! `rocket-rides-chaos ensure-secret --name <secret> --key <key> [--key <key> ...]
//! [--label <name>=<value> ...]` is the binary's other job, the chart's generated passwords:
//! it creates the Secret with a random 32-character alphanumeric value per key (OS RNG) when it
//! does not exist, and leaves an existing one untouched (a 409 from a concurrent create counts
//! as success). See [`ensure_secret`].

mod choose;
mod config;
mod ensure_secret;
mod events;
mod kill;

use anyhow::Context;
use rocket_rides_platform::{config::Vars, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => chaos().await,
        Some("ensure-secret") => {
            let request =
                ensure_secret::Request::from_args(&args[1..]).map_err(anyhow::Error::msg)?;
            ensure_secret(request).await
        }
        Some("-h" | "--help") => {
            println!(
                "rocket-rides-chaos: one chaos run, configured by the environment\n{}",
                ensure_secret::USAGE
            );
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "unexpected argument {other:?}: no arguments (a chaos run) or ensure-secret; {}",
            ensure_secret::USAGE
        ),
    }
}

async fn client(retries: bool) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("cannot find the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let client = if retries {
        kube::Client::try_from(config)
    } else {
        kill::client_without_retries(config)
    };
    client.context("cannot build a Kubernetes client from the in-cluster config or KUBECONFIG")
}

async fn ensure_secret(request: ensure_secret::Request) -> anyhow::Result<()> {
    let vars = Vars::from_env();
    let telemetry = telemetry::init(&telemetry::Config::from_vars(
        &vars,
        "rocket-rides-ensure-secret",
    )?)?;
    let result = async {
        let client = client(true).await?;
        let namespace =
            config::namespace(&vars).unwrap_or_else(|| client.default_namespace().to_string());
        let mut rng = rand::TryRngCore::unwrap_err(rand::rngs::OsRng);
        ensure_secret::ensure(client, &namespace, &request, &mut rng)
            .await
            .map(|outcome| (namespace.clone(), outcome))
            .with_context(|| {
                format!(
                    "check that the Job's Role may get secrets/{} and create secrets in {namespace:?}",
                    request.name
                )
            })
    }
    .await;
    match &result {
        Ok((namespace, outcome)) => {
            tracing::info!(secret = %request.name, namespace, %outcome, "ensure-secret done")
        }
        Err(e) => {
            tracing::error!(secret = %request.name, error = format!("{e:#}"), "ensure-secret failed")
        }
    }
    telemetry.shutdown().await;
    result.map(|_| ())
}

async fn chaos() -> anyhow::Result<()> {
    let vars = Vars::from_env();
    let telemetry = telemetry::init(&telemetry::Config::from_vars(&vars, "rocket-rides-chaos")?)?;
    let settings = config::Settings::from_vars(&vars)?;
    let client = client(false).await?;
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
