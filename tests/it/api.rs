//! The API's edge: validation, idempotency keys, commits whose answer is lost (through a proxy
//! that cuts the api's Postgres session mid-statement), and the real grpcurl against reflection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rocket_rides_proto::v1::{CreateRideRequest, CreateRideResponse};
use rocket_rides_tests::{Api, System, grpcurl, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
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

/// A ride of `rider`'s.
fn ridden(distance: f64, key: &str, rider: &str) -> CreateRideRequest {
    CreateRideRequest {
        rider_id: rider.into(),
        ..ride(Some(distance), key)
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
            ridden(10.0, "k", "rider-x"), // the key reused for another rider: fails alone
            ridden(2.0, "two", "rider-a"), // one new key for two riders: whichever is first
            ridden(2.0, "two", "rider-b"), // in the batch makes the ride, the other fails
        ],
    )
    .await;
    assert_eq!(answers[0].as_ref().unwrap().ride_id, first.ride_id);
    for i in [1, 6] {
        assert_eq!(
            answers[i].as_ref().unwrap_err().code(),
            Code::FailedPrecondition,
            "call {i}: {:?}",
            answers[i]
        );
    }
    let two = [&answers[7], &answers[8]];
    assert_eq!(two.iter().filter(|a| a.is_ok()).count(), 1, "{two:?}");
    let refused = two.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let new = (answers[2].as_ref().unwrap(), answers[3].as_ref().unwrap());
    assert_eq!(new.0.ride_id, new.1.ride_id, "one key, one ride");
    let plain = (answers[4].as_ref().unwrap(), answers[5].as_ref().unwrap());
    assert_ne!(plain.0.ride_id, plain.1.ride_id);
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 5,
            staged: 5
        }
    );
    // They really were written together.
    let metrics = api.metrics().await.unwrap();
    let count = metrics
        .get("rocket_rides_api_batch_size_count", &[])
        .unwrap();
    assert!(count < 10.0, "10 calls took {count} group commits");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_key_reused_for_another_rider_is_failed_precondition() {
    let sys = System::start().await;
    let mut api = sys.api(&[]);
    api.start_ready().await;

    let first = api
        .create_ride(ridden(8.0, "rider-key", "rider-a"))
        .await
        .unwrap();
    let again = api
        .create_ride(ridden(8.0, "rider-key", "rider-a"))
        .await
        .unwrap();
    assert_eq!(again.ride_id, first.ride_id, "a true retry gets its ride");

    let other = api
        .create_ride(ridden(8.0, "rider-key", "rider-b"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    for part in [
        "\"rider-key\"",
        "\"rider-a\"",
        "\"rider-b\"",
        "use a new key",
    ] {
        assert!(
            other.message().contains(part),
            "{part}: {}",
            other.message()
        );
    }
    let none = api
        .create_ride(ride(Some(8.0), "rider-key"))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
    assert!(none.message().contains("no rider_id"), "{}", none.message());
    // A key first used without a rider cannot be reused with one either.
    api.create_ride(ride(Some(3.0), "riderless")).await.unwrap();
    let named = api
        .create_ride(ridden(3.0, "riderless", "rider-a"))
        .await
        .unwrap_err();
    assert_eq!(named.code(), Code::FailedPrecondition, "{named:?}");

    assert_eq!(
        written(&sys).await,
        Written {
            rides: 2,
            staged: 2
        }
    );
    let rider: Option<String> =
        sqlx::query_scalar("SELECT rider_id FROM rides WHERE idempotency_key = 'rider-key'")
            .fetch_one(&sys.db)
            .await
            .unwrap();
    assert_eq!(rider.as_deref(), Some("rider-a"));
}

/// Rides stored under `key`: (id, distance).
async fn under_key(sys: &System, key: &str) -> Vec<(i64, f64)> {
    sqlx::query_as("SELECT id, distance::float8 FROM rides WHERE idempotency_key = $1")
        .bind(key)
        .fetch_all(&sys.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_answer_is_lost_is_confirmed_by_key_and_unknown_without_one() {
    let sys = System::start().await;
    let proxy = CutProxy::start(sys.pg.port).await;
    let url = proxy.url();
    let mut env = ONE_BATCH.to_vec();
    env.push(("DATABASE_URL", &url));
    let mut api = sys.api(&env);
    api.start_ready().await;

    // Postgres gets the group's statement and its Sync, commits, and the answer never comes
    // back: the connection closes under the api.
    proxy.arm(Cut::AfterSync);
    let answers = all_at_once(
        &api,
        vec![
            ride(Some(12.5), "lost-1"),
            ride(Some(12.5), "lost-1"),
            ride(Some(7.0), ""),
        ],
    )
    .await;
    assert_eq!(proxy.cuts(), 1, "the statement was cut: {answers:?}");
    let confirmed = answers[0]
        .as_ref()
        .expect("the key finds the committed ride");
    assert_eq!(answers[1].as_ref().unwrap().ride_id, confirmed.ride_id);
    assert!(
        confirmed.message.contains("found it committed"),
        "{}",
        confirmed.message
    );
    assert_eq!(under_key(&sys, "lost-1").await, [(confirmed.ride_id, 12.5)]);
    let unknown = answers[2].as_ref().unwrap_err();
    assert_eq!(unknown.code(), Code::Unknown, "{unknown:?}");
    for part in [
        "may or may not have been created",
        "send an idempotency_key",
    ] {
        assert!(unknown.message().contains(part), "{}", unknown.message());
    }
    assert!(!unknown.message().contains("nothing was written"));
    // It was in fact committed, with the keyed ride: a retry without a key would double it.
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 2,
            staged: 2
        }
    );

    // A retry with the key returns the same ride and writes nothing.
    let again = api.create_ride(ride(Some(12.5), "lost-1")).await.unwrap();
    assert_eq!(again.ride_id, confirmed.ride_id);
    assert_eq!(under_key(&sys, "lost-1").await.len(), 1);
    assert_eq!(written(&sys).await.rides, 2);
    assert_eq!(proxy.cuts(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_cut_before_its_commit_is_found_uncommitted_and_retriable() {
    let sys = System::start().await;
    let proxy = CutProxy::start(sys.pg.port).await;
    let url = proxy.url();
    let mut env = ONE_BATCH.to_vec();
    env.push(("DATABASE_URL", &url));
    let mut api = sys.api(&env);
    api.start_ready().await;

    // Postgres runs the statement but never gets its Sync, so it never commits it; the api
    // cannot tell this from a lost answer until it looks the key up.
    proxy.arm(Cut::BeforeSync);
    let answers = all_at_once(&api, vec![ride(Some(4.5), "cut-1"), ride(Some(6.0), "")]).await;
    assert_eq!(proxy.cuts(), 1, "the statement was cut: {answers:?}");
    let keyed = answers[0].as_ref().unwrap_err();
    assert_eq!(keyed.code(), Code::Unavailable, "{keyed:?}");
    for part in ["not committed", "same idempotency_key"] {
        assert!(keyed.message().contains(part), "{}", keyed.message());
    }
    // The missing key proves that the whole statement rolled back, so the call without a key
    // is told that nothing was written, not that the outcome is unknown.
    let plain = answers[1].as_ref().unwrap_err();
    assert_eq!(plain.code(), Code::Unavailable, "{plain:?}");
    assert!(plain.message().contains("nothing was written"), "{plain:?}");
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 0,
            staged: 0
        }
    );

    let retried = api.create_ride(ride(Some(4.5), "cut-1")).await.unwrap();
    assert_eq!(retried.message, "ride created");
    let again = api.create_ride(ride(Some(4.5), "cut-1")).await.unwrap();
    assert_eq!(again.ride_id, retried.ride_id);
    assert_eq!(under_key(&sys, "cut-1").await, [(retried.ride_id, 4.5)]);
    assert_eq!(written(&sys).await.rides, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_ending_the_session_mid_statement_is_unavailable_and_wrote_nothing() {
    let sys = System::start().await;
    let mut api = sys.api(&[]);
    api.start_ready().await;
    // A statement that runs until its session is ended.
    sqlx::raw_sql(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;
         CREATE TRIGGER stall BEFORE INSERT ON rides FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .execute(&sys.db)
    .await
    .unwrap();

    let call = tokio::spawn({
        let url = api.url();
        async move {
            let mut client =
                rocket_rides_proto::v1::ride_service_client::RideServiceClient::connect(url)
                    .await
                    .unwrap();
            client.create_ride(ride(Some(9.0), "")).await
        }
    });
    let pid: i32 = wait_until(
        "the group's statement to be running",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                 WHERE state = 'active' AND query LIKE '%INSERT INTO rides%'
                   AND pid <> pg_backend_pid()",
            )
            .fetch_optional(&sys.db)
            .await
            .unwrap()
            .ok_or("not yet")
        },
    )
    .await;
    // Postgres ends the session (FATAL, as in a shutdown) before the statement completed.
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert!(ended);
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("nothing was written"),
        "{status:?}"
    );
    assert_eq!(
        written(&sys).await,
        Written {
            rides: 0,
            staged: 0
        }
    );

    sqlx::raw_sql("DROP TRIGGER stall ON rides")
        .execute(&sys.db)
        .await
        .unwrap();
    api.create(9.0).await.unwrap();
    assert_eq!(written(&sys).await.rides, 1);
}

/// Where `CutProxy` cuts the group's statement.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// After forwarding its Sync: Postgres commits it; its answer is lost.
    AfterSync,
    /// Just before its Sync: Postgres runs it but never commits it.
    BeforeSync,
}

/// A TCP proxy between the api and Postgres that reads the api's side of the wire protocol
/// (plaintext) just well enough to cut one session at a chosen point of the group commit's
/// statement (the extended protocol's Parse naming `INSERT INTO rides`, then Bind, Execute,
/// Sync): it closes both sides at once, and Postgres's answer is read and dropped.
struct CutProxy {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(postgres_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(std::sync::Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts) = (armed.clone(), cuts.clone());
            async move {
                let mut sessions = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", postgres_port)).await else {
                        continue;
                    };
                    sessions.spawn(proxy_session(client, server, armed.clone(), cuts.clone()));
                    while sessions.try_join_next().is_some() {}
                }
            }
        });
        Self {
            port,
            armed,
            cuts,
            task,
        }
    }

    /// The api's DATABASE_URL through the proxy.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/rocketrides?sslmode=disable",
            self.port
        )
    }

    /// Cuts the next execution of the group's statement, on whichever session runs it.
    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    /// Sessions cut so far.
    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// SSLRequest and GSSENCRequest: startup-phase messages after which another comes.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

