//! One chaos run against the Kubernetes API: list the candidates, pick one, delete it.

use std::fmt;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use rand::Rng;

use crate::{
    choose::{self, Spared},
    config::Settings,
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
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Deleted(String),
    WouldDelete(String),
    NothingEligible(Vec<(Spared, usize)>),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Deleted(pod) => write!(f, "deleted pod {pod}"),
            Outcome::WouldDelete(pod) => write!(f, "dry run: would have deleted pod {pod}"),
            Outcome::NothingEligible(spared) => write!(f, "no pod eligible (spared: {spared:?})"),
        }
    }
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
        return Ok(Outcome::WouldDelete(victim));
    }
    let params = DeleteParams {
        grace_period_seconds: Some(settings.grace_period_seconds),
        ..DeleteParams::default()
    };
    tracing::info!(pod = %victim, namespace, grace_period_seconds = settings.grace_period_seconds, "deleting pod");
    pods.delete(&victim, &params)
        .await
        .map_err(|source| ChaosError::Delete {
            pod: victim.clone(),
            source,
        })?;
    Ok(Outcome::Deleted(victim))
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use rand::{SeedableRng, rngs::StdRng};
    use tower_test::mock;

    use super::*;
    use crate::choose::tests::pod;

    fn settings(dry_run: bool) -> Settings {
        Settings {
            namespace: Some("rides".into()),
            pod_name: Some("chaos-1".into()),
            selector: "rocket-rides/chaos-target=true".into(),
            min_age_seconds: 60,
            grace_period_seconds: 0,
            dry_run,
        }
    }

    fn pod_list() -> serde_json::Value {
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

    fn respond(json: serde_json::Value) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(&json).unwrap()))
            .unwrap()
    }

    /// Answers the list, then (unless `dry_run`) expects exactly one delete of the only
    /// eligible pod, with a zero grace period.
    async fn fake_api_server(
        mut handle: mock::Handle<Request<Body>, Response<Body>>,
        dry_run: bool,
    ) {
        let (request, send) = handle.next_request().await.expect("a list request");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/rides/pods");
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("labelSelector=rocket-rides%2Fchaos-target%3Dtrue"),
            "{query}"
        );
        send.send_response(respond(pod_list()));
        if dry_run {
            assert!(
                handle.next_request().await.is_none(),
                "a dry run deletes nothing"
            );
            return;
        }
        let (request, send) = handle.next_request().await.expect("a delete request");
        assert_eq!(request.method(), http::Method::DELETE);
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/rides/pods/api-7d9f"
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["gracePeriodSeconds"], 0);
        send.send_response(respond(
            serde_json::to_value(pod("api-7d9f", "Running", 600)).unwrap(),
        ));
        assert!(
            handle.next_request().await.is_none(),
            "exactly one pod is deleted"
        );
    }

    async fn run_against_fake(dry_run: bool) -> Outcome {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(fake_api_server(handle, dry_run));
        let client = Client::new(service, "default");
        let outcome = run(
            client,
            "rides",
            &settings(dry_run),
            &mut StdRng::seed_from_u64(3),
        )
        .await
        .unwrap();
        server.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn deletes_the_one_eligible_pod_and_never_itself() {
        assert_eq!(
            run_against_fake(false).await,
            Outcome::Deleted("api-7d9f".into())
        );
    }

    #[tokio::test]
    async fn a_dry_run_only_lists() {
        assert_eq!(
            run_against_fake(true).await,
            Outcome::WouldDelete("api-7d9f".into())
        );
    }
}
