//! One trace per ride across every service, Prometheus metrics (consumer lag included), and
//! JSON logs that carry trace ids. Spans go to a real OTLP/gRPC receiver run by the test.

use std::{collections::HashMap, time::Duration};

use rocket_rides_proto::v1::CreateRideRequest;
use rocket_rides_tests::{
    Api, Consumer, Streamer, System,
    otlp::{OtlpReceiver, ReceivedSpan},
    wait_until,
};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Creates a ride, optionally as part of the caller's trace; returns its id.
async fn create_ride(api: &Api, traceparent: Option<&str>) -> i64 {
    let mut request = tonic::Request::new(CreateRideRequest {
        distance: Some(99.5),
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    api.create_ride(request).await.unwrap().ride_id
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    attr: (&str, &str),
) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .filter(|s| s.attributes.get(attr.0).map(String::as_str) == Some(attr.1))
        .collect()
}

/// The spans of one ride's journey, once all of them have arrived.
struct Journey {
    create: ReceivedSpan,
    stream: ReceivedSpan,
    applies: Vec<ReceivedSpan>,
}

async fn journey(receiver: &OtlpReceiver, ride_id: i64) -> Journey {
    let id = ride_id.to_string();
    wait_until(
        "the ride's spans from every service",
        Duration::from_secs(60),
        || async {
            let spans = receiver.spans();
            let create = find(&spans, "rocket-rides-api", "CreateRide", ("ride.id", &id));
            let stream = find(
                &spans,
                "rocket-rides-streamer",
                "stream ride",
                ("ride.id", &id),
            );
            let applies: Vec<_> = find(
                &spans,
                "rocket-rides-consumer",
                "apply ride",
                ("ride.id", &id),
            );
            match (create.first(), stream.first(), applies.len()) {
                (Some(c), Some(s), 2..) => Ok(Journey {
                    create: (*c).clone(),
                    stream: (*s).clone(),
                    applies: applies.into_iter().cloned().collect(),
                }),
                _ => Err(format!(
                    "create {}, stream {}, apply {} of {} spans",
                    create.len(),
                    stream.len(),
                    applies.len(),
                    spans.len()
                )),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_ride_is_one_trace_from_the_api_through_the_log_to_every_consumer() {
    let sys = System::start().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let p = sys.pipeline(&["consumer0", "consumer1"], &env).await;
    let mut history = sys.history("history-a", &env);
    history.start_ready().await;

    // A caller with its own trace: the ride joins it.
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let ride = create_ride(&p.api, Some(&traceparent)).await;
    let j = journey(&receiver, ride).await;
    let spans = receiver.spans();
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();

    // Shown with --nocapture: the ride's trace as the receiver saw it.
    for span in spans.iter().filter(|s| s.trace_id == CALLER_TRACE) {
        let parent = by_id
            .get(span.parent_span_id.as_str())
            .map_or(span.parent_span_id.as_str(), |p| p.name.as_str());
        eprintln!("{:24} {:40} parent: {parent}", span.service, span.name);
    }
    let server = by_id[j.create.parent_span_id.as_str()];
    assert_eq!(server.name, "rocketrides.v1.RideService/CreateRide");
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "the api continues the caller's span"
    );
    for span in [&j.create, server, &j.stream].into_iter().chain(&j.applies) {
        assert_eq!(
            span.trace_id, CALLER_TRACE,
            "{} is in another trace",
            span.name
        );
    }
    let insert = spans
        .iter()
        .find(|s| s.parent_span_id == j.create.span_id && s.name.starts_with("INSERT"))
        .expect("the Postgres insert is a child of CreateRide");
    assert_eq!(insert.attributes["db.system"], "postgresql");

    assert_eq!(
        j.stream.parent_span_id, j.create.span_id,
        "streamer continues CreateRide"
    );
    let (_, batch) = j
        .stream
        .links
        .first()
        .expect("the record links to its batch");
    assert_eq!(by_id[batch.as_str()].name, "stream batch");
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id == *batch && s.name == "XADD"),
        "the batch's Redis work is a child span"
    );

    let mut consumers: Vec<&str> = j
        .applies
        .iter()
        .map(|s| s.attributes["consumer"].as_str())
        .collect();
    consumers.sort();
    consumers.dedup();
    assert_eq!(consumers, ["consumer0", "consumer1"]);
    for apply in &j.applies {
        assert_eq!(
            apply.parent_span_id, j.stream.span_id,
            "consumer continues the streamer"
        );
        let (_, batch) = apply.links.first().expect("the record links to its batch");
        assert_eq!(by_id[batch.as_str()].name, "apply batch");
        assert!(
            spans
                .iter()
                .any(|s| s.parent_span_id == *batch && s.name == "UPDATE consumer_positions")
        );
    }

    // The history member projects the ride in the same trace, after the streamer.
    let id = ride.to_string();
    let (project, batch) = wait_until(
        "the history's spans of the ride",
        Duration::from_secs(60),
        || async {
            let spans = receiver.spans();
            let project = find(
                &spans,
                "rocket-rides-history",
                "project ride",
                ("ride.id", &id),
            );
            let project = project.first().ok_or("no project ride span")?;
            let (_, batch) = project.links.first().ok_or("no link to its batch")?;
            let batch = spans
                .iter()
                .find(|s| s.span_id == *batch)
                .ok_or("no batch span yet")?;
            Ok::<_, &str>(((*project).clone(), batch.name.clone()))
        },
    )
    .await;
    assert_eq!(project.trace_id, CALLER_TRACE);
    assert_eq!(
        project.parent_span_id, j.stream.span_id,
        "history continues the streamer"
    );
    assert_eq!(batch, "project batch");

    // Without a caller trace the api starts one, and the log carries it just the same.
    let ride = create_ride(&p.api, None).await;
    let j = journey(&receiver, ride).await;
    assert_ne!(j.create.trace_id, CALLER_TRACE);
    for span in [&j.stream].into_iter().chain(&j.applies) {
        assert_eq!(
            span.trace_id, j.create.trace_id,
            "{} left the ride's trace",
            span.name
        );
    }
}

/// A consumer's lag in entries and seconds, as the streamer measures it.
async fn lag(
    streamer: &Streamer,
    consumer: &Consumer,
) -> Result<(Option<f64>, Option<f64>), String> {
    let metrics = streamer.metrics().await?;
    let get = |name| metrics.get(name, &[("consumer", consumer.name())]);
    Ok((
        get("rocket_rides_consumer_lag_entries"),
        get("rocket_rides_consumer_lag_seconds"),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_consumer_lag_rises_while_it_is_down_then_returns_to_zero() {
    let sys = System::start().await;
    let mut p = sys.pipeline(&["consumer0", "consumer1"], &[]).await;
    assert_eq!(p.api.load(20, 2).await, 20);
    sys.wait_exact(&p.consumers, Duration::from_secs(60)).await;

    let status = p.consumers[1].terminate().await;
    assert!(status.success(), "SIGTERM should exit 0, got {status:?}");
    assert_eq!(p.api.load(100, 4).await, 100);
    wait_until(
        "consumer1's lag to rise",
        Duration::from_secs(30),
        || async {
            match lag(&p.streamer, &p.consumers[1]).await? {
                (Some(entries), Some(seconds)) if entries >= 100.0 && seconds > 0.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        lag(&p.streamer, &p.consumers[0]).await.unwrap().0,
        Some(0.0),
        "consumer0 kept up"
    );

    p.consumers[1].start_ready().await;
    wait_until(
        "consumer1's lag to return to zero",
        Duration::from_secs(60),
        || async {
            match lag(&p.streamer, &p.consumers[1]).await? {
                (Some(0.0), Some(0.0)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let api = p.api.metrics().await.unwrap();
    assert_eq!(
        api.get("rocket_rides_rides_created_total", &[]),
        Some(120.0)
    );
    let create_ride = [
        ("method", "/rocketrides.v1.RideService/CreateRide"),
        ("code", "Ok"),
    ];
    assert_eq!(
        api.get("rocket_rides_grpc_requests_total", &create_ride),
        Some(120.0)
    );
    let streamer = p.streamer.metrics().await.unwrap();
    assert_eq!(
        streamer.get("rocket_rides_records_streamed_total", &[]),
        Some(120.0)
    );
    assert_eq!(streamer.get("rocket_rides_staged_records", &[]), Some(0.0));
    assert_eq!(streamer.get("rocket_rides_streamer_leader", &[]), Some(1.0));
    assert_eq!(
        p.consumers[0]
            .metric("rocket_rides_records_applied_total")
            .await,
        Ok(Some(120.0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_trace_id_of_their_span() {
    let sys = System::start().await;
    let mut api = sys.api(&[
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info,rocket_rides_api=debug"),
    ]);
    api.start_ready().await;
    let ride = create_ride(&api, Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))).await;

    let line = wait_until(
        "the api to log the ride",
        Duration::from_secs(10),
        || async {
            let log = api.log();
            let lines: Vec<serde_json::Value> = log
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            lines
                .into_iter()
                .find(|l| l["message"] == "ride created" && l["ride_id"] == ride)
                .ok_or("no line yet")
        },
    )
    .await;
    assert_eq!(line["trace_id"], CALLER_TRACE);
    let span_id = line["span_id"].as_str().unwrap();
    assert!(
        span_id.len() == 16 && span_id != CALLER_SPAN,
        "the api's own span: {span_id}"
    );
    assert_eq!(line["level"], "DEBUG");
}
