//! Prometheus metrics as a scraper sees them: `GET /metrics` on a service's METRICS_ADDR,
//! parsed strictly enough that malformed output fails the test.

use std::collections::{BTreeMap, HashMap};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A sample's labels, by name.
type Labels = BTreeMap<String, String>;

/// One scrape: every sample by metric name and label set.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: HashMap<String, Vec<(Labels, f64)>>,
}

impl Metrics {
    /// `GET /metrics` from `addr` (`host:port`), as Prometheus would.
    pub async fn scrape(addr: &str) -> Result<Self, String> {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
        if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
            return Err(format!("scrape answered {head}"));
        }
        Ok(Self::parse(body))
    }

    /// Parses the Prometheus text format; panics on a line that is neither a comment
    /// (`# TYPE`/`# HELP`) nor `name{labels} value`.
    pub fn parse(text: &str) -> Self {
        let mut metrics = Self::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(comment) = line.strip_prefix("# ") {
                assert!(
                    comment.starts_with("TYPE ") || comment.starts_with("HELP "),
                    "bad comment: {line}"
                );
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !name.starts_with(|c: char| c.is_ascii_digit()),
                "bad metric name in: {line}"
            );
            let labels = match &series[name.len()..] {
                "" => Labels::new(),
                labels => parse_labels(labels).unwrap_or_else(|| panic!("bad labels: {line}")),
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
            };
            metrics
                .samples
                .entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        metrics
    }

    /// The sample of `name` with exactly these labels (in any order), if exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(name)?
            .iter()
            .find(|(labels, _)| *labels == wanted)
            .map(|(_, value)| *value)
    }
}

/// `{a="x",b="y\"z"}` into its pairs; `None` if malformed.
fn parse_labels(text: &str) -> Option<Labels> {
    let mut rest = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut labels = Labels::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_name_and_labels() {
        let m = Metrics::parse(
            "# TYPE a counter\na 3\nb{consumer=\"c0\",code=\"Ok\"} 1.5\nb{consumer=\"q\\\"x\"} +Inf\n",
        );
        assert_eq!(m.get("a", &[]), Some(3.0));
        assert_eq!(m.get("b", &[("code", "Ok"), ("consumer", "c0")]), Some(1.5));
        assert_eq!(m.get("b", &[("consumer", "q\"x")]), Some(f64::INFINITY));
        assert_eq!(m.get("b", &[("consumer", "c0")]), None);
    }
}
