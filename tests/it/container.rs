//! The OCI image (`make image`, or `make image-debug` as `make test` builds it) run the way the
//! Helm chart runs it: the migration, then the api, the streamer and one consumer as podman
//! containers with the chart's commands and environment, uid 65532, a read-only root filesystem
//! (no tmpfs either), no capabilities, no privilege escalation, on the host's network, against
//! the harness's Postgres and Redis. It goes over TLS everywhere a production install may:
//! Postgres with `sslmode=verify-full` and `sslrootcert`, Redis as `rediss://` with
//! `REDIS_CA_FILE`, the api's gRPC server with `TLS_CERT_FILE`/`TLS_KEY_FILE`, traces to an
//! `https://` OTLP endpoint with `OTEL_EXPORTER_OTLP_CERTIFICATE`, all from a private CA mounted
//! read-only, as a Secret would be. grpcurl creates a ride and reads the total; SIGTERM stops
//! every container with exit code 0, after it flushed its spans.
//!
//! The image comes from `ROCKET_RIDES_IMAGE_ARCHIVE`, else target/image/rocket-rides-log-debug.oci.tar,
//! else target/image/rocket-rides-log.oci.tar; it is loaded with `podman load -i`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use rocket_rides_tests::{
    free_port, otlp::OtlpReceiver, postgres::Postgres, redis_server::RedisServer, wait_until,
};
use tokio::process::Command;

