//! Configuration comes from environment variables (see the README's table). Every reader here
//! fails with a message naming the variable, what was wrong and what is expected.

use std::{fmt::Display, net::SocketAddr, str::FromStr};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// The variable's value, treating an empty value as unset.
pub fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A variable that must be set; `hint` says what to put in it.
pub fn required(name: &'static str, hint: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing { name, hint })
}

/// A variable parsed as `T`, or `default` when unset.
pub fn parse_or<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: e.to_string(),
                value,
            }),
    }
}

/// A gRPC listen address such as `0.0.0.0:50051`.
pub fn listen_addr(name: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    parse_or(name, default.parse().expect("default address is valid"))
}

/// A probability between 0 and 1, for the failure simulations.
pub fn rate(name: &'static str) -> Result<f64, ConfigError> {
    let rate: f64 = parse_or(name, 0.0)?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(ConfigError::Invalid {
            name,
            value: rate.to_string(),
            reason: "expected a number from 0 to 1".into(),
        })
    }
}

/// A count that must be at least 1, such as a batch size.
pub fn positive(name: &'static str, default: u32) -> Result<u32, ConfigError> {
    match parse_or(name, default)? {
        0 => Err(ConfigError::Invalid {
            name,
            value: "0".into(),
            reason: "expected a whole number of at least 1".into(),
        }),
        n => Ok(n),
    }
}

/// The Redis stream that is the log.
pub fn stream_name() -> String {
    var("STREAM_NAME").unwrap_or_else(|| "rocket-rides-log".into())
}
