//! `rocket-rides-secrets ensure`: makes sure a Secret of random passwords exists, for the
//! chart's generated-password mode (a plain Job, so a GitOps sync that renders with `helm
//! template` runs it too, and the passwords survive every render).
//!
//! - The Secret absent (GET answers 404): it is created (type Opaque) with one random value per
//!   key: 32 characters of `[A-Za-z0-9]` (about 190 bits) from the operating system's RNG, safe
//!   in a URL (the Redis password goes into `redis://:<password>@...`) and in the Postgres init
//!   script alike. It carries the labels and annotations asked for and nothing else: the chart
//!   asks for Helm's ownership metadata (so that switching to passwords given in the values lets
//!   Helm adopt the Secret instead of refusing it) and `helm.sh/resource-policy: keep` (so that
//!   Helm never deletes it once adopted: the data it guards, Postgres's PVC, outlives the release).
//! - The Secret present: left untouched, whatever its values (no write at all). If it lacks one
//!   of the keys the run fails, naming them, since the pods referring to them would never start.
//! - A 409 AlreadyExists on create (a concurrent run won the race): success, the winner's values
//!   stand.
//!
//! The Role needs `get` on the Secret (restricted by resourceNames) and `create` on secrets
//! (which Kubernetes cannot restrict by name: the name is not known when the request is
//! authorised).

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, api::PostParams};
use rand::{CryptoRng, Rng, distr::Alphanumeric};

/// Length of each generated value: 32 alphanumerics, ~190 bits.
pub const VALUE_LENGTH: usize = 32;

/// What to ensure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub keys: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Request {
    /// Checks the name and keys (sorted, duplicates dropped) and splits each `name=value` label
    /// and annotation.
    pub fn new(
        name: String,
        mut keys: Vec<String>,
        labels: &[String],
        annotations: &[String],
    ) -> Result<Self, String> {
        if name.is_empty() {
            return Err("--name must not be empty".into());
        }
        if keys.is_empty() {
            return Err("at least one --key is required".into());
        }
        if let Some(bad) = keys.iter().find(|k| !valid_key(k)) {
            return Err(format!(
                "--key {bad:?}: a Secret key holds only letters, digits, '-', '_' and '.'"
            ));
        }
        keys.sort();
        keys.dedup();
        Ok(Self {
            name,
            keys,
            labels: pairs("--label", labels)?,
            annotations: pairs("--annotation", annotations)?,
        })
    }
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("{flag} {item:?}: expected name=value"))
        })
        .collect()
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created {
        keys: Vec<String>,
    },
    /// It existed already (with every key): left as it was.
    Present,
    /// Created by a concurrent run between our GET and our POST (409): its values stand.
    CreatedConcurrently,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created { keys } => write!(f, "created with random values for {keys:?}"),
            Outcome::Present => f.write_str("already present, left untouched"),
            Outcome::CreatedConcurrently => {
                f.write_str("created by a concurrent run (409 AlreadyExists), left untouched")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error("reading Secret {name:?} failed: {source}")]
    Get { name: String, source: kube::Error },
    #[error("creating Secret {name:?} failed: {source}")]
    Create { name: String, source: kube::Error },
    #[error(
        "Secret {name:?} exists but lacks the keys {missing:?}; it was left untouched: add them, \
         or delete it (with the data it protects) so that it is generated again"
    )]
    MissingKeys { name: String, missing: Vec<String> },
}

/// One random value: `VALUE_LENGTH` characters of `[A-Za-z0-9]`.
pub fn random_value(rng: &mut (impl Rng + CryptoRng)) -> String {
    rng.sample_iter(Alphanumeric)
        .take(VALUE_LENGTH)
        .map(char::from)
        .collect()
}

