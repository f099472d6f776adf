//! The API's edge: validation, idempotency keys, and the real grpcurl against reflection.

use std::time::Duration;

use rocket_rides_proto::v1::{CreateRideRequest, CreateRideResponse};
use rocket_rides_tests::{Api, System, grpcurl};
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
        ..Default::default()
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

/// Calls made at once, so that they land in one group commit (the api waits up to
/// `BATCH_MAX_WAIT_MS` for more, with a single writer).
async fn all_at_once(
    api: &Api,
    calls: Vec<CreateRideRequest>,
) -> Vec<Result<CreateRideResponse, tonic::Status>> {
    let client = api.client().await;
    let calls = calls.into_iter().map(|request| {
        let mut client = client.clone();
        tokio::spawn(async move { client.create_ride(request).await.map(|r| r.into_inner()) })
    });
    let mut answers = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.unwrap());
    }
    answers
}

const ONE_BATCH: [(&str, &str); 2] = [("BATCH_MAX_WAIT_MS", "500"), ("WRITERS", "1")];

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_one_group_commit_keep_their_own_outcomes() {
    let sys = System::start().await;
    let mut api = sys.api(&ONE_BATCH);
    api.start_ready().await;
    let first = api.create_ride(ride(Some(10.0), "k")).await.unwrap();

    let answers = all_at_once(
        &api,
        vec![
            ride(Some(10.0), "k"),  // a retry of the first: its ride
            ride(Some(20.0), "k"),  // the key reused with another distance: fails alone
            ride(Some(5.0), "new"), // two calls with one new key: one ride
            ride(Some(5.0), "new"),
            ride(Some(7.0), ""), // plain rides
            ride(Some(7.0), ""),
        ],
    )
    .await;
    assert_eq!(answers[0].as_ref().unwrap().ride_id, first.ride_id);
    assert_eq!(
        answers[1].as_ref().unwrap_err().code(),
        Code::FailedPrecondition
    );
    let new = (answers[2].as_ref().unwrap(), answers[3].as_ref().unwrap());
    assert_eq!(new.0.ride_id, new.1.ride_id, "one key, one ride");
    let plain = (answers[4].as_ref().unwrap(), answers[5].as_ref().unwrap());
    assert_ne!(plain.0.ride_id, plain.1.ride_id);
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 4,
            staged: 4
        }
    );
    // They really were written together.
    let metrics = api.metrics().await.unwrap();
    let count = metrics
        .get("rocket_rides_api_batch_size_count", &[])
        .unwrap();
    assert!(count < 7.0, "7 calls took {count} group commits");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_group_commit_fails_exactly_its_calls_and_writes_nothing() {
    let sys = System::start().await;
    let mut api = sys.api(&ONE_BATCH);
    api.start_ready().await;
    // A database that refuses one ride makes its whole statement fail.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.distance = 666 THEN RAISE EXCEPTION 'refused'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON rides FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&sys.db)
    .await
    .unwrap();

    let answers = all_at_once(&api, vec![ride(Some(666.0), ""), ride(Some(1.0), "a")]).await;
    for answer in &answers {
        assert_eq!(
            answer.as_ref().unwrap_err().code(),
            Code::Unavailable,
            "{answer:?}"
        );
    }
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 0,
            staged: 0
        }
    );
    // The next group commit is not affected, and a retry with the key is safe.
    api.create_ride(ride(Some(1.0), "a")).await.unwrap();
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 1,
            staged: 1
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_shed_at_once_and_every_acknowledged_ride_is_kept() {
    let sys = System::start().await;
    let env = [
        ("MAX_PENDING_RIDES", "4"),
        ("WRITERS", "1"),
        ("BATCH_MAX_RIDES", "1"),
    ];
    let mut api = sys.api(&env);
    api.start_ready().await;
    // A slow database: each ride takes 50 ms to write.
    sqlx::raw_sql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON rides FOR EACH ROW EXECUTE FUNCTION slow();",
    )
    .execute(&sys.db)
    .await
    .unwrap();

    let answers = all_at_once(&api, (0..40).map(|_| ride(Some(3.0), "")).collect()).await;
    let acknowledged = answers.iter().filter(|a| a.is_ok()).count() as i64;
    let shed = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert!(shed > 0, "nothing was shed: {answers:?}");
    assert_eq!(
        acknowledged as usize + shed,
        40,
        "only sheds fail: {answers:?}"
    );
    assert_eq!(written(&sys).await.rides, acknowledged);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_services_by_reflection_and_creates_a_ride() {
    let sys = System::start().await;
    let p = sys.pipeline(&["consumer0"], &[]).await;
    let api_addr = p.api.listen_addr();
    let consumer_addr = p.consumers[0].listen_addr();

    let listed = grpcurl::run(&["-plaintext", api_addr, "list"]);
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

    let created = grpcurl::run(&[
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

    let health = grpcurl::run(&["-plaintext", api_addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    sys.wait_exact(&p.consumers, Duration::from_secs(60)).await;
    let total = grpcurl::run(&[
        "-plaintext",
        consumer_addr,
        "rocketrides.v1.ConsumerService/GetTotal",
    ]);
    let total: serde_json::Value = serde_json::from_str(&total).unwrap();
    assert_eq!(total["consumer"], "consumer0");
    assert_eq!(total["totalDistance"], 12.5);
    assert_eq!(total["rideCount"], "1");
}
