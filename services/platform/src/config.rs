//! Configuration. Each service has one typed `Config`, loaded once at start-up from `Vars`
//! (the environment, or a fixed set in tests); nothing else reads the environment. Every error
//! names the variable, what was wrong and what is expected.

use std::{collections::HashMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

use crate::{Error, grpc::ServerTls, telemetry};

/// Variables to configure from. Empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct Vars(HashMap<String, String>);

impl Vars {
    /// The process's environment.
    pub fn from_env() -> Self {
        Self(std::env::vars().collect())
    }

    /// A fixed set, for tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The variable's value, treating an empty value as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A variable that must be set; `hint` says what to put in it.
    pub fn required(&self, name: &'static str, hint: &'static str) -> Result<&str, Error> {
        self.get(name).ok_or(Error::Missing { name, hint })
    }

    /// A variable parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(name)?.unwrap_or(default))
    }

    /// A variable parsed as `T`, if set.
    pub fn parse<T>(&self, name: &'static str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(name)
            .map(|value| {
                value.trim().parse().map_err(|e: T::Err| Error::Invalid {
                    name,
                    reason: e.to_string(),
                    value: value.into(),
                })
            })
            .transpose()
    }

    /// A probability between 0 and 1, for the failure simulations (default 0).
    pub fn rate(&self, name: &'static str) -> Result<f64, Error> {
        let rate: f64 = self.parse_or(name, 0.0)?;
        if (0.0..=1.0).contains(&rate) {
            Ok(rate)
        } else {
            Err(Error::invalid(name, rate, "expected a number from 0 to 1"))
        }
    }

    /// A count that must be at least 1, such as a batch size.
    pub fn positive(&self, name: &'static str, default: u32) -> Result<u32, Error> {
        match self.parse_or(name, default)? {
            0 => Err(Error::invalid(
                name,
                0,
                "expected a whole number of at least 1",
            )),
            n => Ok(n),
        }
    }

    /// A duration such as `30s`, `10m`, `24h` or `7d` (a bare number is seconds).
    pub fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, Error> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        let value = value.trim();
        let split = value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len());
        let unit = match &value[split..] {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        match value[..split].parse::<u64>() {
            Ok(n) if unit > 0 && n > 0 => Ok(Duration::from_secs(n * unit)),
            _ => Err(Error::invalid(
                name,
                value,
                "expected a duration such as 30s, 10m, 24h or 7d",
            )),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, Error> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(other) => Err(Error::invalid(name, other, "expected true or false")),
        }
    }
}

/// This machine's host name (a pod's name on Kubernetes): the default name of an instance in a
/// group.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// `0.0.0.0:<port>`: the default listen address of a service.
pub const fn all_interfaces(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)
}

/// What every long-running service is configured with, besides its own settings.
#[derive(Debug, Clone)]
pub struct Common {
    /// `LISTEN_ADDR`: the gRPC server (health at least).
    pub listen_addr: SocketAddr,
    /// `METRICS_ADDR`: Prometheus `/metrics`; off when unset.
    pub metrics_addr: Option<SocketAddr>,
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`: serve gRPC over TLS.
    pub tls: Option<ServerTls>,
    /// `HEALTH_ADDR`: also serve `grpc.health.v1.Health` alone, in plaintext, here (for the
    /// kubelet's gRPC probes, which cannot speak TLS); off when unset.
    pub health_addr: Option<SocketAddr>,
    pub telemetry: telemetry::Config,
}

impl Common {
    pub fn from_vars(
        vars: &Vars,
        service: &'static str,
        default_listen_addr: SocketAddr,
    ) -> Result<Self, Error> {
        Ok(Self {
            listen_addr: vars.parse_or("LISTEN_ADDR", default_listen_addr)?,
            metrics_addr: vars.parse("METRICS_ADDR")?,
            tls: ServerTls::from_vars(vars)?,
            health_addr: vars.parse("HEALTH_ADDR")?,
            telemetry: telemetry::Config::from_vars(vars, service)?,
        })
    }
}

/// A service's whole configuration, as the runner needs to see it.
pub trait ServiceConfig {
    fn common(&self) -> &Common;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_unset_and_errors_name_the_variable() {
        let vars = Vars::from_pairs(&[("A", " "), ("N", "x"), ("R", "1.5"), ("Z", "0")]);
        assert_eq!(vars.get("A"), None);
        assert_eq!(vars.parse_or("A", 7u32).unwrap(), 7);
        let err = vars.parse_or::<u32>("N", 1).unwrap_err().to_string();
        assert!(err.starts_with("N=\"x\" is not valid"), "{err}");
        assert!(
            vars.rate("R")
                .unwrap_err()
                .to_string()
                .contains("from 0 to 1")
        );
        assert!(vars.positive("Z", 5).is_err());
        assert_eq!(vars.positive("unset", 5).unwrap(), 5);
        let missing = vars.required("DATABASE_URL", "set it").unwrap_err();
        assert_eq!(missing.to_string(), "DATABASE_URL is required: set it");
    }

    #[test]
    fn durations() {
        let vars = Vars::from_pairs(&[
            ("A", "30s"),
            ("B", "7d"),
            ("C", "90"),
            ("D", "1w"),
            ("E", "0s"),
        ]);
        assert_eq!(
            vars.duration("A", Duration::ZERO).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            vars.duration("B", Duration::ZERO).unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            vars.duration("C", Duration::ZERO).unwrap(),
            Duration::from_secs(90)
        );
        assert!(vars.duration("D", Duration::ZERO).is_err());
        assert!(vars.duration("E", Duration::ZERO).is_err());
        assert_eq!(
            vars.duration("unset", Duration::from_secs(5)).unwrap(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn flags_and_addresses() {
        let vars = Vars::from_pairs(&[
            ("YES", "TRUE"),
            ("NO", "0"),
            ("BAD", "maybe"),
            ("LISTEN_ADDR", "[::1]:7"),
            ("METRICS_ADDR", "127.0.0.1:9"),
        ]);
        assert!(vars.flag("YES", false).unwrap());
        assert!(!vars.flag("NO", true).unwrap());
        assert!(vars.flag("BAD", true).is_err());
        let common = Common::from_vars(&vars, "svc", "0.0.0.0:1".parse().unwrap()).unwrap();
        assert_eq!(common.listen_addr, "[::1]:7".parse().unwrap());
        assert_eq!(common.metrics_addr, Some("127.0.0.1:9".parse().unwrap()));
        let defaults = Common::from_vars(&Vars::default(), "svc", "0.0.0.0:1".parse().unwrap());
        assert_eq!(defaults.unwrap().metrics_addr, None);
    }
}