pub async fn ensure(
    client: Client,
    namespace: &str,
    request: &Request,
    rng: &mut (impl Rng + CryptoRng),
) -> Result<Outcome, EnsureError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let existing = secrets
        .get_opt(&request.name)
        .await
        .map_err(|source| EnsureError::Get {
            name: request.name.clone(),
            source,
        })?;
    if let Some(secret) = existing {
        let data = secret.data.unwrap_or_default();
        let string_data = secret.string_data.unwrap_or_default();
        let missing: Vec<String> = request
            .keys
            .iter()
            .filter(|k| !data.contains_key(*k) && !string_data.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(EnsureError::MissingKeys {
                name: request.name.clone(),
                missing,
            });
        }
        return Ok(Outcome::Present);
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: (!request.labels.is_empty()).then(|| request.labels.clone()),
            annotations: (!request.annotations.is_empty()).then(|| request.annotations.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            request
                .keys
                .iter()
                .map(|k| (k.clone(), ByteString(random_value(rng).into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Outcome::Created {
            keys: request.keys.clone(),
        }),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::CreatedConcurrently),
        Err(source) => Err(EnsureError::Create {
            name: request.name.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use http::{Request as HttpRequest, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use rand::{SeedableRng, rngs::StdRng};
    use tower_test::mock;

    use super::*;

    type Handle = mock::Handle<HttpRequest<Body>, Response<Body>>;

    const PATH: &str = "/api/v1/namespaces/rides/secrets";

    fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
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

    fn respond(code: StatusCode, json: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&json).unwrap()))
            .unwrap()
    }

    fn request() -> Request {
        Request::new(
            "demo-rocket-rides-postgresql".into(),
            vec![
                "postgres-password".into(),
                "password".into(),
                "password".into(),
            ],
            &["app.kubernetes.io/part-of=rocket-rides".into()],
            &["helm.sh/resource-policy=keep".into()],
        )
        .unwrap()
    }

    fn existing(keys: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-rocket-rides-postgresql", "namespace": "rides"},
            "type": "Opaque",
            "data": keys.iter().map(|k| (k.to_string(), serde_json::json!("c2VjcmV0"))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Expects the GET of the Secret and answers it (404 when `present` is None).
    async fn expect_get(handle: &mut Handle, present: Option<serde_json::Value>) {
        let (request, send) = handle.next_request().await.expect("a GET of the Secret");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(
            request.uri().path(),
            format!("{PATH}/demo-rocket-rides-postgresql")
        );
        send.send_response(match present {
            Some(secret) => respond(StatusCode::OK, secret),
            None => respond(
                StatusCode::NOT_FOUND,
                status(
                    404,
                    "NotFound",
                    "secrets \"demo-rocket-rides-postgresql\" not found",
                ),
            ),
        });
    }

    /// Expects the POST creating the Secret, answers it with `code`, and returns its body.
    async fn expect_create(handle: &mut Handle, code: StatusCode) -> Secret {
        let (request, send) = handle.next_request().await.expect("a POST of the Secret");
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().path(), PATH);
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let secret: Secret = serde_json::from_slice(&body).unwrap();
        send.send_response(if code == StatusCode::CREATED {
            respond(code, serde_json::from_slice(&body).unwrap())
        } else {
            respond(
                code,
                status(
                    code.as_u16(),
                    "AlreadyExists",
                    "secrets \"demo-rocket-rides-postgresql\" already exists",
                ),
            )
        });
        secret
    }

    async fn ensure_against<F, Fut, T>(server: F) -> (Result<Outcome, EnsureError>, T)
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (service, handle) = mock::pair::<HttpRequest<Body>, Response<Body>>();
        let server = tokio::spawn(server(handle));
        let outcome = ensure(
            Client::new(service, "default"),
            "rides",
            &request(),
            &mut StdRng::from_os_rng(),
        )
        .await;
        (outcome, server.await.unwrap())
    }

    #[tokio::test]
    async fn creates_the_secret_with_long_random_url_safe_values_when_absent() {
        let (outcome, created) = ensure_against(|mut handle| async move {
            expect_get(&mut handle, None).await;
            let created = expect_create(&mut handle, StatusCode::CREATED).await;
            assert!(
                handle.next_request().await.is_none(),
                "nothing after the create"
            );
            created
        })
        .await;
        assert_eq!(
            outcome.unwrap(),
            Outcome::Created {
                keys: vec!["password".into(), "postgres-password".into()]
            }
        );
        let meta = &created.metadata;
        assert_eq!(meta.name.as_deref(), Some("demo-rocket-rides-postgresql"));
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
        // Only the labels and annotations asked for.
        let labels = meta.labels.clone().unwrap();
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            vec![("app.kubernetes.io/part-of".into(), "rocket-rides".into())]
        );
        let annotations = meta.annotations.clone().unwrap();
        assert_eq!(
            annotations.into_iter().collect::<Vec<_>>(),
            vec![("helm.sh/resource-policy".into(), "keep".into())]
        );
        assert!(meta.owner_references.is_none());
        let data = created.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["password", "postgres-password"]
        );
        let values: Vec<String> = data
            .values()
            .map(|v| String::from_utf8(v.0.clone()).unwrap())
            .collect();
        for value in &values {
            assert!(value.len() >= 32, "{value}");
            assert!(
                value.chars().all(|c| c.is_ascii_alphanumeric()),
                "URL-safe: {value}"
            );
        }
        assert_ne!(values[0], values[1]);
    }

    #[tokio::test]
    async fn leaves_an_existing_secret_alone() {
        let (outcome, ()) = ensure_against(|mut handle| async move {
            expect_get(
                &mut handle,
                Some(existing(&["password", "postgres-password"])),
            )
            .await;
            assert!(handle.next_request().await.is_none(), "no write at all");
        })
        .await;
        assert_eq!(outcome.unwrap(), Outcome::Present);
    }

    #[tokio::test]
    async fn an_existing_secret_without_a_key_fails_untouched() {
        let (outcome, ()) = ensure_against(|mut handle| async move {
            expect_get(&mut handle, Some(existing(&["password"]))).await;
            assert!(handle.next_request().await.is_none(), "no write at all");
        })
        .await;
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, EnsureError::MissingKeys { ref missing, .. } if missing == &["postgres-password"]),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_conflict_on_create_is_a_concurrent_run_and_success() {
        let (outcome, _) = ensure_against(|mut handle| async move {
            expect_get(&mut handle, None).await;
            let created = expect_create(&mut handle, StatusCode::CONFLICT).await;
            assert!(handle.next_request().await.is_none(), "not retried");
            created
        })
        .await;
        assert_eq!(outcome.unwrap(), Outcome::CreatedConcurrently);
    }

    #[tokio::test]
    async fn other_errors_fail_the_run() {
        let (outcome, ()) = ensure_against(|mut handle| async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(respond(
                StatusCode::FORBIDDEN,
                status(403, "Forbidden", "secrets is forbidden"),
            ));
        })
        .await;
        assert!(matches!(outcome.unwrap_err(), EnsureError::Get { .. }));
    }

    #[test]
    fn arguments() {
        let r = request();
        assert_eq!(r.name, "demo-rocket-rides-postgresql");
        assert_eq!(r.keys, ["password", "postgres-password"]);
        let ok = |keys: &[&str], labels: &[&str]| {
            Request::new(
                "x".into(),
                keys.iter().map(|k| k.to_string()).collect(),
                &labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                &[],
            )
        };
        assert!(ok(&[], &[]).is_err());
        assert!(ok(&["a/b"], &[]).is_err());
        assert!(ok(&["k"], &["novalue"]).is_err());
        assert!(ok(&["k"], &["=v"]).is_err());
        assert_eq!(ok(&["k"], &["a=b=c"]).unwrap().labels["a"], "b=c");
        assert!(Request::new(String::new(), vec!["k".into()], &[], &[]).is_err());
    }

    #[test]
    fn random_values_are_long_alphanumeric_and_differ() {
        let mut rng = StdRng::from_os_rng();
        let (a, b) = (random_value(&mut rng), random_value(&mut rng));
        assert_eq!(a.len(), VALUE_LENGTH);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
