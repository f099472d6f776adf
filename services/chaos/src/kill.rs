//! One chaos run against the Kubernetes API: list the candidates, pick one, evict (or delete) it.

use std::fmt;

use k8s_openapi::{
    api::{core::v1::Pod, policy::v1::Eviction},
    apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    core::Status,
};
use rand::Rng;

use crate::{
    choose::{self, Spared},
    config::{Mode, Settings},
};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("listing pods matching {selector:?} failed: {source}")]
    List {
        selector: String,
        source: kube::Error,
    },
    #[error("deleting pod {pod:?} failed: {source}")]
    Delete { pod: String, source: kube::Error },
    #[error("evicting pod {pod:?} failed: {source}")]
    Evict { pod: String, source: kube::Error },
}

impl ChaosError {
    /// The pod the run chose, if it got that far.
    pub fn pod(&self) -> Option<&str> {
        match self {
            ChaosError::List { .. } => None,
            ChaosError::Delete { pod, .. } | ChaosError::Evict { pod, .. } => Some(pod),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Deleted(String),
    Evicted(String),
    /// The API server refused the eviction (429): a PodDisruptionBudget allows no disruption
    /// right now. Reported once; the next scheduled run tries again.
    EvictionBlocked {
        pod: String,
        reason: String,
    },
    WouldRemove {
        pod: String,
        mode: Mode,
    },
    NothingEligible(Vec<(Spared, usize)>),
}

impl Outcome {
    /// The pod the run chose, if any.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Outcome::Deleted(pod) | Outcome::Evicted(pod) => Some(pod),
            Outcome::EvictionBlocked { pod, .. } | Outcome::WouldRemove { pod, .. } => Some(pod),
            Outcome::NothingEligible(_) => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Deleted(pod) => write!(f, "deleted pod {pod}"),
            Outcome::Evicted(pod) => write!(f, "evicted pod {pod}"),
            Outcome::EvictionBlocked { pod, reason } => write!(
                f,
                "eviction of pod {pod} refused, a PodDisruptionBudget allows no disruption now \
                 (not retried; the next run picks again): {reason}"
            ),
            Outcome::WouldRemove { pod, mode } => {
                write!(f, "dry run: would have {mode}ed pod {pod}")
            }
            Outcome::NothingEligible(spared) => write!(f, "no pod eligible (spared: {spared:?})"),
        }
    }
}