/// What works on this machine and in CI: crun refuses the host's hybrid cgroups, and overlay
/// storage needs mounts a CI container may not allow. buildah (deploy/image/build.sh) uses the
/// same storage driver.
const PODMAN: [&str; 6] = [
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--storage-driver",
    "vfs",
];
/// The chart's values: logPartitions, streamName, logLevel, logFormat.
const CHART_ENV: [(&str, &str); 4] = [
    ("LOG_PARTITIONS", "4"),
    ("STREAM_NAME", "rocket-rides-log"),
    ("RUST_LOG", "info"),
    ("LOG_FORMAT", "json"),
];
const UP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_the_pipeline_as_the_chart_does_over_tls() {
    let podman = podman_version().await;
    let archive = image_archive();
    let dir = tempfile::Builder::new()
        .prefix("rocket-rides-container-")
        .tempdir()
        .unwrap();
    let tls = Tls::create(&dir.path().join("tls")).await;

    let pg = Postgres::start(dir.path(), false).await;
    enable_postgres_tls(&pg, &tls).await;
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(
        dir.path(),
        "redis",
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            tls.file("server.pem"),
            "--tls-key-file",
            tls.file("server.key"),
            "--tls-auth-clients",
            "no",
        ],
    )
    .await;

    let otlp = OtlpReceiver::start_tls(
        &std::fs::read(tls.file("server.pem")).unwrap(),
        &std::fs::read(tls.file("server.key")).unwrap(),
    )
    .await;
    let endpoint = otlp.endpoint();
    let tracing = |service| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/tls/ca.pem"),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ]
    };

    let mut containers = Containers::new(&podman);
    let image = containers.load(&archive).await;
    let database_url = format!(
        "postgres://postgres@127.0.0.1:{}/rocketrides?sslmode=verify-full&sslrootcert=/tls/ca.pem",
        pg.port
    );
    let redis_url = format!("rediss://127.0.0.1:{tls_port}");
    let database = [("DATABASE_URL", database_url.as_str())];
    let redis_env = [
        ("REDIS_URL", redis_url.as_str()),
        ("REDIS_CA_FILE", "/tls/ca.pem"),
    ];

    // The chart's migration (a Job, and an init container in every pod).
    let migrate = containers
        .run(
            &image,
            &tls,
            "migrate",
            &database,
            &["rocket-rides-api", "migrate"],
            false,
        )
        .await;
    assert_eq!(
        containers.exit_code(&migrate).await,
        0,
        "migrate failed:\n{}",
        containers.logs(&migrate).await
    );

    let api_addr = format!("127.0.0.1:{}", free_port());
    // The api's health alone, in plaintext, for probes that cannot speak TLS (the kubelet's).
    let api_health = format!("127.0.0.1:{}", free_port());
    let streamer_addr = format!("127.0.0.1:{}", free_port());
    let consumer_addr = format!("127.0.0.1:{}", free_port());
    let metrics = || format!("127.0.0.1:{}", free_port());
    let (api_metrics, streamer_metrics, consumer_metrics) = (metrics(), metrics(), metrics());
    let api_env = [
        &tracing("rocket-rides-api")[..],
        &[
            database[0],
            ("LISTEN_ADDR", &api_addr),
            ("METRICS_ADDR", &api_metrics),
            ("TLS_CERT_FILE", "/tls/server.pem"),
            ("TLS_KEY_FILE", "/tls/server.key"),
            ("HEALTH_ADDR", &api_health),
        ],
    ]
    .concat();
    let api = containers
        .run(&image, &tls, "api", &api_env, &["rocket-rides-api"], true)
        .await;
    let streamer_env = [
        &tracing("rocket-rides-streamer")[..],
        &[
            database[0],
            redis_env[0],
            redis_env[1],
            ("LISTEN_ADDR", &streamer_addr),
            ("METRICS_ADDR", &streamer_metrics),
            ("BATCH_SIZE", "1000"),
            ("STREAM_MAX_LEN", "10000"),
            ("DOUBLE_SEND_RATE", "0"),
        ],
    ]
    .concat();
    let streamer = containers
        .run(
            &image,
            &tls,
            "streamer",
            &streamer_env,
            &["rocket-rides-streamer"],
            true,
        )
        .await;
    let instance = containers.name("consumer");
    let consumer_env = [
        &tracing("rocket-rides-consumer")[..],
        &[
            database[0],
            redis_env[0],
            redis_env[1],
            ("CONSUMER_NAME", "smoke"),
            ("CONSUMER_INSTANCE", &instance),
            ("LISTEN_ADDR", &consumer_addr),
            ("METRICS_ADDR", &consumer_metrics),
            ("BATCH_SIZE", "1000"),
            ("CRASH_RATE", "0"),
        ],
    ]
    .concat();
    let consumer = containers
        .run(
            &image,
            &tls,
            "consumer",
            &consumer_env,
            &["rocket-rides-consumer"],
            true,
        )
        .await;

    let ca = tls.file("ca.pem");
    let api_tls = ["-cacert", ca];
    for (name, addr, transport) in [
        (&api, &api_addr, &api_tls[..]),
        (&api, &api_health, &["-plaintext"][..]),
        (&streamer, &streamer_addr, &["-plaintext"][..]),
        (&consumer, &consumer_addr, &["-plaintext"][..]),
    ] {
        let check = [transport, &[addr.as_str(), "grpc.health.v1.Health/Check"]].concat();
        let (containers, check) = (&containers, &check);
        wait_until(&format!("{name} to be SERVING"), UP, || async move {
            if containers.exit_code_if_stopped(name).await.is_some() {
                panic!("{name} stopped:\n{}", containers.logs(name).await);
            }
            grpcurl(check)
                .await
                .and_then(|out| match out.contains("\"SERVING\"") {
                    true => Ok(()),
                    false => Err(out),
                })
        })
        .await;
    }

    let created = grpcurl(&[
        "-cacert",
        ca,
        "-d",
        r#"{"distance": 1234.5}"#,
        &api_addr,
        "rocketrides.v1.RideService/CreateRide",
    ])
    .await
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert!(created["rideId"].as_str().is_some(), "{created}");

    let consumer_addr = &consumer_addr;
    let total = wait_until("the consumer to count the ride", UP, || async move {
        let total = grpcurl(&[
            "-plaintext",
            consumer_addr,
            "rocketrides.v1.ConsumerService/GetTotal",
        ])
        .await?;
        let total: serde_json::Value = serde_json::from_str(&total).map_err(|e| e.to_string())?;
        match total["rideCount"] == "1" {
            true => Ok(total),
            false => Err(total.to_string()),
        }
    })
    .await;
    assert_eq!(total["consumer"], "smoke");
    assert_eq!(total["totalDistance"], 1234.5);

    // The services' sessions are encrypted: Postgres says so.
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE s.ssl AND a.datname = 'rocketrides' AND a.client_addr IS NOT NULL",
    )
    .fetch_one(&mut pg_admin(&pg).await)
    .await
    .unwrap();
    assert!(encrypted >= 3, "{encrypted} TLS sessions from the services");

    let api_log = containers.logs(&api).await;
    assert!(api_log.contains("gRPC server speaks TLS"), "{api_log}");

    for name in [&consumer, &streamer, &api] {
        containers.terminate(name).await;
        assert_eq!(
            containers.exit_code(name).await,
            0,
            "{name} did not exit 0 on SIGTERM:\n{}",
            containers.logs(name).await
        );
    }

    // Every service flushed its spans over TLS on the way out: one trace for the ride.
    let ride = created["rideId"].as_str().unwrap();
    let otlp = &otlp;
    wait_until("the ride's spans from every service", UP, || async move {
        let spans = otlp.spans();
        let span = |service: &str, name: &str| {
            spans
                .iter()
                .find(|s| {
                    s.service == service
                        && s.name == name
                        && s.attributes.get("ride.id").map(String::as_str) == Some(ride)
                })
                .map(|s| s.trace_id.clone())
        };
        let traces = [
            span("rocket-rides-api", "CreateRide"),
            span("rocket-rides-streamer", "stream ride"),
            span("rocket-rides-consumer", "apply ride"),
        ];
        match &traces {
            [Some(a), Some(b), Some(c)] if a == b && b == c => Ok(()),
            _ => Err(format!("{traces:?} of {} spans", spans.len())),
        }
    })
    .await;
    drop(redis);
}

