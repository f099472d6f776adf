//! `rocket-rides-secrets`: the chart's generated passwords. `ensure` creates a Secret with a
//! random value per key when it does not exist and never touches an existing one (see
//! [`ensure`]). Its own binary, apart from the chaos killer: a pod that mints passwords should
//! not also be able to kill pods, nor run the code that does.

mod ensure;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rocket_rides_platform::{config::Vars, telemetry};

#[derive(Parser)]
#[command(
    name = "rocket-rides-secrets",
    version,
    about = "Create the Kubernetes Secrets of generated passwords, once",
    after_help = "Talks to the Kubernetes API with the in-cluster config (or KUBECONFIG). \
                  Logging: RUST_LOG, LOG_FORMAT (text or json)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the Secret NAME with a random 32-character alphanumeric value for each KEY if it
    /// does not exist; leave an existing one untouched (fail if it lacks a key).
    #[command(alias = "ensure-secret")]
    Ensure {
        /// The Secret's name.
        #[arg(long)]
        name: String,
        /// A key to fill with a random value (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// A label of the created Secret, name=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// An annotation of the created Secret, name=value (repeatable).
        #[arg(long = "annotation")]
        annotations: Vec<String>,
        /// The namespace; default: the pod's own (its service account's), else the client's.
        #[arg(long, env = "NAMESPACE")]
        namespace: Option<String>,
    },
}

impl Command {
    /// The request and the namespace the command line asks for.
    fn into_request(self) -> Result<(ensure::Request, Option<String>), String> {
        let Command::Ensure {
            name,
            keys,
            labels,
            annotations,
            namespace,
        } = self;
        Ok((
            ensure::Request::new(name, keys, &labels, &annotations)?,
            namespace,
        ))
    }
}

/// Where the service account's namespace is mounted inside a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[tokio::main]
async fn main() -> ExitCode {
    let (request, namespace) = match Cli::parse().command.into_request() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("rocket-rides-secrets ensure: {e}");
            return ExitCode::from(2);
        }
    };
    match run(request, namespace).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocket-rides-secrets ensure: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(request: ensure::Request, namespace: Option<String>) -> anyhow::Result<()> {
    let vars = Vars::from_env();
    let telemetry = telemetry::init(&telemetry::Config::from_vars(
        &vars,
        "rocket-rides-secrets",
    )?)?;
    let result = async {
        let config = kube::Config::infer()
            .await
            .context("cannot find the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let client = kube::Client::try_from(config)
            .context("cannot build a Kubernetes client from the in-cluster config or KUBECONFIG")?;
        let namespace = namespace
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| client.default_namespace().to_string());
        let mut rng = rand::TryRngCore::unwrap_err(rand::rngs::OsRng);
        ensure::ensure(client, &namespace, &request, &mut rng)
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
            tracing::info!(secret = %request.name, namespace, %outcome, "ensure done")
        }
        Err(e) => {
            tracing::error!(secret = %request.name, error = format!("{e:#}"), "ensure failed")
        }
    }
    telemetry.shutdown().await;
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_parses_as_the_chart_writes_it() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "rocket-rides-secrets",
            "ensure",
            "--name=demo-rocket-rides-redis",
            "--key=redis-password",
            "--label=app.kubernetes.io/managed-by=Helm",
            "--annotation=meta.helm.sh/release-name=demo",
            "--namespace=rides",
        ])
        .unwrap();
        let (request, namespace) = cli.command.into_request().unwrap();
        assert_eq!(request.name, "demo-rocket-rides-redis");
        assert_eq!(request.keys, ["redis-password"]);
        assert_eq!(request.labels["app.kubernetes.io/managed-by"], "Helm");
        assert_eq!(request.annotations["meta.helm.sh/release-name"], "demo");
        assert_eq!(namespace.as_deref(), Some("rides"));
        // A key is required.
        assert!(Cli::try_parse_from(["rocket-rides-secrets", "ensure", "--name=x"]).is_err());
    }
}