/// The length of the first whole message in `buf`, if there is one.
fn whole_message(buf: &[u8], startup: bool) -> Option<usize> {
    let (at, extra) = if startup { (0, 0) } else { (1, 1) };
    let len = u32::from_be_bytes(buf.get(at..at + 4)?.try_into().unwrap()) as usize + extra;
    (buf.len() >= len).then_some(len)
}

/// The NUL-terminated strings at the start of `body`.
fn c_strings(body: &[u8], n: usize) -> Vec<String> {
    body.split(|&b| b == 0)
        .take(n)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

async fn proxy_session(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut from_client, to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let cut = CancellationToken::new();
    // Postgres to the api, byte for byte, until the cut; after it, read and dropped.
    let back = tokio::spawn({
        let cut = cut.clone();
        async move {
            let mut to_client = Some(to_client);
            let mut buf = vec![0; 64 * 1024];
            loop {
                tokio::select! {
                    _ = cut.cancelled(), if to_client.is_some() => {
                        to_client = None;
                        continue;
                    }
                    read = from_server.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let forward = to_client.as_mut().filter(|_| !cut.is_cancelled());
                            if let Some(out) = forward
                                && out.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    },
                }
            }
        }
    });
    // The api to Postgres, message by message.
    let mut buf = Vec::new();
    let mut startup = true;
    let mut insert_statements = std::collections::HashSet::new();
    let mut bound_insert = false;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = match from_client.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(len) = whole_message(&buf, startup) {
            let message: Vec<u8> = buf.drain(..len).collect();
            if startup {
                let code = u32::from_be_bytes(message[4..8].try_into().unwrap());
                startup = ENCRYPTION_REQUESTS.contains(&code);
                out.extend_from_slice(&message);
                continue;
            }
            let body = &message[5..];
            match message[0] {
                b'P' => {
                    let [name, query] = &c_strings(body, 2)[..] else {
                        unreachable!()
                    };
                    if query.contains("INSERT INTO rides") {
                        insert_statements.insert(name.clone());
                    } else {
                        insert_statements.remove(name);
                    }
                }
                b'B' => bound_insert = insert_statements.contains(&c_strings(body, 2)[1]),
                b'S' if std::mem::take(&mut bound_insert) => {
                    let point = armed.lock().unwrap().take();
                    if let Some(point) = point {
                        // Nothing Postgres answers from here on reaches the api.
                        cut.cancel();
                        if let Cut::AfterSync = point {
                            out.extend_from_slice(&message);
                        }
                        let _ = to_server.write_all(&out).await;
                        let _ = to_server.shutdown().await;
                        cuts.fetch_add(1, Ordering::SeqCst);
                        // Postgres reads what it got, then the end of the connection; the
                        // api's side is closed.
                        drop(from_client);
                        let _ = back.await;
                        return;
                    }
                }
                _ => {}
            }
            out.extend_from_slice(&message);
        }
        if to_server.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
    let _ = back.await;
}