/// `podman --version`, or a failure that says how to install it.
async fn podman_version() -> String {
    match Command::new("podman").arg("--version").output().await {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().into(),
        _ => panic!(
            "podman is not installed: run `make deps` (apt-get install podman buildah runc), then \
             `make image-debug`"
        ),
    }
}

fn image_archive() -> PathBuf {
    if let Some(path) = std::env::var_os("ROCKET_RIDES_IMAGE_ARCHIVE") {
        return PathBuf::from(path);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    ["rocket-rides-log-debug.oci.tar", "rocket-rides-log.oci.tar"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "no image archive in {}: run `make image-debug` (or `make image`), or set \
                 ROCKET_RIDES_IMAGE_ARCHIVE",
                dir.display()
            )
        })
}

async fn grpcurl(args: &[&str]) -> Result<String, String> {
    let path = rocket_rides_tests::grpcurl::path();
    let out = Command::new(&path).args(args).output().await.unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into()),
        false => Err(String::from_utf8_lossy(&out.stderr).into()),
    }
}

/// A private CA and a server certificate for 127.0.0.1 and localhost, in a directory every
/// container mounts read-only at /tls (readable by uid 65532, as a Secret's files are).
struct Tls {
    dir: PathBuf,
    files: Vec<(&'static str, String)>,
}

impl Tls {
    async fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let extensions = dir.join("server.ext");
        std::fs::write(
            &extensions,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ca = [
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=rocket-rides-test-ca",
            ][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat();
        let request = [
            &["req", "-subj", "/CN=localhost"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat();
        let sign = [
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ];
        for args in [&ca[..], &request, &sign] {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .await
                .expect("openssl is needed to make test certificates (apt-get install openssl)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = ["ca.pem", "server.pem", "server.key"]
            .map(|name| (name, dir.join(name).to_str().unwrap().to_string()));
        Self {
            dir: dir.to_path_buf(),
            files: files.to_vec(),
        }
    }

    /// The host path of `name`.
    fn file(&self, name: &str) -> &str {
        &self.files.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

/// Turns TLS on in the running Postgres (a reload is enough), with the server certificate; the
/// key must belong to the server's user and be private.
async fn enable_postgres_tls(pg: &Postgres, tls: &Tls) {
    use std::os::unix::fs::MetadataExt;
    let data = pg.data_dir();
    let owner = std::fs::metadata(data).unwrap();
    for name in ["server.pem", "server.key"] {
        let to = data.join(format!("tls-{name}"));
        std::fs::copy(tls.file(name), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut admin = pg_admin(pg).await;
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'tls-server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'tls-server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&mut admin).await.unwrap();
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/rocketrides?sslmode=verify-full&sslrootcert={}",
        pg.port,
        tls.file("ca.pem")
    );
    wait_until("Postgres to accept TLS", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            use sqlx::Connection;
            sqlx::PgConnection::connect(&url).await.map(|_| ())
        }
    })
    .await;
}

async fn pg_admin(pg: &Postgres) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&pg.url()).await.unwrap()
}

/// The containers of one test, by unique names; all removed when it ends (their logs printed
/// first when it failed).
struct Containers {
    prefix: String,
    names: Vec<String>,
}

impl Containers {
    fn new(podman: &str) -> Self {
        eprintln!("{podman}");
        Self {
            prefix: format!(
                "rr-smoke-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            names: Vec::new(),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    async fn podman(args: &[&str]) -> Output {
        Command::new("podman")
            .args(PODMAN)
            .args(args)
            .output()
            .await
            .unwrap()
    }

    async fn podman_ok(args: &[&str]) -> String {
        let out = Self::podman(args).await;
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into()
    }

    /// Loads the archive; returns the image's name.
    async fn load(&self, archive: &Path) -> String {
        let out = Self::podman_ok(&["load", "-i", archive.to_str().unwrap()]).await;
        let loaded = out
            .lines()
            .find_map(|line| line.strip_prefix("Loaded image"))
            .and_then(|rest| rest.split_once(": "))
            .map(|(_, names)| names.split(',').next().unwrap().trim().to_string());
        loaded.unwrap_or_else(|| panic!("podman load printed no image name: {out}"))
    }

    /// Runs `command` in a container named for `role`, as the chart's pods run it: detached, or
    /// to its end.
    async fn run(
        &mut self,
        image: &str,
        tls: &Tls,
        role: &str,
        env: &[(&str, &str)],
        command: &[&str],
        detach: bool,
    ) -> String {
        let name = self.name(role);
        self.names.push(name.clone());
        let mount = format!("{}:/tls:ro", tls.dir.display());
        let mut args = vec![
            "run",
            "--name",
            &name,
            "--network",
            "host",
            "--user",
            "65532:65532",
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            &mount,
        ];
        if detach {
            args.push("--detach");
        }
        let vars: Vec<String> = CHART_ENV
            .iter()
            .chain(env)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for var in &vars {
            args.extend(["--env", var]);
        }
        args.push(image);
        args.extend(command);
        let out = Self::podman(&args).await;
        if detach {
            assert!(
                out.status.success(),
                "podman run {role} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        name
    }

    /// The exit code, once the container has stopped.
    async fn exit_code_if_stopped(&self, name: &str) -> Option<i64> {
        let format = "{{.State.Status}} {{.State.ExitCode}}";
        let state = Self::podman_ok(&["inspect", "--format", format, name]).await;
        match state.split_whitespace().collect::<Vec<_>>()[..] {
            ["exited" | "stopped", code] => Some(code.parse().unwrap()),
            _ => None,
        }
    }

    /// The exit code of a container that has stopped or is stopping.
    async fn exit_code(&self, name: &str) -> i64 {
        wait_until(
            &format!("{name} to stop"),
            Duration::from_secs(30),
            || async move { self.exit_code_if_stopped(name).await.ok_or("running") },
        )
        .await
    }

    /// SIGTERM, as the kubelet sends it.
    async fn terminate(&self, name: &str) {
        Self::podman_ok(&["kill", "--signal", "TERM", name]).await;
    }

    async fn logs(&self, name: &str) -> String {
        let out = Self::podman(&["logs", name]).await;
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let podman = |args: &[&str]| {
            std::process::Command::new("podman")
                .args(PODMAN)
                .args(args)
                .output()
        };
        if std::thread::panicking() {
            for name in &self.names {
                if let Ok(out) = podman(&["logs", "--tail", "40", name]) {
                    eprintln!(
                        "--- {name}:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let mut args = vec!["rm", "--force", "--time", "0"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = podman(&args);
    }
}
