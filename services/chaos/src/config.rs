//! The CronJob's settings, from the environment.

use std::{fmt, str::FromStr};

use rocket_rides_platform::{Error, config::Vars};

/// Where the service account's namespace is mounted inside a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The default grace period: the pods' own terminationGracePeriodSeconds default, so a victim
/// drains as it would in a rollout.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u32 = 30;

/// How the victim is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the Eviction API (`pods/eviction`): PodDisruptionBudgets are respected, and a
    /// blocked eviction is reported, not retried.
    Evict,
    /// A plain DELETE: bypasses PodDisruptionBudgets, as a node failure would.
    Delete,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "evict" => Ok(Mode::Evict),
            "delete" => Ok(Mode::Delete),
            _ => Err("expected evict or delete".into()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Evict => "evict",
            Mode::Delete => "delete",
        })
    }
}

/// `NAMESPACE`, else the pod's own (its service account's), if either is known.
pub fn namespace(vars: &Vars) -> Option<String> {
    vars.get("NAMESPACE").map(String::from).or_else(|| {
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .ok()
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
    })
}

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
    /// `MODE`: `evict` (default) or `delete`.
    pub mode: Mode,
    /// `GRACE_PERIOD_SECONDS`: how long the victim may drain before SIGKILL (default 30). 0 is
    /// a force delete (the pod object vanishes before its containers stop, so a StatefulSet may
    /// run two pods of one identity at once) and is refused unless `FORCE=true`.
    pub grace_period_seconds: u32,
    /// `DRY_RUN`: only log the choice.
    pub dry_run: bool,
    /// `EVENTS`: record each run's result as a Kubernetes Event (default true).
    pub events: bool,
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
        let grace_period_seconds: u32 =
            vars.parse_or("GRACE_PERIOD_SECONDS", DEFAULT_GRACE_PERIOD_SECONDS)?;
        if grace_period_seconds == 0 && !vars.flag("FORCE", false)? {
            return Err(Error::invalid(
                "GRACE_PERIOD_SECONDS",
                0,
                "0 force-deletes: the pod object vanishes before its containers stop, so a \
                 StatefulSet may run two pods of one identity at once; use 1 or more seconds, \
                 or set FORCE=true to insist",
            ));
        }
        Ok(Self {
            namespace: namespace(vars),
            pod_name: vars.get("POD_NAME").map(String::from),
            selector: vars
                .get("TARGET_SELECTOR")
                .unwrap_or("rocket-rides/chaos-target=true")
                .to_string(),
            min_age_seconds,
            mode: vars.parse_or("MODE", Mode::Evict)?,
            grace_period_seconds,
            dry_run: vars.flag("DRY_RUN", false)?,
            events: vars.flag("EVENTS", true)?,
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
            (60, 30)
        );
        assert_eq!(settings.mode, Mode::Evict);
        assert!(!settings.dry_run);
        assert!(settings.events);
        for (name, value) in [
            ("MIN_AGE_SECONDS", "-1"),
            ("DRY_RUN", "maybe"),
            ("GRACE_PERIOD_SECONDS", "x"),
            ("GRACE_PERIOD_SECONDS", "-1"),
            ("MODE", "kill"),
            ("EVENTS", "sometimes"),
        ] {
            let err = Settings::from_vars(&Vars::from_pairs(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_zero_grace_period_is_refused_unless_forced() {
        let err = Settings::from_vars(&Vars::from_pairs(&[("GRACE_PERIOD_SECONDS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GRACE_PERIOD_SECONDS") && err.contains("FORCE=true"),
            "{err}"
        );
        let forced = Settings::from_vars(&Vars::from_pairs(&[
            ("GRACE_PERIOD_SECONDS", "0"),
            ("FORCE", "true"),
        ]))
        .unwrap();
        assert_eq!(forced.grace_period_seconds, 0);
        let one = Settings::from_vars(&Vars::from_pairs(&[
            ("GRACE_PERIOD_SECONDS", "1"),
            ("MODE", "Delete"),
        ]))
        .unwrap();
        assert_eq!((one.grace_period_seconds, one.mode), (1, Mode::Delete));
    }
}
