//! The CronJob's settings, from the environment.

use rocket_rides_platform::{Error, config};

/// Where the service account's namespace is mounted inside a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, Clone)]
pub struct Settings {
    /// `NAMESPACE`, else the pod's own, else the client's default.
    pub namespace: Option<String>,
    /// `POD_NAME`: this pod, never a victim.
    pub pod_name: Option<String>,
    /// `TARGET_SELECTOR`: which pods may be killed.
    pub selector: String,
    /// `MIN_AGE_SECONDS`: pods younger than this are spared (let them settle first).
    pub min_age_seconds: i64,
    /// `GRACE_PERIOD_SECONDS`: 0 kills at once, as a crash would.
    pub grace_period_seconds: u32,
    /// `DRY_RUN`: only log the choice.
    pub dry_run: bool,
}

impl Settings {
    pub fn from_env() -> Result<Self, Error> {
        let dry_run = match config::var("DRY_RUN")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => false,
            Some(v) if ["1", "true", "yes"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no"].contains(&v.as_str()) => false,
            Some(v) => {
                return Err(Error::Invalid {
                    name: "DRY_RUN",
                    value: v,
                    reason: "expected true or false".into(),
                });
            }
        };
        let min_age_seconds: i64 = config::parse_or("MIN_AGE_SECONDS", 60)?;
        if min_age_seconds < 0 {
            return Err(Error::Invalid {
                name: "MIN_AGE_SECONDS",
                value: min_age_seconds.to_string(),
                reason: "expected 0 or more seconds".into(),
            });
        }
        Ok(Self {
            namespace: config::var("NAMESPACE").or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            }),
            pod_name: config::var("POD_NAME"),
            selector: config::var("TARGET_SELECTOR")
                .unwrap_or_else(|| "rocket-rides/chaos-target=true".into()),
            min_age_seconds,
            grace_period_seconds: config::parse_or("GRACE_PERIOD_SECONDS", 0)?,
            dry_run,
        })
    }
}