/// A client that sends each request once. kube's default client retries 429s (with backoff, up
/// to 15 times), and a 429 from the Eviction API means a PodDisruptionBudget blocks it: that is
/// an answer to report, not a failure to retry in a loop.
pub fn client_without_retries(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

pub async fn run(
    client: Client,
    namespace: &str,
    settings: &Settings,
    rng: &mut impl Rng,
) -> Result<Outcome, ChaosError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let listed = pods
        .list(&ListParams::default().labels(&settings.selector))
        .await
        .map_err(|source| ChaosError::List {
            selector: settings.selector.clone(),
            source,
        })?;
    let victim = match choose::choose(
        &listed.items,
        Timestamp::now().as_second(),
        settings.min_age_seconds,
        settings.pod_name.as_deref(),
        rng,
    ) {
        Ok(victim) => victim.metadata.name.clone().unwrap_or_default(),
        Err(spared) => return Ok(Outcome::NothingEligible(spared)),
    };
    if settings.dry_run {
        return Ok(Outcome::WouldRemove {
            pod: victim,
            mode: settings.mode,
        });
    }
    let grace = settings.grace_period_seconds;
    tracing::info!(pod = %victim, namespace, mode = %settings.mode, grace_period_seconds = grace, "removing pod");
    match settings.mode {
        Mode::Delete => {
            let params = DeleteParams {
                grace_period_seconds: Some(grace),
                ..DeleteParams::default()
            };
            pods.delete(&victim, &params)
                .await
                .map_err(|source| ChaosError::Delete {
                    pod: victim.clone(),
                    source,
                })?;
            Ok(Outcome::Deleted(victim))
        }
        Mode::Evict => {
            // Posted as a typed policy/v1 Eviction rather than with `Api::evict`: kube 5 writes
            // that body's options as `delete_options`, which the API server ignores as an
            // unknown field, so the grace period would silently not apply.
            let eviction = Eviction {
                metadata: ObjectMeta {
                    name: Some(victim.clone()),
                    namespace: Some(namespace.to_string()),
                    ..ObjectMeta::default()
                },
                delete_options: Some(DeleteOptions {
                    grace_period_seconds: Some(i64::from(grace)),
                    ..DeleteOptions::default()
                }),
            };
            match pods
                .create_subresource::<_, Status>(
                    "eviction",
                    &victim,
                    &PostParams::default(),
                    &eviction,
                )
                .await
            {
                Ok(_) => Ok(Outcome::Evicted(victim)),
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    Ok(Outcome::EvictionBlocked {
                        pod: victim,
                        reason: status.message,
                    })
                }
                Err(source) => Err(ChaosError::Evict {
                    pod: victim,
                    source,
                }),
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use rand::{SeedableRng, rngs::StdRng};
    use tower_test::mock;

    use super::*;
    use crate::choose::tests::pod;

    pub fn settings(mode: Mode, dry_run: bool) -> Settings {
        Settings {
            namespace: Some("rides".into()),
            pod_name: Some("chaos-1".into()),
            selector: "rocket-rides/chaos-target=true".into(),
            min_age_seconds: 60,
            mode,
            grace_period_seconds: 30,
            dry_run,
            events: true,
        }
    }

    pub fn pod_list() -> serde_json::Value {
        let now = Timestamp::now().as_second();
        let age = |p: Pod| {
            let mut p = p;
            let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(now - 600).unwrap(),
            );
            p.metadata.creation_timestamp = Some(t.clone());
            p.status.as_mut().unwrap().start_time = Some(t);
            p
        };
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {},
            "items": [
                age(pod("chaos-1", "Running", 0)),
                age(pod("api-7d9f", "Running", 0)),
            ],
        })
    }

    fn respond(code: StatusCode, json: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&json).unwrap()))
            .unwrap()
    }

    pub fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": if code < 300 { "Success" } else { "Failure" },
            "reason": reason,
            "message": message,
            "code": code,
        })
    }

    pub const PDB_MESSAGE: &str =
        "Cannot evict pod as it would violate the pod's disruption budget.";

    /// How the fake API server answers the removal of the one eligible pod.
    #[derive(Clone, Copy)]
    enum Answer {
        Ok,
        PdbBlocked,
        Forbidden,
    }

    /// Answers the list, then (unless `dry_run`) expects exactly one removal of the only
    /// eligible pod, by `mode`, with the configured grace period; nothing after it.
    async fn fake_api_server(
        mut handle: mock::Handle<Request<Body>, Response<Body>>,
        mode: Mode,
        dry_run: bool,
        answer: Answer,
    ) {
        let (request, send) = handle.next_request().await.expect("a list request");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/rides/pods");
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("labelSelector=rocket-rides%2Fchaos-target%3Dtrue"),
            "{query}"
        );
        send.send_response(respond(StatusCode::OK, pod_list()));
        if dry_run {
            assert!(
                handle.next_request().await.is_none(),
                "a dry run removes nothing"
            );
            return;
        }
        let (request, send) = handle.next_request().await.expect("a removal request");
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        match mode {
            Mode::Delete => {
                assert_eq!(method, http::Method::DELETE);
                assert_eq!(path, "/api/v1/namespaces/rides/pods/api-7d9f");
                assert_eq!(body["gracePeriodSeconds"], 30);
            }
            Mode::Evict => {
                assert_eq!(method, http::Method::POST);
                assert_eq!(path, "/api/v1/namespaces/rides/pods/api-7d9f/eviction");
                assert_eq!(body["apiVersion"], "policy/v1");
                assert_eq!(body["kind"], "Eviction");
                assert_eq!(body["metadata"]["name"], "api-7d9f");
                assert_eq!(body["deleteOptions"]["gracePeriodSeconds"], 30);
            }
        }
        send.send_response(match answer {
            Answer::Ok if mode == Mode::Delete => respond(
                StatusCode::OK,
                serde_json::to_value(pod("api-7d9f", "Running", 600)).unwrap(),
            ),
            Answer::Ok => respond(StatusCode::CREATED, status(201, "", "")),
            Answer::PdbBlocked => respond(
                StatusCode::TOO_MANY_REQUESTS,
                status(429, "TooManyRequests", PDB_MESSAGE),
            ),
            Answer::Forbidden => respond(
                StatusCode::FORBIDDEN,
                status(403, "Forbidden", "pods \"api-7d9f\" is forbidden"),
            ),
        });
        assert!(
            handle.next_request().await.is_none(),
            "exactly one removal request, never retried"
        );
    }

    async fn run_against_fake(
        mode: Mode,
        dry_run: bool,
        answer: Answer,
    ) -> Result<Outcome, ChaosError> {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(fake_api_server(handle, mode, dry_run, answer));
        let client = Client::new(service, "default");
        let outcome = run(
            client,
            "rides",
            &settings(mode, dry_run),
            &mut StdRng::seed_from_u64(3),
        )
        .await;
        server.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn evicts_the_one_eligible_pod_with_the_grace_period_and_never_itself() {
        assert_eq!(
            run_against_fake(Mode::Evict, false, Answer::Ok)
                .await
                .unwrap(),
            Outcome::Evicted("api-7d9f".into())
        );
    }

    #[tokio::test]
    async fn deletes_with_the_grace_period_in_delete_mode() {
        assert_eq!(
            run_against_fake(Mode::Delete, false, Answer::Ok)
                .await
                .unwrap(),
            Outcome::Deleted("api-7d9f".into())
        );
    }

    #[tokio::test]
    async fn a_pdb_blocked_eviction_is_an_outcome_reported_once() {
        let outcome = run_against_fake(Mode::Evict, false, Answer::PdbBlocked)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::EvictionBlocked {
                pod: "api-7d9f".into(),
                reason: PDB_MESSAGE.into()
            }
        );
        assert!(outcome.to_string().contains("not retried"), "{outcome}");
    }

    #[tokio::test]
    async fn other_eviction_errors_fail_the_run() {
        let err = run_against_fake(Mode::Evict, false, Answer::Forbidden)
            .await
            .unwrap_err();
        assert!(matches!(err, ChaosError::Evict { ref pod, .. } if pod == "api-7d9f"));
        assert_eq!(err.pod(), Some("api-7d9f"));
    }

    #[tokio::test]
    async fn a_dry_run_only_lists() {
        assert_eq!(
            run_against_fake(Mode::Evict, true, Answer::Ok)
                .await
                .unwrap(),
            Outcome::WouldRemove {
                pod: "api-7d9f".into(),
                mode: Mode::Evict
            }
        );
    }

    /// The real client stack (what `main` builds) against a local HTTP server: a 429 from the
    /// Eviction API reaches us after exactly one request. kube's default client would retry it.
    #[tokio::test]
    async fn the_real_client_does_not_retry_a_pdb_blocked_eviction() {
        use tokio::{
            io::{AsyncReadExt, AsyncWriteExt},
            net::TcpListener,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let evictions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = evictions.clone();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        // One request: headers, then Content-Length bytes of body.
                        let end = loop {
                            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        while buffer.len() < end + length {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let (code, body) = if head.starts_with("post ") {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            (
                                "429 Too Many Requests",
                                status(429, "TooManyRequests", PDB_MESSAGE),
                            )
                        } else {
                            ("200 OK", pod_list())
                        };
                        buffer.drain(..end + length);
                        let body = serde_json::to_vec(&body).unwrap();
                        let response = format!(
                            "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err()
                            || socket.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = client_without_retries(config).unwrap();
        let outcome = run(
            client,
            "rides",
            &settings(Mode::Evict, false),
            &mut StdRng::seed_from_u64(3),
        )
        .await
        .unwrap();
        assert!(
            matches!(outcome, Outcome::EvictionBlocked { ref pod, .. } if pod == "api-7d9f"),
            "{outcome:?}"
        );
        // A retrying client backs off from 5 ms: any retry would have arrived by now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(evictions.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }
}
