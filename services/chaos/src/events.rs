//! A run's result as a Kubernetes Event (events.k8s.io/v1), so `kubectl get events` and
//! `kubectl describe pod <victim>` show what chaos did, beside the log line.

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use crate::{
    config::{Mode, Settings},
    kill::{ChaosError, Outcome},
};

/// The `reportingController` of every event this binary writes.
pub const CONTROLLER: &str = "rocket-rides.io/chaos";

/// The longest note the API server accepts is 1 kB.
const MAX_NOTE: usize = 1024;

/// The Event describing `result`: about the victim pod when there is one, else about this pod.
pub fn event_for(
    namespace: &str,
    settings: &Settings,
    result: &Result<Outcome, ChaosError>,
) -> Event {
    let action = match settings.mode {
        Mode::Evict => "Evict",
        Mode::Delete => "Delete",
    };
    let (type_, reason, pod, note) = match result {
        Ok(outcome) => {
            let reason = match outcome {
                Outcome::Deleted(_) => "ChaosDeleted",
                Outcome::Evicted(_) => "ChaosEvicted",
                Outcome::EvictionBlocked { .. } => "ChaosEvictionBlocked",
                Outcome::WouldRemove { .. } => "ChaosDryRun",
                Outcome::NothingEligible(_) => "ChaosNothingEligible",
            };
            ("Normal", reason, outcome.pod(), outcome.to_string())
        }
        Err(e) => ("Warning", "ChaosFailed", e.pod(), e.to_string()),
    };
    let regarding = pod
        .or(settings.pod_name.as_deref())
        .map(|name| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectReference::default()
        });
    let mut note = note;
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    Event {
        metadata: ObjectMeta {
            generate_name: Some("rocket-rides-chaos-".into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        action: Some(action.into()),
        reason: Some(reason.into()),
        type_: Some(type_.into()),
        note: Some(note),
        regarding,
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(
            settings
                .pod_name
                .clone()
                .unwrap_or_else(|| "rocket-rides-chaos".into()),
        ),
        ..Event::default()
    }
}

/// Records `result` as an Event. A failure to record is logged, never fatal: the log line
/// already says what happened.
pub async fn record(
    client: Client,
    namespace: &str,
    settings: &Settings,
    result: &Result<Outcome, ChaosError>,
) {
    let events: Api<Event> = Api::namespaced(client, namespace);
    let event = event_for(namespace, settings, result);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, "recording the run as a Kubernetes Event failed; check that the Role may create events.k8s.io events");
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use tower_test::mock;

    use super::*;
    use crate::kill::tests::{PDB_MESSAGE, settings};

    async fn recorded(result: Result<Outcome, ChaosError>) -> serde_json::Value {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("an event");
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/events.k8s.io/v1/namespaces/rides/events"
            );
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            assert!(handle.next_request().await.is_none(), "one event per run");
            body
        });
        record(
            Client::new(service, "default"),
            "rides",
            &settings(Mode::Evict, false),
            &result,
        )
        .await;
        server.await.unwrap()
    }

    #[tokio::test]
    async fn an_eviction_is_recorded_against_the_victim() {
        let event = recorded(Ok(Outcome::Evicted("api-7d9f".into()))).await;
        assert_eq!(event["apiVersion"], "events.k8s.io/v1");
        assert_eq!(event["kind"], "Event");
        assert_eq!(event["reason"], "ChaosEvicted");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["action"], "Evict");
        assert_eq!(event["regarding"]["name"], "api-7d9f");
        assert_eq!(event["regarding"]["kind"], "Pod");
        assert_eq!(event["reportingController"], CONTROLLER);
        assert_eq!(event["reportingInstance"], "chaos-1");
        assert!(event["eventTime"].is_string());
        assert_eq!(event["metadata"]["generateName"], "rocket-rides-chaos-");
    }

    #[tokio::test]
    async fn a_blocked_eviction_is_recorded_with_the_api_servers_reason() {
        let event = recorded(Ok(Outcome::EvictionBlocked {
            pod: "api-7d9f".into(),
            reason: PDB_MESSAGE.into(),
        }))
        .await;
        assert_eq!(event["reason"], "ChaosEvictionBlocked");
        assert!(
            event["note"].as_str().unwrap().contains(PDB_MESSAGE),
            "{event}"
        );
    }

    #[test]
    fn a_failure_is_a_warning_about_this_pod_when_no_victim_was_chosen() {
        let err = ChaosError::List {
            selector: "x=y".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ),
        };
        let event = event_for("rides", &settings(Mode::Evict, false), &Err(err));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("ChaosFailed"));
        assert_eq!(
            event.regarding.unwrap().name.as_deref(),
            Some("chaos-1"),
            "the chaos pod itself"
        );
        let long = Outcome::NothingEligible(vec![]);
        let mut s = settings(Mode::Evict, false);
        s.pod_name = None;
        let event = event_for("rides", &s, &Ok(long));
        assert!(event.regarding.is_none());
        assert!(event.note.unwrap().len() <= MAX_NOTE);
    }
}
