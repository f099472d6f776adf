"""The pods the chart renders run. The chart is rendered by the Helm SDK (as `helm install` would,
with an external Postgres and Redis); every Deployment, StatefulSet and Job it renders becomes
podman containers, one network namespace per pod on podman's bridge, as the kubelet would start
them: init containers to completion first, then the containers with the pod spec's command,
args and env (secretKeyRef, fieldRef and $(VAR) expansion as Kubernetes does them), Secret and
ConfigMap volumes mounted read-only with their items and modes, the user and groups, a
read-only root filesystem without podman's tmpfs, all capabilities dropped, no privilege
escalation; the test then acts as the kubelet's gRPC probes (startup, readiness, liveness) and
as a user: grpcurl creates rides, then the simulator's pod (which reaches the others by their
Services' names, resolved to their pods as cluster DNS would) adds more, and both logical
consumers' totals agree with the rides table. Nothing of the pod specs is written by hand here: a change in the chart that breaks a
pod breaks this test. Twice: in plaintext, and with TLS wherever the chart wires it (Postgres
verify-full and Redis rediss:// against a CA bundle from a Secret, the gRPC servers on TLS from
a kubernetes.io/tls Secret with their probes on the plaintext health port, traces to an
https:// OTLP collector, where each ride is one trace from the api to every consumer).

Needs the image `make image-debug` builds (target/image/rocket-rides-log-debug.oci.tar, or
ROCKET_RIDES_IMAGE_ARCHIVE), podman with runc, Postgres and Redis (`make deps`), grpcurl (.venv).
"""

import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
import uuid

import grpc as grpcio
import helm_python
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rocket-rides"
RELEASE, NAMESPACE = "pods", "rides"
FULL = f"{RELEASE}-rocket-rides"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"]
# podman's default bridge: the host is its gateway.
HOST = "10.88.0.1"
WORKSPACE_VERSION = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(),
                              re.M | re.S).group(1)
IMAGE = f"localhost/rocket-rides-log:{WORKSPACE_VERSION}-debug"
GRPCURL = os.environ.get("GRPCURL") or str(REPO / ".venv" / "bin" / "grpcurl")
PG_PASSWORD, REDIS_PASSWORD = "pods-" + uuid.uuid4().hex, "pods-" + uuid.uuid4().hex
RUN = uuid.uuid4().hex[:8]


