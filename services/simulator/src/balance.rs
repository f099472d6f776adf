//! Client-side round-robin over every address the API's name resolves to. Through a ClusterIP
//! Service one HTTP/2 connection, and so every call, would stay on one api pod; behind a
//! headless Service the name resolves to each pod, and calls are spread over them. The name is
//! resolved again every few seconds, so pods that come and go are followed.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use rocket_rides_platform::Error;
use tokio::sync::mpsc::Sender;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, channel::Change};

const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// A lazily connecting channel to `url` (`name` is the variable it came from), balanced over
/// the addresses its host resolves to. `https://` URLs use TLS, verifying the host name against
/// the system's CA bundle (`SSL_CERT_FILE` names another).
pub fn channel(name: &'static str, url: &str) -> Result<Channel, Error> {
    let invalid = |reason: String| Error::invalid(name, url, reason);
    let endpoint = endpoint(url)
        .map_err(|e| invalid(format!("{e} (expected e.g. http://127.0.0.1:50051)")))?;
    let uri = endpoint.uri().clone();
    let host = uri
        .host()
        .ok_or_else(|| invalid("a URL with a host is expected".into()))?
        .trim_matches(['[', ']'])
        .to_string();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let template = Template { host, port, tls };
    // Checked now, so a bad URL fails at start-up rather than in the background.
    template
        .endpoint(SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|e| invalid(e.to_string()))?;
    let (channel, changes) = Channel::balance_channel(16);
    tokio::spawn(follow(template, changes));
    Ok(channel)
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10)))
}

/// How to reach one address of the name.
struct Template {
    host: String,
    port: u16,
    tls: bool,
}

impl Template {
    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.tls { "https" } else { "http" };
        let endpoint = endpoint(&format!("{scheme}://{addr}"))?;
        if !self.tls {
            return Ok(endpoint);
        }
        // The certificate names the host, not the pod's address.
        endpoint.tls_config(
            ClientTlsConfig::new()
                .domain_name(self.host.clone())
                .with_native_roots(),
        )
    }
}

/// Keeps the channel's endpoints those of the addresses the name resolves to now.
async fn follow(template: Template, changes: Sender<Change<SocketAddr, Endpoint>>) {
    let mut known = BTreeSet::new();
    loop {
        match tokio::net::lookup_host((template.host.as_str(), template.port)).await {
            Ok(addrs) => {
                let now: BTreeSet<SocketAddr> = addrs.collect();
                for gone in known.difference(&now) {
                    if changes.send(Change::Remove(*gone)).await.is_err() {
                        return;
                    }
                }
                for new in now.difference(&known) {
                    let Ok(endpoint) = template.endpoint(*new) else {
                        continue;
                    };
                    if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                        return;
                    }
                }
                if now != known {
                    tracing::info!(host = %template.host, addresses = now.len(), "calls are spread over the addresses the name resolves to");
                }
                known = now;
            }
            Err(e) => {
                tracing::warn!(host = %template.host, error = %e, "cannot resolve; keeping the addresses known")
            }
        }
        tokio::select! {
            _ = changes.closed() => return,
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_checked_at_start_up() {
        assert!(channel("API_URL", "http://127.0.0.1:50051").is_ok());
        assert!(channel("API_URL", "https://api.rides.svc:50051").is_ok());
        let err = channel("API_URL", "not a url").unwrap_err();
        assert!(err.to_string().starts_with("API_URL="), "{err}");
    }
}
