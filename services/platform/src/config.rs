//! Configuration comes from environment variables (see the README's table). Every reader here
//! fails with a message naming the variable, what was wrong and what is expected.

use std::{fmt::Display, net::SocketAddr, str::FromStr};

use crate::Error;

/// The variable's value, treating an empty value as unset.
pub fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A variable that must be set; `hint` says what to put in it.
pub fn required(name: &'static str, hint: &'static str) -> Result<String, Error> {
    var(name).ok_or(Error::Missing { name, hint })
}

/// A variable parsed as `T`, or `default` when unset.
pub fn parse_or<T>(name: &'static str, default: T) -> Result<T, Error>
where
    T: FromStr,
    T::Err: Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| Error::Invalid {
            name,
            reason: e.to_string(),
            value,
        }),
    }
}

/// A gRPC listen address such as `0.0.0.0:50051`.
pub fn listen_addr(name: &'static str, default: &str) -> Result<SocketAddr, Error> {
    parse_or(name, default.parse().expect("default address is valid"))
}

/// A probability between 0 and 1, for the failure simulations.
pub fn rate(name: &'static str) -> Result<f64, Error> {
    let rate: f64 = parse_or(name, 0.0)?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(Error::Invalid {
            name,
            value: rate.to_string(),
            reason: "expected a number from 0 to 1".into(),
        })
    }
}

/// A count that must be at least 1, such as a batch size.
pub fn positive(name: &'static str, default: u32) -> Result<u32, Error> {
    match parse_or(name, default)? {
        0 => Err(Error::Invalid {
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