def merged(base, extra):
    """`extra` deep-merged over `base` (dicts only; lists replace)."""
    out = json.loads(json.dumps(base))
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wait_for(what, check, timeout):
    """Polls `check` until it returns something truthy; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout} s (last error: {last})")


def podman(*args, check=True, timeout=300):
    out = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"podman {' '.join(args[:3])}: {out.stderr}"
    return out


# ---- External Postgres and Redis, reachable from the pods through the bridge's gateway.

@pytest.fixture(scope="module")
def workdir():
    # Not under pytest's tmp_path: as root, Postgres must run as another user, who needs access.
    tmp = tempfile.mkdtemp(prefix="rr-pods-")
    os.chmod(tmp, 0o755)
    yield pathlib.Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(workdir):
    """A private CA and one server certificate for every TLS server here (Postgres, Redis and
    our gRPC servers), for the addresses the clients use."""
    d = workdir / "tls"
    d.mkdir()
    # The gRPC servers' Service names too: the simulator calls them by name.
    services = [f"{FULL}-api", f"{FULL}-api-headless", f"{FULL}-history"] + \
        [f"{FULL}-consumer-{g}{h}" for g in ("totals-a", "totals-b") for h in ("", "-headless")]
    names = ",".join(f"DNS:{n}" for n in services)
    (d / "server.ext").write_text(f"subjectAltName=IP:{HOST},IP:127.0.0.1,DNS:localhost,{names}\n"
                                  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for args in (["req", "-x509", "-days", "2", "-subj", "/CN=rocket-rides-pods-ca", *ec, "-keyout", "ca.key",
                  "-out", "ca.pem"],
                 ["req", "-subj", "/CN=localhost", *ec, "-keyout", "server.key", "-out", "server.csr"],
                 ["x509", "-req", "-days", "2", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-extfile", "server.ext", "-out", "server.pem"]):
        out = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"openssl {args[0]}: {out.stderr}"
    return {name: d / f for name, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}


@pytest.fixture(scope="module")
def postgres(workdir, certs, free_port):
    bindir = next(iter(sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"))), None)
    assert bindir and (bindir / "initdb").exists(), "Postgres is missing: run `make deps`"
    data, sock, port = workdir / "pg", workdir / "pg-sock", free_port()
    sock.mkdir()
    as_user = {} if os.geteuid() else {"user": 65534, "group": 65534}
    if as_user:
        os.chown(sock, 65534, 65534)
        data.mkdir()
        os.chown(data, 65534, 65534)
    # Its certificate and key, owned by the server's user, the key 0600 (Postgres insists).
    tls = workdir / "pg-tls"
    tls.mkdir()
    for name in ("cert", "key"):
        shutil.copy(certs[name], tls / name)
        os.chmod(tls / name, 0o600)
        if as_user:
            os.chown(tls / name, 65534, 65534)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PGHOST": str(sock), "PGPORT": str(port)}
    pwfile = workdir / "pg-pw"
    pwfile.write_text(PG_PASSWORD)
    os.chmod(pwfile, 0o644)
    subprocess.run(["initdb", "-D", str(data), "-U", "rocketrides", "--pwfile", str(pwfile), "--auth-local", "trust",
                    "--auth-host", "scram-sha-256"], env=env, check=True, capture_output=True, timeout=120, **as_user)
    server = subprocess.Popen(["postgres", "-D", str(data), "-k", str(sock), "-h", "0.0.0.0", "-p", str(port),
                               "-c", "max_connections=200", "-c", "ssl=on", "-c", f"ssl_cert_file={tls / 'cert'}",
                               "-c", f"ssl_key_file={tls / 'key'}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(workdir / "pg.log", "w"), **as_user)
    try:
        wait_for("Postgres", lambda: subprocess.run(["pg_isready", "-q"], env=env).returncode == 0, 60)
        for db in ("rides_plain", "rides_tls"):
            subprocess.run(["psql", "-q", "-U", "rocketrides", "-d", "postgres", "-c", f"CREATE DATABASE {db}"],
                           env=env, check=True, capture_output=True, timeout=30)
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 10.88.0.0/16 scram-sha-256\n")
        subprocess.run(["psql", "-q", "-U", "rocketrides", "-d", "postgres", "-c", "SELECT pg_reload_conf()"], env=env,
                       check=True, capture_output=True, timeout=30)

        def sql(db, query):
            out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", "rocketrides", "-d",
                                  db, "-c", query], env=env, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()
        yield {"url": lambda db: f"postgres://rocketrides:{PG_PASSWORD}@{HOST}:{port}/{db}", "sql": sql}
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def redis(workdir, certs, free_port):
    assert shutil.which("redis-server"), "Redis is missing: run `make deps`"
    port, tls_port = free_port(), free_port()
    (workdir / "redis").mkdir()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--tls-port", str(tls_port), "--tls-cert-file",
                               str(certs["cert"]), "--tls-key-file", str(certs["key"]), "--tls-auth-clients", "no",
                               "--bind", "0.0.0.0", "--requirepass",
                               REDIS_PASSWORD, "--dir", str(workdir / "redis"), "--appendonly", "yes",
                               "--save", ""], stdout=open(workdir / "redis.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for("Redis", lambda: subprocess.run(["redis-cli", "-p", str(port), "-a", REDIS_PASSWORD, "--no-auth-warning",
                                                  "ping"], capture_output=True, text=True).stdout.strip() == "PONG", 30)
        yield {"plain": f"redis://:{REDIS_PASSWORD}@{HOST}:{port}", "tls": f"rediss://:{REDIS_PASSWORD}@{HOST}:{tls_port}"}
    finally:
        server.terminate()
        server.wait(timeout=60)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: records (service, pod, trace id) of every span."""

    def __init__(self):
        self.spans = []

    def Export(self, request, context):  # noqa: N802 - the OTLP method's name
        for rs in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            self.spans += [(attrs.get("service.name"), attrs.get("k8s.pod.name"), span.trace_id.hex())
                           for ss in rs.scope_spans for span in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def collector(certs, free_port):
    """The collector over TLS, on the bridge's gateway as the pods see it."""
    from concurrent import futures
    server = grpcio.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_secure_port(f"0.0.0.0:{free_port()}", grpcio.ssl_server_credentials(
        [(certs["key"].read_bytes(), certs["cert"].read_bytes())]))
    server.start()
    receiver.endpoint = f"https://{HOST}:{port}"
    yield receiver
    server.stop(grace=None)


@pytest.fixture(scope="module")
def image():
    archive = os.environ.get("ROCKET_RIDES_IMAGE_ARCHIVE") or str(REPO / "target" / "image" / "rocket-rides-log-debug.oci.tar")
    assert os.path.exists(archive), f"{archive} is missing: run `make image-debug`"
    subprocess.run(["bash", str(REPO / "deploy" / "image" / "containers-conf.sh")], check=True, timeout=60)
    podman("load", "-q", "-i", archive, timeout=600)
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, f"{archive} does not hold {IMAGE}"
    return IMAGE


# ---- The chart, rendered as `helm install` renders it.

VALUES = {
    "image": {"registry": "localhost", "repository": "rocket-rides-log", "tag": f"{WORKSPACE_VERSION}-debug",
              "pullPolicy": "Never"},
    "postgresql": {"enabled": False},
    "externalDatabase": {"existingSecret": "rides-db"},
    "redis": {"enabled": False},
    "externalRedis": {"existingSecret": "rides-redis"},
    "jaeger": {"enabled": False},
    "migrations": {"hook": {"enabled": True}},
    "api": {"replicas": 1},
    "history": {"replicas": 1},
    "consumer": {"groups": [{"name": "totals-a", "replicas": 1}, {"name": "totals-b", "replicas": 1}]},
    "logFormat": "text",
    "simulator": {"enabled": True, "ridesPerSecond": 10},
    # The options users add: a variable, a scratch volume and its mount in every app container.
    "extraEnv": [{"name": "RR_PODS_TEST", "value": "$(POD_NAME) in $(POD_NAMESPACE)"}],
    "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
}


# With TLS wherever the chart wires it (the OTLP collector aside: none runs here).
TLS_VALUES = {
    "externalDatabase": {"sslmode": "verify-full"},
    "externalRedis": {"tls": True},
    "tls": {"caBundle": {"secret": "corp-ca", "key": "bundle.pem"},
            "server": {"enabled": True, "secretName": "rides-grpc-tls"}},
}


def rendered(values):
    chart = helm_python.Chart.load(str(CHART))
    try:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    return [o for p, t in files.items() if p.endswith(".yaml") and "/tests/" not in p
            for o in yaml.safe_load_all(t) if o]


# ---- A small kubelet: a pod spec as podman containers.

def expand(text, env):
    """Kubernetes's $(VAR) expansion: defined variables are replaced, $$ is a literal $, anything
    else is left as it is."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Pod:
    def __init__(self, name, spec, cluster, dir, free_port, hosts=None):
        self.name, self.spec, self.cluster, self.free_port = name, spec, cluster, free_port
        # Cluster DNS as this pod would see it: {name: IP}.
        self.hosts = hosts or {}
        self.dir = dir / name
        self.dir.mkdir()
        self.containers = []
        self.ports = {}  # containerPort -> host port

    def env(self, container):
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
                continue
            src = e["valueFrom"]
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                env[e["name"]] = self.cluster["Secret"][ref["name"]][ref["key"]]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[e["name"]] = self.cluster["ConfigMap"][ref["name"]][ref["key"]]
            elif "fieldRef" in src:
                env[e["name"]] = {"metadata.name": self.name, "metadata.namespace": NAMESPACE,
                                  "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}[
                    src["fieldRef"]["fieldPath"]]
            else:
                pytest.fail(f"{self.name}: env {e['name']} from {src}: not modelled here")
        return env

    def volumes(self):
        """{volume name: podman mount argument}, files written as the kubelet would."""
        out = {}
        for v in self.spec.get("volumes", []):
            path = self.dir / "volumes" / v["name"]
            if "secret" in v or "configMap" in v:
                kind, ref = ("Secret", v["secret"]["secretName"]) if "secret" in v else \
                    ("ConfigMap", v["configMap"]["name"])
                src = v.get("secret") or v.get("configMap")
                data = self.cluster[kind][ref]
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                path.mkdir(parents=True)
                for item in items:
                    f = path / item["path"]
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(data[item["key"]])
                    mode = item.get("mode", src.get("defaultMode", 0o644))
                    os.chmod(f, mode)
                    fs_group = self.spec.get("securityContext", {}).get("fsGroup")
                    if fs_group is not None:
                        os.chown(f, 0, fs_group)
                out[v["name"]] = path
            elif "emptyDir" in v:
                path.mkdir(parents=True)
                os.chmod(path, 0o777)
                out[v["name"]] = path
            else:
                pytest.fail(f"{self.name}: volume {v['name']}: {sorted(v)} is not modelled here")
        return out

    def run_args(self, c, volumes, network):
        psc, sc = self.spec.get("securityContext", {}), c.get("securityContext", {})
        user = sc.get("runAsUser", psc.get("runAsUser"))
        group = sc.get("runAsGroup", psc.get("runAsGroup"))
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            assert user not in (None, 0), f"{self.name}/{c['name']}: runAsNonRoot without a non-root runAsUser"
        args = ["--name", f"rr-{RUN}-{self.name}-{c['name']}"[:120], "--network", network, "--hostname", self.name,
                "--pull", "never"]
        for host, ip in sorted(self.hosts.items()):
            args += ["--add-host", f"{host}:{ip}"]
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else user}"]
        if psc.get("fsGroup") is not None:
            args += ["--group-add", str(psc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            # As Kubernetes: nothing writable but the volumes (podman would add tmpfs mounts).
            args += ["--read-only", "--read-only-tmpfs=false"]
        caps = sc.get("capabilities", {})
        if "ALL" in caps.get("drop", []):
            args += ["--cap-drop", "all"]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        env = self.env(c)
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        for m in c.get("volumeMounts", []):
            ro = ":ro" if m.get("readOnly") else ""
            args += ["--volume", f"{volumes[m['name']]}:{m['mountPath']}{ro}"]
        command = [expand(x, env) for x in c.get("command", [])]
        rest = [expand(x, env) for x in c.get("args", [])]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        return args + [c["image"]] + rest, env

    def start(self):
        volumes = self.volumes()
        for c in self.spec.get("initContainers", []):
            args, _ = self.run_args(c, volumes, "podman")
            out = podman("run", "--rm", *args, check=False, timeout=300)
            assert out.returncode == 0, f"{self.name}: init container {c['name']} exited {out.returncode}: {out.stderr[-3000:]}"
        first = None
        for c in self.spec["containers"]:
            publish = []
            if first is None:
                for p in c.get("ports", []):
                    self.ports[p["containerPort"]] = self.free_port("127.0.0.1")
                    publish += ["--publish", f"127.0.0.1:{self.ports[p['containerPort']]}:{p['containerPort']}"]
            network = "podman" if first is None else f"container:{first}"
            args, _ = self.run_args(c, volumes, network)
            out = podman("run", "--detach", *publish, *args, timeout=300)
            cid = out.stdout.strip()
            self.containers.append((c, cid))
            first = first or cid

    def run_to_completion(self, timeout):
        """A Job's pod: its containers run, and must exit 0."""
        self.start()
        for c, cid in self.containers:
            out = podman("wait", cid, timeout=timeout)
            assert out.stdout.strip() == "0", f"{self.name}/{c['name']} exited {out.stdout.strip()}: {self.logs(cid)}"

    def logs(self, cid):
        out = podman("logs", cid, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def probe(self, c, probe):
        """What the kubelet does for one probe: true when it passes."""
        if "grpc" in probe:
            port = self.ports[probe["grpc"]["port"]]
            out = subprocess.run([GRPCURL, "-plaintext", "-max-time", "3", "-d",
                                  json.dumps({"service": probe["grpc"].get("service", "")}),
                                  f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"],
                                 capture_output=True, text=True, timeout=10)
            return out.returncode == 0 and '"SERVING"' in out.stdout
        pytest.fail(f"{self.name}/{c['name']}: probe {sorted(probe)} is not modelled here")

    def wait_ready(self):
        for c, cid in self.containers:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                assert probe, f"{self.name}/{c['name']} has no {kind}"
                budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
                wait_for(f"{self.name}/{c['name']} {kind}",
                         lambda: self.running(cid) and self.probe(c, probe), min(budget, 120))

    def running(self, cid):
        state = json.loads(podman("inspect", cid).stdout)[0]["State"]
        assert state["Running"] or state["ExitCode"] == 0, f"{self.name}: exited {state['ExitCode']}: {self.logs(cid)}"
        return state["Running"]

    def ip(self):
        (_, cid), *_ = self.containers
        return json.loads(podman("inspect", cid).stdout)[0]["NetworkSettings"]["Networks"]["podman"]["IPAddress"]

    def stop(self):
        """SIGTERM and the grace period, as a pod deletion: every container exits 0."""
        grace = self.spec.get("terminationGracePeriodSeconds", 30)
        codes = {}
        for c, cid in self.containers:
            podman("stop", "--time", str(grace), cid, check=False, timeout=grace + 60)
            codes[c["name"]] = json.loads(podman("inspect", cid).stdout)[0]["State"]["ExitCode"]
        return codes

    def remove(self):
        for _, cid in self.containers:
            podman("rm", "--force", cid, check=False)


def grpc(port, method, body=None, ca=None):
    tls = ["-cacert", str(ca)] if ca else ["-plaintext"]
    args = [GRPCURL, *tls, "-max-time", "10"] + (["-d", json.dumps(body)] if body is not None else [])
    out = subprocess.run(args + [f"127.0.0.1:{port}", method], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{method}: {out.stderr}"
    return json.loads(out.stdout)


@pytest.mark.parametrize("scenario", ["plain", "tls"])
def test_the_pods_the_chart_renders_run_and_count_every_ride(workdir, postgres, redis, certs, collector, image,
                                                             free_port, scenario):
    assert os.path.exists(GRPCURL), f"{GRPCURL} is missing: run `make venv`"
    tls = scenario == "tls"
    db = f"rides_{scenario}"
    # Each scenario its own database and log (streamName) on the shared servers.
    values = merged(VALUES, {"streamName": f"rides-{scenario}"} | (TLS_VALUES if tls else {}))
    if tls:
        values = merged(values, {"tracing": {"otlpEndpoint": collector.endpoint}})
    objects = rendered(values)
    # The Secrets a user would create, and the chart's own Secrets and ConfigMaps.
    cluster = {"Secret": {"rides-db": {"database-url": postgres["url"](db)},
                          "rides-redis": {"redis-url": redis[scenario]},
                          "corp-ca": {"bundle.pem": certs["ca"].read_text()},
                          "rides-grpc-tls": {"tls.crt": certs["cert"].read_text(), "tls.key": certs["key"].read_text()}},
               "ConfigMap": {}}
    ca = certs["ca"] if tls else None
    workdir = workdir / f"pods-{scenario}"
    workdir.mkdir()
    for o in objects:
        if o["kind"] in cluster:
            data = {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()} \
                if o["kind"] == "Secret" else dict(o.get("data", {}))
            cluster[o["kind"]][o["metadata"]["name"]] = data | o.get("stringData", {})
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Job"} <= kinds
    pods, started = [], time.monotonic()
    try:
        # Helm's order: the pre-install hook Job first (it must finish), then everything else.
        for job in (o for o in objects if o["kind"] == "Job"):
            pod = Pod(f"{job['metadata']['name']}-{RUN[:5]}", job["spec"]["template"]["spec"], cluster, workdir, free_port)
            pods.append(pod)
            pod.run_to_completion(timeout=180)
        workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
        assert {o["metadata"]["name"] for o in workloads} == {
            f"{FULL}-api", f"{FULL}-streamer", f"{FULL}-history", f"{FULL}-consumer-totals-a", f"{FULL}-consumer-totals-b",
            f"{FULL}-simulator"}
        # The simulator calls the others by their Services' names: it starts once they run.
        simulator = next(w for w in workloads if w["metadata"]["name"] == f"{FULL}-simulator")
        workloads.remove(simulator)
        by_name = {}
        for w in workloads:
            for i in range(w["spec"].get("replicas", 1)):
                name = f"{w['metadata']['name']}-{i}" if w["kind"] == "StatefulSet" else \
                    f"{w['metadata']['name']}-{RUN[:5]}-{i}"
                pod = Pod(name, w["spec"]["template"]["spec"], cluster, workdir, free_port)
                pods.append(pod)
                pod.start()
                by_name[w["metadata"]["name"]] = pod
        for pod in pods:
            if pod.name.startswith(f"{FULL}-migrations"):
                continue
            pod.wait_ready()
        print(f"every pod ready {time.monotonic() - started:.0f} s after the first started")
        for pod in by_name.values():
            (_, cid), = pod.containers
            config = json.loads(podman("inspect", cid).stdout)[0]
            assert f"RR_PODS_TEST={pod.name} in {NAMESPACE}" in config["Config"]["Env"], pod.name
            assert "/scratch" in {m["Destination"] for m in config["Mounts"]}, pod.name
            # As the pod spec says: read-only root, no capabilities, its user.
            assert config["HostConfig"]["ReadonlyRootfs"] and config["Config"]["User"] == "65532:65532", pod.name
            assert not config["EffectiveCaps"], pod.name

        api = by_name[f"{FULL}-api"]
        api_port = api.ports[50051]
        distances = [1234.5, 42.0, 7.25]
        for i, d in enumerate(distances):
            ride = grpc(api_port, "rocketrides.v1.RideService/CreateRide",
                        {"distance": d, "idempotency_key": f"pods-{RUN}-{i}", "rider_id": f"rider-{i}"}, ca)
            assert ride["rideId"]
        # The same key again: still three rides.
        grpc(api_port, "rocketrides.v1.RideService/CreateRide",
             {"distance": distances[0], "idempotency_key": f"pods-{RUN}-0", "rider_id": "rider-0"}, ca)
        total, count = postgres["sql"](db, "SELECT SUM(distance), COUNT(*) FROM rides").split("|")
        assert (float(total), int(count)) == (sum(distances), 3)
        for group in ("totals-a", "totals-b"):
            port = by_name[f"{FULL}-consumer-{group}"].ports[50052]
            answer = wait_for(f"{group}'s total", lambda: (lambda t: t if int(t.get("rideCount", 0)) == 3 else None)(
                grpc(port, "rocketrides.v1.ConsumerService/GetTotal", ca=ca)), 60)
            assert answer["consumer"] == group
            assert answer["totalDistance"] == pytest.approx(sum(distances))
        history = by_name[f"{FULL}-history"].ports[50055]
        wait_for("history's ride", lambda: grpc(history, "rocketrides.v1.HistoryService/ListRides",
                                                 {"rider_id": "rider-1"}, ca).get("rides"), 60)

        # The simulator: each Service's name (short and qualified) resolves to the IP of a pod
        # it selects, as cluster DNS would (one pod each here, so ClusterIP and headless alike).
        hosts = {}
        for svc in (o for o in objects if o["kind"] == "Service"):
            selector = svc["spec"]["selector"].items()
            target = next((by_name[w["metadata"]["name"]] for w in workloads
                           if selector <= w["spec"]["template"]["metadata"]["labels"].items()), None)
            if target:
                name = svc["metadata"]["name"]
                for host in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"):
                    hosts[host] = target.ip()
        sim = Pod(f"{FULL}-simulator-{RUN[:5]}-0", simulator["spec"]["template"]["spec"], cluster, workdir, free_port,
                  hosts)
        pods.append(sim)
        sim.start()
        sim.wait_ready()
        # It creates rides through the api (over TLS when the servers speak it) until stopped.
        wait_for("the simulator's rides", lambda: int(postgres["sql"](db, "SELECT COUNT(*) FROM rides")) >= 30, 60)
        assert set(sim.stop().values()) == {0}
        total, count = postgres["sql"](db, "SELECT SUM(distance), COUNT(*) FROM rides").split("|")
        for group in ("totals-a", "totals-b"):
            port = by_name[f"{FULL}-consumer-{group}"].ports[50052]
            answer = wait_for(f"{group}'s total after the simulator", lambda: (
                lambda t: t if int(t.get("rideCount", 0)) == int(count) else None)(
                grpc(port, "rocketrides.v1.ConsumerService/GetTotal", ca=ca)), 60)
            assert answer["totalDistance"] == pytest.approx(float(total))
        if tls:
            # The servers speak nothing but TLS on their gRPC ports; the probes used the
            # plaintext health port.
            plain = subprocess.run([GRPCURL, "-plaintext", "-max-time", "3", f"127.0.0.1:{api_port}",
                                    "grpc.health.v1.Health/Check"], capture_output=True, text=True, timeout=10)
            assert plain.returncode != 0
            # And the clients verified Postgres: every connection of the app role is encrypted.
            assert postgres["sql"](db, "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                                       f"WHERE usename = 'rocketrides' AND datname = '{db}' "
                                       "AND client_addr << '10.88.0.0/16'") == "t"
        if tls:
            # One trace per ride, from the CreateRide call through the streamer to every consumer
            # (each group's pod) and history, each span from its pod (OTEL_RESOURCE_ATTRIBUTES).
            pods_expected = {p.name for p in by_name.values()}  # the simulator aside: grpcurl made the ride

            def whole_trace():
                by_trace = {}
                for _, pod, trace in list(collector.spans):
                    by_trace.setdefault(trace, set()).add(pod)
                return [t for t, p in by_trace.items() if pods_expected <= p]
            wait_for("a ride's trace through every pod", whole_trace, 60)
            services = {service for service, _, _ in collector.spans}
            assert {"rocket-rides-api", "rocket-rides-streamer", "rocket-rides-consumer",
                    "rocket-rides-history"} <= services
        # SIGTERM, as when Kubernetes deletes the pods: each drains and exits 0.
        for pod in reversed([p for p in pods if p.name in {x.name for x in by_name.values()}]):
            assert set(pod.stop().values()) == {0}, pod.name
    finally:
        for pod in pods:
            pod.remove()


def test_the_jobs_that_call_the_kubernetes_api_speak_their_binarys_command_line(workdir, image, free_port):
    """The generated-secrets Job and the chaos CronJob need an API server, which does not run
    here; their pod specs still run from the image, so the binaries exist and accept what the
    chart passes, and stop at the missing API with exit 1 and a message saying so."""
    chart = helm_python.Chart.load(str(CHART))
    try:
        files = chart.render(merged(VALUES, {"postgresql": {"enabled": True}, "redis": {"enabled": True},
                                             "chaos": {"enabled": True}}),
                             name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    objects = [o for p, t in files.items() if p.endswith(".yaml") for o in yaml.safe_load_all(t) if o]
    specs = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Job"
             and o["metadata"]["name"].startswith(f"{FULL}-generated-secrets")}
    specs |= {o["metadata"]["name"]: o["spec"]["jobTemplate"]["spec"]["template"]["spec"] for o in objects
              if o["kind"] == "CronJob"}
    assert len(specs) == 2
    dir = workdir / "api-callers"
    dir.mkdir()
    for name, spec in specs.items():
        pod = Pod(f"{name[:40]}-{RUN[:5]}", spec, {"Secret": {}, "ConfigMap": {}}, dir, free_port)
        volumes = pod.volumes()
        for c in spec["containers"]:
            args, _ = pod.run_args(c, volumes, "none")
            out = podman("run", "--rm", *args, check=False, timeout=120)
            assert out.returncode == 1, (name, c["name"], out.returncode, out.stderr[-2000:])
            assert "cannot find the Kubernetes API" in out.stdout + out.stderr, (name, out.stderr[-2000:])
