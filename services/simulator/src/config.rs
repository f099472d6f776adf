//! The simulator's configuration, loaded once at start-up.

use std::net::SocketAddr;

use rocket_rides_platform::{
    Error,
    config::{Common, ServiceConfig, Vars, all_interfaces},
};

pub const DEFAULT_LISTEN_ADDR: SocketAddr = all_interfaces(50054);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// `API_URL`: where to create rides (default `http://127.0.0.1:50051`).
    pub api_url: String,
    /// `RIDES_PER_SECOND` (default 5).
    pub rides_per_second: f64,
    /// `CONSUMER_URLS`: comma-separated consumers whose totals it reports every 5 s.
    pub consumer_urls: Vec<String>,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, Error> {
        let rides_per_second: f64 = vars.parse_or("RIDES_PER_SECOND", 5.0)?;
        if !(rides_per_second.is_finite() && rides_per_second > 0.0) {
            return Err(Error::invalid(
                "RIDES_PER_SECOND",
                rides_per_second,
                "expected a number greater than 0",
            ));
        }
        Ok(Self {
            common: Common::from_vars(vars, crate::NAME, DEFAULT_LISTEN_ADDR)?,
            api_url: vars
                .get("API_URL")
                .unwrap_or("http://127.0.0.1:50051")
                .to_string(),
            rides_per_second,
            consumer_urls: vars
                .get("CONSUMER_URLS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
        })
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_lists() {
        let config = Config::from_vars(&Vars::default()).unwrap();
        assert_eq!(config.api_url, "http://127.0.0.1:50051");
        assert_eq!(config.rides_per_second, 5.0);
        assert!(config.consumer_urls.is_empty());
        let vars = Vars::from_pairs(&[("CONSUMER_URLS", "http://a:1, ,http://b:2")]);
        assert_eq!(
            Config::from_vars(&vars).unwrap().consumer_urls,
            ["http://a:1", "http://b:2"]
        );
        for bad in ["0", "-1", "inf", "x"] {
            let vars = Vars::from_pairs(&[("RIDES_PER_SECOND", bad)]);
            assert!(Config::from_vars(&vars).is_err(), "{bad}");
        }
    }
}
