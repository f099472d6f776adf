//! The CronJob's settings, from the environment.

use rocket_rides_platform::{Error, config::Vars};

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
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let min_age_seconds: i64 = vars.parse_or("MIN_AGE_SECONDS", 60)?;
        if min_age_seconds < 0 {
            return Err(Error::invalid(
                "MIN_AGE_SECONDS",
                min_age_seconds,
                "expected 0 or more seconds",
            ));
        }
        Ok(Self {
            namespace: vars.get("NAMESPACE").map(String::from).or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            }),
            pod_name: vars.get("POD_NAME").map(String::from),
            selector: vars
                .get("TARGET_SELECTOR")
                .unwrap_or("rocket-rides/chaos-target=true")
                .to_string(),
            min_age_seconds,
            grace_period_seconds: vars.parse_or("GRACE_PERIOD_SECONDS", 0)?,
            dry_run: vars.flag("DRY_RUN", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let settings = Settings::from_vars(&Vars::from_pairs(&[("NAMESPACE", "rides")])).unwrap();
        assert_eq!(settings.namespace.as_deref(), Some("rides"));
        assert_eq!(settings.selector, "rocket-rides/chaos-target=true");
        assert_eq!(
            (settings.min_age_seconds, settings.grace_period_seconds),
            (60, 0)
        );
        assert!(!settings.dry_run);
        for (name, value) in [
            ("MIN_AGE_SECONDS", "-1"),
            ("DRY_RUN", "maybe"),
            ("GRACE_PERIOD_SECONDS", "x"),
        ] {
            let err = Settings::from_vars(&Vars::from_pairs(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
