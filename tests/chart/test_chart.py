"""The Helm chart, checked without a cluster: linted and rendered by the real Helm SDK,
every object validated against the Kubernetes schemas, then the things a schema cannot see."""

import base64
import copy
import ipaddress
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "rocket-rides"
HERE = pathlib.Path(__file__).resolve().parent
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "demo", "rides"
FULL = f"{RELEASE}-rocket-rides"

# Every render gets these passwords unless a test says otherwise (auth=False); without them
# (value set "generated") the chart generates them in the cluster (see its README).
AUTH = {"postgresql": {"auth": {"password": "app-secret", "postgresPassword": "super-secret"}},
        "redis": {"auth": {"password": "redis-secret"}}}
DEMO = yaml.safe_load((CHART / "values-demo.yaml").read_text())
# The PodMonitor instead of the ServiceMonitor (both at once are refused).
POD_MONITORING = {"monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
MONITORING = {"monitoring": {"serviceMonitor": {"enabled": True},
                             "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}

# TLS everywhere the chart can wire it: an external Postgres (verify-full) and Redis Cluster
# (rediss://) over TLS, an https:// collector, a CA bundle from a Secret, the gRPC servers on TLS
# with a cert-manager Certificate; the helm test and chaos as well, the simulator cannot be (its
# client has no TLS).
TLS = {
    "postgresql": {"enabled": False},
    "externalDatabase": {"existingSecret": "rides-db", "sslmode": "verify-full"},
    "redis": {"enabled": False},
    "externalRedis": {"url": "redis://r-0.example:6380,redis://r-1.example:6380", "cluster": True, "tls": True,
                      "networkPolicy": {"ports": [6380]}},
    "jaeger": {"enabled": False},
    "tracing": {"otlpEndpoint": "https://collector.observability:4317"},
    "migrations": {"hook": {"enabled": True}},
    "chaos": {"enabled": True},
    "tls": {"caBundle": {"secret": "corp-ca", "key": "bundle.pem"},
            "server": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "internal-ca"}}}},
}

VALUE_SETS = {
    "default": {},
    "demo": DEMO,
    "external": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "rides-db", "urlKey": "url"},
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "rides-redis"},
        "chaos": {"enabled": False},
        "jaeger": {"enabled": False},
        "tracing": {"otlpEndpoint": "http://collector.observability:4317"},
        "migrations": {"hook": {"enabled": True}},
    },
    "hardened": {
        "consumer": {"groups": [{"name": "totals", "replicas": 3}, {"name": "audit", "replicas": 1}]},
        "streamer": {"replicas": 2},
        "chaos": {"enabled": True, "mode": "delete"},
    },
    "single": {"api": {"replicas": 1}, "consumer": {"groups": [{"name": "totals", "replicas": 1}]},
               "history": {"replicas": 1}, "chaos": {"enabled": True, "dryRun": True},
               "networkPolicy": {"enabled": False}, "metrics": {"enabled": False}},
    "cluster": {
        "redis": {"cluster": {"enabled": True}},
        "chaos": {"enabled": True, "targetRedisCluster": True},
    },
    "monitoring": MONITORING | {"chaos": {"enabled": True}},
    "tls": TLS,
    "existing": {"postgresql": {"auth": {"existingSecret": "my-pg"}},
                 "redis": {"auth": {"existingSecret": "my-redis", "existingSecretPasswordKey": "pw"}},
                 "history": {"enabled": False}},
    # No passwords at all: the generatedSecrets Job creates the Secrets in the cluster.
    "generated": {"chaos": {"enabled": True}},
    # The options users expect from a chart (issue 20, point 9), all at once.
    "options": {
        "global": {"imagePullSecrets": ["mirror"]},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "rides@p.iam.gserviceaccount.com"}},
        "priorityClassName": "rides-critical",
        "podAnnotations": {"team.example.com/owner": "rides"},
        "podLabels": {"team": "rides"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "extraVolumes": [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True}}],
        "extraVolumeMounts": [{"name": "vault", "mountPath": "/mnt/vault", "readOnly": True}],
        "api": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6,
                                "targetMemoryUtilizationPercentage": 75},
                "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}},
                "ingress": {"enabled": True, "className": "nginx",
                            "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"},
                            "hosts": [{"host": "rides.example.com"}],
                            "tls": [{"secretName": "rides-tls", "hosts": ["rides.example.com"]}]}},
        "jaeger": {"ingress": {"enabled": True, "hosts": [{"host": "traces.example.com",
                                                           "paths": [{"path": "/", "pathType": "Prefix"}]}]}},
        "redis": {"cluster": {"enabled": True, "podAntiAffinity": "soft"}},
        "chaos": {"enabled": True},
    },
}
# Value sets whose secrets come from existingSecret or are generated (no password values).
NO_AUTH = {"existing", "generated"}

WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CERT_KINDS = {"Certificate"}
DEFAULT_GROUPS = [{"name": "totals-a", "replicas": 2}, {"name": "totals-b", "replicas": 2}]


def merged(base, extra):
    """`extra` deep-merged over `base` (dicts only; lists replace)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def with_auth(values, auth=True):
    return merged(AUTH, values) if auth else copy.deepcopy(values)


def render_files(values, release=RELEASE, auth=True):
    chart = helm_python.Chart.load(str(CHART))
    try:
        return chart.render(with_auth(values, auth), name=release, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()


def render_fresh(values, release=RELEASE, auth=True):
    """The chart's objects for `values`, rendered now."""
    objects = []
    for path, text in render_files(values, release, auth).items():
        if not path.endswith(".yaml"):
            continue
        objects += [o for o in yaml.safe_load_all(text) if o]
    return objects


_RENDERED = {}


def render(values, release=RELEASE, auth=True):
    """As render_fresh, but each set of values is rendered once per run (a render costs most of
    a second); every caller gets its own copy to change."""
    key = (json.dumps(values, sort_keys=True), release, auth)
    if key not in _RENDERED:
        _RENDERED[key] = render_fresh(values, release, auth)
    return copy.deepcopy(_RENDERED[key])


def render_error(values, auth=True):
    """The error Helm gives for `values`."""
    with pytest.raises(helm_python.HelmError) as err:
        render(values, auth=auth)
    return str(err.value)


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param], auth=request.param not in NO_AUTH)


def pod_spec(obj):
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_labels(obj):
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def containers(obj, init=True):
    spec = pod_spec(obj)
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lints_clean(name):
    result = helm_python.lint(str(CHART), with_auth(VALUE_SETS[name], name not in NO_AUTH), strict=True,
                              namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    assert result["errors"] == []
    problems = [m for m in result["messages"] if m["severity"] >= 2]
    assert problems == []


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    _, objects = rendered
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS | CERT_KINDS:
            continue  # test_monitoring_objects_validate_against_their_crd_schemas, test_the_certificate_...
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_every_service_selects_the_pods_it_is_meant_for(rendered):
    _, objects = rendered
    workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matched = [w for w in workloads
                   if selector.items() <= pod_labels(w).items()]
        assert len(matched) == 1, f"{svc['metadata']['name']} selects {len(matched)} workloads"
        component = selector["app.kubernetes.io/component"]
        assert matched[0]["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ports = {p.get("name") for c in containers(matched[0], init=False) for p in c.get("ports", [])}
        numbers = {p["containerPort"] for c in containers(matched[0], init=False) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in numbers, f"{svc['metadata']['name']}: {target}"


def test_probe_ports_exist_on_their_containers(rendered):
    _, objects = rendered
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        for c in containers(obj):
            names = {p.get("name") for p in c.get("ports", [])}
            numbers = {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                spec = c.get(probe)
                if not spec:
                    continue
                handler = spec.get("grpc") or spec.get("httpGet") or spec.get("tcpSocket")
                if handler:
                    assert handler["port"] in names | numbers, f"{c['name']} {probe} {handler['port']}"


def test_long_running_containers_have_probes_resources_and_a_locked_down_context(rendered):
    _, objects = rendered
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        long_running = obj["kind"] in {"Deployment", "StatefulSet"}
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(obj):
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
        for c in containers(obj, init=False):
            if long_running:
                assert c.get("readinessProbe") and c.get("livenessProbe"), obj["metadata"]["name"]
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['metadata']['name']} lacks {key}"


def test_rust_services_probe_grpc_health_with_a_separate_liveness_service(rendered):
    name, objects = rendered
    server_tls = VALUE_SETS[name].get("tls", {}).get("server", {}).get("enabled", False)
    for obj in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        for c in containers(obj, init=False):
            if not c.get("command", [""])[0].startswith("rocket-rides-"):
                continue
            assert "grpc" in c["readinessProbe"] and "service" not in c["readinessProbe"]["grpc"]
            assert c["livenessProbe"]["grpc"]["service"] == "liveness"


def test_secret_and_config_references_resolve(rendered):
    name, objects = rendered
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    values = VALUE_SETS[name]
    secrets |= {v.get("existingSecret") for v in (values.get("externalDatabase", {}),
                                                 values.get("externalRedis", {}),
                                                 values.get("postgresql", {}).get("auth", {}),
                                                 values.get("redis", {}).get("auth", {})) if v.get("existingSecret")}
    # The CA bundle is the user's; the servers' certificate the user's or cert-manager's.
    ca = values.get("tls", {}).get("caBundle", {})
    secrets |= {ca.get("secret")} - {None, ""}
    configmaps |= {ca.get("configMap")} - {None, ""}
    secrets |= {values.get("tls", {}).get("server", {}).get("secretName")} - {None, ""}
    secrets |= {o["spec"]["secretName"] for o in objects if o["kind"] == "Certificate"}
    secrets |= set(generated_secrets(objects))
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        for c in containers(obj):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets, ref
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in configmaps, ref
            for src in c.get("envFrom", []):
                assert src.get("secretRef", {}).get("name", next(iter(secrets), None)) in secrets
        for vol in pod_spec(obj).get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps


def test_pod_disruption_budgets_exactly_where_replicas_exceed_one(rendered):
    _, objects = rendered
    pdbs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    # An autoscaled workload has no replica count of its own: its autoscaler's floor counts.
    floors = {o["spec"]["scaleTargetRef"]["name"]: o["spec"]["minReplicas"] for o in objects
              if o["kind"] == "HorizontalPodAutoscaler"}
    for obj in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        name = obj["metadata"]["name"]
        if obj["spec"].get("replicas", floors.get(name, 1)) > 1:
            assert name in pdbs, f"{name} needs a PodDisruptionBudget"
            assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels(obj).items()
        else:
            assert name not in pdbs


def groups_of(name):
    return VALUE_SETS[name].get("consumer", {}).get("groups", DEFAULT_GROUPS)


def consumer_name(group, release=RELEASE):
    return f"{release}-rocket-rides-consumer-{group}"


def consumer_statefulsets(objects):
    return [o for o in objects if o["kind"] == "StatefulSet"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "consumer"]


def env_of(obj):
    return {e["name"]: e for e in containers(obj, init=False)[0]["env"]}


def test_one_statefulset_per_consumer_group(rendered):
    name, objects = rendered
    groups = groups_of(name)
    assert sorted(s["metadata"]["name"] for s in consumer_statefulsets(objects)) == \
        sorted(consumer_name(g["name"]) for g in groups)
    for group in groups:
        sts = find(objects, "StatefulSet", consumer_name(group["name"]))
        assert sts["spec"]["replicas"] == group["replicas"]
        env = env_of(sts)
        # The logical consumer is the group, whatever the release is called.
        assert env["CONSUMER_NAME"] == {"name": "CONSUMER_NAME", "value": group["name"]}
        # Each instance by its stable pod name.
        assert env["CONSUMER_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        # Everything the single StatefulSet had.
        assert {"DATABASE_URL", "REDIS_URL", "LOG_PARTITIONS", "BATCH_SIZE", "CRASH_RATE",
                "LISTEN_ADDR"} <= env.keys()
        assert [c["name"] for c in pod_spec(sts)["initContainers"]] == ["migrate"]
        labels = pod_labels(sts)
        for key in ("rocket-rides/chaos-target", "rocket-rides/db-client", "rocket-rides/redis-client"):
            assert labels[key] == "true", key
        # A headless Service governs it; the group's Service selects its pods and no others.
        headless = find(objects, "Service", sts["spec"]["serviceName"])
        assert headless["spec"]["clusterIP"] == "None"
        svc = find(objects, "Service", consumer_name(group["name"]))
        assert svc["spec"].get("clusterIP") != "None"
        metrics = name != "single"  # metrics are off there
        assert svc["spec"]["ports"] == [{"name": "grpc", "port": 50052, "targetPort": "grpc", "appProtocol": "grpc"}] + \
            ([{"name": "metrics", "port": 9090, "targetPort": "metrics"}] if metrics else [])
        assert (svc["metadata"]["labels"].get("rocket-rides/metrics") == "true") == metrics
        assert "metrics" not in {p["name"] for p in headless["spec"]["ports"]}
        selected = [o for o in consumer_statefulsets(objects)
                    if svc["spec"]["selector"].items() <= pod_labels(o).items()]
        assert selected == [sts]


def test_consumer_names_do_not_change_with_the_release_name():
    objects = render(VALUE_SETS["hardened"], release="renamed")
    for group in groups_of("hardened"):
        sts = find(objects, "StatefulSet", consumer_name(group["name"], "renamed"))
        assert env_of(sts)["CONSUMER_NAME"]["value"] == group["name"]


def test_consumer_groups_get_a_pod_disruption_budget_exactly_where_replicas_exceed_one():
    objects = render(VALUE_SETS["hardened"])
    pdbs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert consumer_name("totals") in pdbs and consumer_name("audit") not in pdbs
    totals, audit = (find(objects, "StatefulSet", consumer_name(g)) for g in ("totals", "audit"))
    selector = pdbs[consumer_name("totals")]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels(totals).items()
    assert not selector.items() <= pod_labels(audit).items()
    assert pdbs[consumer_name("totals")]["spec"]["maxUnavailable"] == 1
    defaults = {o["metadata"]["name"] for o in render({}) if o["kind"] == "PodDisruptionBudget"}
    assert {consumer_name("totals-a"), consumer_name("totals-b")} <= defaults


def test_the_simulator_compares_every_logical_consumer():
    objects = render(VALUE_SETS["hardened"] | {"simulator": {"enabled": True}})
    env = env_of(find(objects, "Deployment", f"{RELEASE}-rocket-rides-simulator"))
    assert env["CONSUMER_URLS"]["value"].split(",") == \
        [f"http://{consumer_name(g)}:50052" for g in ("totals", "audit")]


@pytest.mark.parametrize("groups,message", [
    ([{"name": "totals", "replicas": 1}, {"name": "totals", "replicas": 2}], '"totals" appears twice'),
    ([{"name": "a-group-name-far-too-long-for-a-statefulset", "replicas": 1}], "longer than the 52 characters"),
    ([{"name": "totals", "replicas": 1}, {"name": "totals-headless", "replicas": 1}],
     f'would both name a Service "{RELEASE}-rocket-rides-consumer-totals-headless"'),
    ([{"name": "totals-headless", "replicas": 1}, {"name": "totals", "replicas": 1}],
     f'would both name a Service "{RELEASE}-rocket-rides-consumer-totals-headless"'),
])
def test_consumer_groups_kubernetes_cannot_run_are_a_clear_error(groups, message):
    chart = helm_python.Chart.load(str(CHART))
    try:
        with pytest.raises(helm_python.HelmError, match=re.escape(message)):
            chart.render(with_auth({"consumer": {"groups": groups}}), name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()


def helm_test_script(objects):
    pod = find(objects, "Pod", f"{RELEASE}-rocket-rides-test-create-ride")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = containers(pod)[0]
    assert c["command"] == ["sh", "-ec"]
    return c["args"][0]


def test_the_helm_test_asks_every_logical_consumer_through_its_service(rendered):
    name, objects = rendered
    script = helm_test_script(objects)
    consumers = re.search(r'^consumers="([^"]*)"$', script, re.M).group(1).split()
    assert consumers == [f"{consumer_name(g['name'])}:50052" for g in groups_of(name)]
    for address in consumers:
        host, port = address.split(":")
        svc = find(objects, "Service", host)
        assert svc["spec"].get("clusterIP") != "None"
        assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


FAKE_GRPCURL = """#!{python}
# grpcurl as the helm test sees it: CreateRide fails FLAKY times first (chaos took the api pod),
# history knows the ride after two asks, and each consumer's partition 2 reaches the ride's seq
# (57) after it was created, unless the consumer is DEAF (never applies it) or DOWN.
import json, os, pathlib, sys
state = pathlib.Path(os.environ["STATE"])
args = sys.argv[1:]
address, method = args[-2:]
body = args[args.index("-d") + 1] if "-d" in args else ""
with open(state / "calls", "a") as calls:
    calls.write(f"{{address}} {{method}} {{body}}\\n")
# How it was asked to connect: the options but -d and its body.
flags = args[:-2]
if "-d" in flags:
    del flags[flags.index("-d"):flags.index("-d") + 2]
with open(state / "flags", "a") as f:
    f.write(" ".join(flags) + "\\n")
def bump(name):
    f = state / name
    n = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(n))
    return n
host = address.split(":")[0]
if host in os.environ.get("DOWN", "").split():
    sys.exit("connection refused")
created = (state / "created").exists()
if method.endswith("/Check"):
    print(json.dumps({{"status": "SERVING"}}, indent=2))
    sys.exit(0)
if method.endswith("/CreateRide"):
    if bump("create-calls") <= int(os.environ.get("FLAKY", "0")):
        sys.exit("Failed to dial target host: connection refused")
    (state / "created").write_text(json.loads(body)["rider_id"])
    print(json.dumps({{"rideId": "4242", "distance": 1234.5}}, indent=2))
    sys.exit(0)
if method.endswith("/GetRide"):
    assert json.loads(body)["ride_id"] == "4242", body
    if not created or bump("get-ride-calls") < 2:
        sys.exit("ERROR:\\n  Code: NotFound\\n  Message: ride 4242 is not in the history yet")
    print(json.dumps({{"rideId": "4242", "riderId": (state / "created").read_text(), "distance": 1234.5,
                      "partition": 2, "seq": "57", "streamId": "1-0"}}, indent=2))
    sys.exit(0)
counted = created and host not in os.environ.get("DEAF", "").split()
# As GetTotal answers with -emit-defaults: the consumer's fields first, then each partition's;
# the simulator keeps the other partitions and the ride count moving.
calls = bump(f"total-{{host}}")
parts = [{{"partition": p, "lastSeq": str(100 + calls if p != 2 else (57 if counted else 56)),
          "rideCount": str(10 + p), "owner": "x"}} for p in range(4)]
print(json.dumps({{"consumer": host, "totalDistance": 10, "rideCount": str(7 + calls),
                  "partitions": parts}}, indent=2))
"""


def run_helm_test(tmp_path, values, **env):
    """The helm test's script against the fake grpcurl; it creates a ride unless `values` say
    tests.createRide=false."""
    script = helm_test_script(render(merged({"tests": {"createRide": True}}, values)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "grpcurl"
    fake.write_text(FAKE_GRPCURL.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    # The script sleeps between attempts; a fake sleep keeps this fast.
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(0o755)
    out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(state), **env})
    calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
    flags = (state / "flags").read_text().splitlines() if (state / "flags").exists() else []
    assert len(flags) == len(calls)
    run_helm_test.flags = flags
    return out, calls


def test_the_helm_test_waits_for_its_own_ride_in_every_logical_consumer(tmp_path):
    out, calls = run_helm_test(tmp_path, VALUE_SETS["hardened"], FLAKY="2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ride 4242 is seq 57 of partition 2" in out.stdout
    for group in ("totals", "audit"):
        assert f"{consumer_name(group)}:50052 counted it" in out.stdout
    creates = [c for c in calls if c.startswith(f"{FULL}-api:50051 rocketrides.v1.RideService/CreateRide")]
    # Retried after the api failed twice, always with the same idempotency key and its own rider.
    assert len(creates) == 3
    bodies = [json.loads(c.split(" ", 2)[2]) for c in creates]
    assert len({b["idempotency_key"] for b in bodies}) == 1 and bodies[0]["idempotency_key"].startswith("helm-test-")
    assert bodies[0]["rider_id"] == bodies[0]["idempotency_key"]
    assert any(c.startswith(f"{FULL}-history:50055 rocketrides.v1.HistoryService/GetRide") for c in calls)
    # Plaintext without server TLS (test_the_helm_test_speaks_tls_... for the other case).
    assert all("-plaintext" in f.split() and "-cacert" not in f for f in run_helm_test.flags)


def test_the_helm_test_is_not_fooled_by_other_rides(tmp_path):
    """The simulator's rides move every consumer's ride count and the other partitions; a consumer
    that never applies the test's ride still fails the test."""
    values = merged(VALUE_SETS["hardened"], {"tests": {"timeoutSeconds": 3}})
    out, calls = run_helm_test(tmp_path, values, DEAF=consumer_name("audit"))
    assert out.returncode == 1
    assert f"{consumer_name('totals')}:50052 counted it" in out.stdout
    assert f"{consumer_name('audit')}:50052 did not count the ride in time (partition 2 at 56, ride at 57)" in out.stdout


@pytest.mark.parametrize("env,message", [
    ({"DOWN": consumer_name("audit")}, f"{consumer_name('audit')}:50052 did not count the ride in time"),
    ({"DOWN": f"{FULL}-history"}, "history did not record ride 4242 in time"),
    ({"FLAKY": "1000"}, "CreateRide kept failing"),
])
def test_the_helm_test_fails_in_time_when_a_service_does_not_answer(tmp_path, env, message):
    values = merged(VALUE_SETS["hardened"], {"tests": {"timeoutSeconds": 2}})
    out, _ = run_helm_test(tmp_path, values, **env)
    assert out.returncode == 1
    assert message in out.stdout


def test_by_default_the_helm_test_writes_nothing_and_checks_every_service(tmp_path):
    read_only = merged(VALUE_SETS["hardened"], {"tests": {"createRide": False}})
    out, calls = run_helm_test(tmp_path, read_only)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any("CreateRide" in c for c in calls)
    services = [f"{FULL}-api:50051", f"{FULL}-history:50055", f"{consumer_name('totals')}:50052",
                f"{consumer_name('audit')}:50052"]
    assert [c.split()[0] for c in calls if c.split()[1] == "grpc.health.v1.Health/Check"] == services
    for c in services[2:]:
        assert f"{c} rocketrides.v1.ConsumerService/GetTotal " in [x[:len(c) + 44] for x in calls] or \
            any(x.startswith(f"{c} rocketrides.v1.ConsumerService/GetTotal") for x in calls)
    assert "no ride was written" in out.stdout
    # The defaults and the demo: read-only in production, a ride in the demo.
    assert "CreateRide" not in helm_test_script(render({}))
    assert "CreateRide" in helm_test_script(render(DEMO))


def test_the_read_only_helm_test_fails_in_time_when_a_service_is_down(tmp_path):
    values = merged(VALUE_SETS["hardened"], {"tests": {"createRide": False, "timeoutSeconds": 2}})
    out, _ = run_helm_test(tmp_path, values, DOWN=f"{FULL}-history")
    assert out.returncode == 1
    assert f"{FULL}-history:50055 is not SERVING" in out.stdout


def test_the_helm_test_pod_follows_the_scheduling_values():
    values = {"imagePullSecrets": [{"name": "regcred"}], "global": {"imagePullSecrets": ["mirror"]},
              "nodeSelector": {"pool": "apps"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}],
              "priorityClassName": "rides", "podLabels": {"team": "rides"}}
    pod = find(render(values), "Pod", f"{FULL}-test-create-ride")
    spec = pod_spec(pod)
    assert spec["imagePullSecrets"] == [{"name": "mirror"}, {"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "apps"} and spec["tolerations"] == values["tolerations"]
    assert spec["priorityClassName"] == "rides" and pod["metadata"]["labels"]["team"] == "rides"


def test_the_helm_test_without_history_falls_back_to_ride_counts(tmp_path):
    values = merged(VALUE_SETS["hardened"], {"history": {"enabled": False}})
    out, calls = run_helm_test(tmp_path, values)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "history is disabled" in out.stdout
    assert not any("HistoryService" in c for c in calls)


@pytest.mark.parametrize("mode,events,rules", [
    ("evict", True, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                     {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
                     {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}]),
    ("delete", False, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]),
])
def test_chaos_role_grants_only_what_its_mode_needs(mode, events, rules):
    objects = render({"chaos": {"enabled": True, "mode": mode, "events": events}})
    role = find(objects, "Role", f"{FULL}-chaos")
    assert role["rules"] == rules
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    binding = find(objects, "RoleBinding", f"{FULL}-chaos")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    cron = find(objects, "CronJob", f"{FULL}-chaos")
    spec = pod_spec(cron)
    assert spec["serviceAccountName"] == binding["subjects"][0]["name"]
    assert spec["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MODE"] == mode and env["EVENTS"] == str(events).lower()
    assert env["DRY_RUN"] == "false" and int(env["GRACE_PERIOD_SECONDS"]) >= 1
    assert cron["spec"]["startingDeadlineSeconds"] == 120 and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 120
    # Its selector reaches the app's pods, and only those of this release.
    selector = dict(kv.split("=") for kv in env["TARGET_SELECTOR"].split(","))
    targets = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
               and selector.items() <= pod_labels(o).items()]
    assert {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in targets} == \
        {"api", "consumer", "history", "streamer"}
    assert all(s in targets for s in consumer_statefulsets(objects))


def test_chaos_is_off_by_default_and_a_zero_grace_period_is_refused():
    assert not [o for o in render({}) if o["kind"] == "CronJob"]
    message = render_error({"chaos": {"enabled": True, "gracePeriodSeconds": 0}})
    assert "gracePeriodSeconds" in message


def test_defaults_are_production_and_values_demo_turns_the_demo_on():
    objects = render({})
    env = env_of(find(objects, "Deployment", f"{FULL}-streamer"))
    assert env["DOUBLE_SEND_RATE"]["value"] == "0"
    for sts in consumer_statefulsets(objects):
        assert env_of(sts)["CRASH_RATE"]["value"] == "0"
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects}
    assert not {"simulator", "chaos"} & components
    assert any(o["kind"] == "NetworkPolicy" for o in objects)
    demo = render(DEMO, auth=False)
    env = env_of(find(demo, "Deployment", f"{FULL}-streamer"))
    assert env["DOUBLE_SEND_RATE"]["value"] == "0.1"
    for sts in consumer_statefulsets(demo):
        assert env_of(sts)["CRASH_RATE"]["value"] == "0.1"
    assert find(demo, "Deployment", f"{FULL}-simulator") and find(demo, "CronJob", f"{FULL}-chaos")
    assert env_of(find(demo, "Deployment", f"{FULL}-simulator"))["RIDES_PER_SECOND"]["value"] == "5"


def test_defaults_wire_postgres_redis_jaeger_and_the_database_role():
    objects = render({})
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    for expected in [("StatefulSet", f"{FULL}-postgresql"), ("StatefulSet", f"{FULL}-redis"),
                     ("Deployment", f"{FULL}-jaeger"), ("Deployment", f"{FULL}-history"),
                     ("Pod", f"{FULL}-test-create-ride")]:
        assert expected in kinds
    redis = find(objects, "StatefulSet", f"{FULL}-redis")
    command = " ".join(containers(redis)[0]["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    api_env = env_of(find(objects, "Deployment", f"{FULL}-api"))
    assert api_env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == f"http://{FULL}-jaeger:4317"
    assert api_env["OTEL_SERVICE_NAME"]["value"] == "rocket-rides-api"
    # The apps connect as the application role, never the superuser, with the password from the
    # Secret in PGPASSWORD (sqlx reads it when the URL has none: any character is safe).
    url = api_env["DATABASE_URL"]["value"]
    assert url == f"postgres://rocketrides@{FULL}-postgresql:5432/rocketrides"
    assert api_env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-postgresql", "key": "password"}
    names = [e["name"] for e in containers(find(objects, "Deployment", f"{FULL}-api"), init=False)[0]["env"]]
    assert names.index("PGPASSWORD") < names.index("DATABASE_URL")
    pg = find(objects, "StatefulSet", f"{FULL}-postgresql")
    pg_env = env_of(pg)
    assert pg_env["POSTGRES_USER"]["value"] == "postgres" and pg_env["APP_USER"]["value"] == "rocketrides"
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-password"
    assert pg_env["APP_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    init = find(objects, "ConfigMap", f"{FULL}-postgresql-init")["data"]["10-app-role.sh"]
    assert "NOSUPERUSER" in init and "NOCREATEROLE" in init and 'ALTER DATABASE :"db" OWNER TO :"app_user"' in init
    mounts = {m["mountPath"]: m["name"] for m in containers(pg)[0]["volumeMounts"]}
    assert mounts["/docker-entrypoint-initdb.d"] == "init"
    secret = find(objects, "Secret", f"{FULL}-postgresql")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == \
        {"password": "app-secret", "postgres-password": "super-secret"}
    # No Helm hooks by default (GitOps-safe): migrations run in init containers.
    assert not [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})
                and o["kind"] != "Pod"]
    external = render(VALUE_SETS["external"])
    assert not any(o["kind"] == "Secret" for o in external)
    hook = find(external, "Job", f"{FULL}-migrations")["metadata"]["annotations"]["helm.sh/hook"]
    assert hook == "pre-install,pre-upgrade"
    assert env_of(find(external, "Deployment", f"{FULL}-api"))["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == \
        {"name": "rides-db", "key": "url"}


def test_the_app_role_created_by_the_init_script_can_migrate_but_is_no_superuser():
    """Runs the Postgres init script against a real, throwaway Postgres (the Debian package
    `make deps` installs), then does as the app role what migrations and the streamer do."""
    bindir = next(iter(sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"))), None)
    assert bindir and (bindir / "initdb").exists(), "Postgres is missing: run `make deps`"
    script = find(render({}), "ConfigMap", f"{FULL}-postgresql-init")["data"]["10-app-role.sh"]
    # Not under pytest's tmp_path: as root, that is closed to the user Postgres must run as.
    tmp = tempfile.TemporaryDirectory(prefix="rr-chart-pg-")
    tmp_path = pathlib.Path(tmp.name)
    data, sock = tmp_path / "data", tmp_path / "sock"
    sock.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PGHOST": str(sock), "PGPORT": "55439"}
    # Postgres refuses to run as root: as nobody then.
    as_user = {} if os.geteuid() else {"user": 65534, "group": 65534}
    if as_user:
        os.chown(tmp_path, 65534, 65534)
        os.chown(sock, 65534, 65534)
    init = subprocess.run(["initdb", "-D", str(data), "-U", "postgres", "--auth", "trust"], env=env,
                          capture_output=True, text=True, timeout=60, **as_user)
    assert init.returncode == 0, init.stderr
    server = subprocess.Popen(["postgres", "-D", str(data), "-k", str(sock), "-h", "", "-p", "55439"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
    try:
        for _ in range(100):
            if subprocess.run(["pg_isready", "-q"], env=env).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(["psql", "-q", "-U", "postgres", "-c", "CREATE DATABASE rocketrides"], env=env, check=True,
                       capture_output=True, timeout=30)
        subprocess.run(["sh", "-c", script], check=True, capture_output=True, timeout=30,
                       env=env | {"POSTGRES_USER": "postgres", "POSTGRES_DB": "rocketrides",
                                  "APP_USER": "rocketrides", "APP_PASSWORD": "app-secret"})

        def psql(sql, user="rocketrides"):
            return subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", user,
                                   "-d", "rocketrides", "-c", sql], env=env, capture_output=True, text=True, timeout=30)
        attrs = psql("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert attrs.stdout.strip() == "f|f|f", attrs
        # What the migrations and the streamer do: tables, partitions created and dropped, a sequence.
        ddl = psql("CREATE TABLE log_records (partition INT NOT NULL, seq BIGINT, id BIGSERIAL) PARTITION BY LIST (partition);"
                   "CREATE TABLE log_records_0 PARTITION OF log_records FOR VALUES IN (0) PARTITION BY RANGE (seq);"
                   "CREATE TABLE IF NOT EXISTS log_records_0_1 PARTITION OF log_records_0 FOR VALUES FROM (1) TO (100);"
                   "INSERT INTO log_records (partition, seq) VALUES (0, 5);"
                   "DROP TABLE log_records_0_1;"
                   "SELECT pg_advisory_lock(1), pg_advisory_unlock(1);")
        assert ddl.returncode == 0, ddl.stderr
        denied = psql("CREATE ROLE intruder")
        assert denied.returncode != 0 and "permission denied" in denied.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()


CLUSTER = f"{RELEASE}-rocket-rides-redis-cluster"


def cluster_nodes(n):
    return [f"{CLUSTER}-{i}.{CLUSTER}-headless:6379" for i in range(n)]


REDIS_PASSWORD_ENV = {"secretKeyRef": {"name": f"{FULL}-redis", "key": "redis-password"}}


def redis_env(objects):
    """REDIS_* of the streamer, every consumer group and history, by workload."""
    apps = [find(objects, "Deployment", f"{RELEASE}-rocket-rides-streamer")] + consumer_statefulsets(objects) + \
        [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{FULL}-history"]
    assert len(apps) > 1
    return {o["metadata"]["name"]: {e["name"]: e.get("value", e.get("valueFrom"))
                                    for e in containers(o, init=False)[0]["env"]
                                    if e["name"].startswith("REDIS_")} for o in apps}


def test_redis_cluster_replaces_the_single_redis():
    objects = render(VALUE_SETS["cluster"])
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        assert (kind, f"{RELEASE}-rocket-rides-redis") not in names
    sts = find(objects, "StatefulSet", CLUSTER)
    assert sts["spec"]["replicas"] == 6
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    headless = find(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    redis = containers(sts, init=False)[0]
    args = " ".join(redis["args"])
    for flag in ("redis-server --cluster-enabled yes", "--cluster-config-file /data/nodes.conf",
                 "--cluster-node-timeout 5000", "--appendonly yes", "--appendfsync always",
                 "--maxmemory 200mb", "--maxmemory-policy noeviction",
                 f"--cluster-announce-hostname $(POD_NAME).{CLUSTER}-headless.{NAMESPACE}.svc",
                 "--cluster-preferred-endpoint-type hostname",
                 "--requirepass $(REDIS_PASSWORD)", "--masterauth $(REDIS_PASSWORD)"):
        assert flag in args, flag
    env = env_of(sts)
    assert env["REDIS_PASSWORD"]["valueFrom"] == REDIS_PASSWORD_ENV
    assert env["REDISCLI_AUTH"]["value"] == "$(REDIS_PASSWORD)"
    # The start script hands the arguments on to Redis.
    assert redis["command"][:2] == ["sh", "-ec"] and redis["command"][2].rstrip().endswith('exec "$@"')
    assert {p["containerPort"] for p in redis["ports"]} == {6379, 16379}
    assert pod_spec(sts)["securityContext"]["runAsUser"] == 999
    # Defaults leave the single Redis as it was.
    defaults = render({})
    assert find(defaults, "StatefulSet", f"{RELEASE}-rocket-rides-redis")["spec"]["replicas"] == 1
    assert not [o for o in defaults if o["metadata"]["name"].startswith(CLUSTER)]
    for env in redis_env(defaults).values():
        assert env == {"REDIS_PASSWORD": REDIS_PASSWORD_ENV,
                       "REDIS_URL": f"redis://:$(REDIS_PASSWORD)@{RELEASE}-rocket-rides-redis:6379"}


def bootstrap_job(objects):
    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{CLUSTER}-bootstrap")]
    return job


def test_redis_cluster_bootstrap_job_creates_the_cluster_over_every_node_once():
    objects = render(VALUE_SETS["cluster"])
    job = bootstrap_job(objects)
    # A plain Job (install order: tests below), named by its pod template, which cannot change.
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    assert re.fullmatch(rf"{CLUSTER}-bootstrap-[0-9a-f]{{8}}", job["metadata"]["name"])
    assert bootstrap_job(render(VALUE_SETS["cluster"]))["metadata"]["name"] == job["metadata"]["name"]
    script = " ".join(containers(job)[0]["command"] + containers(job)[0]["args"])
    create = "redis-cli --cluster create " + " ".join(cluster_nodes(6)) + " --cluster-replicas 1 --cluster-yes"
    assert create in script
    # Idempotent: a cluster already serving every slot is left alone.
    assert "cluster_state:ok" in script and "cluster_slots_assigned:16384" in script
    assert script.index("cluster_slots_assigned:16384") < script.index("--cluster create")
    assert job["spec"]["activeDeadlineSeconds"] == 600
    bigger = render({"redis": {"cluster": {"enabled": True, "masters": 4, "replicasPerMaster": 2,
                                           "nodeTimeoutMs": 2000}}})
    assert find(bigger, "StatefulSet", CLUSTER)["spec"]["replicas"] == 12
    assert "--cluster-node-timeout 2000" in " ".join(containers(find(bigger, "StatefulSet", CLUSTER))[0]["args"])
    script = containers(bootstrap_job(bigger))[0]["args"][0]
    assert " ".join(cluster_nodes(12)) + " --cluster-replicas 2 --cluster-yes" in script


def test_streamer_and_consumers_reach_every_cluster_node():
    for name, env in redis_env(render(VALUE_SETS["cluster"])).items():
        assert env["REDIS_URL"].split(",") == [f"redis://:$(REDIS_PASSWORD)@{n}" for n in cluster_nodes(6)], name
        assert env["REDIS_PASSWORD"] == REDIS_PASSWORD_ENV
        assert env["REDIS_CLUSTER"] == "true", name
        assert "REDIS_WAIT_REPLICAS" not in env, name


@pytest.mark.parametrize("values,streamer", [
    ({"redis": {"cluster": {"enabled": True}, "waitReplicas": 1}}, "1"),
    ({"redis": {"cluster": {"enabled": True}, "waitReplicas": 0}}, "0"),
    ({"redis": {"cluster": {"enabled": True, "replicasPerMaster": 0}}}, "0"),
    ({"redis": {"enabled": False, "waitReplicas": 2},
      "externalRedis": {"url": "redis://a:6379,redis://b:6379", "cluster": True}}, "2"),
    ({"redis": {"waitReplicas": 0}}, "0"),
])
def test_wait_replicas_reach_the_streamer_only(values, streamer):
    env = redis_env(render(values))
    assert env.pop(f"{RELEASE}-rocket-rides-streamer")["REDIS_WAIT_REPLICAS"] == streamer
    assert env and all("REDIS_WAIT_REPLICAS" not in consumer for consumer in env.values())


@pytest.mark.parametrize("values,message", [
    ({"redis": {"cluster": {"enabled": True}, "waitReplicas": 2}}, "exceeds redis.cluster.replicasPerMaster"),
    ({"redis": {"waitReplicas": 1}}, "single bundled Redis has none"),
])
def test_wait_replicas_that_no_replica_could_meet_are_a_clear_error(values, message):
    chart = helm_python.Chart.load(str(CHART))
    try:
        with pytest.raises(helm_python.HelmError, match=re.escape(message)):
            chart.render(with_auth(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()


def test_external_redis_cluster_sets_the_cluster_flag():
    external = copy.deepcopy(VALUE_SETS["external"])
    for name, env in redis_env(render(external)).items():
        assert "REDIS_CLUSTER" not in env, name
    external["externalRedis"]["cluster"] = True
    for name, env in redis_env(render(external)).items():
        assert env["REDIS_URL"]["secretKeyRef"]["name"] == "rides-redis", name
        assert env["REDIS_CLUSTER"] == "true", name


# ---- NetworkPolicies, evaluated: a small model of the NetworkPolicy semantics (pod and namespace
# selectors, named and numbered ports, ipBlocks matched against the model pods' addresses)
# decides which flows the rendered policies admit between the release's pods and a few outsiders.

def selector_matches(selector, labels):
    if selector is None:
        return False
    if not (selector.get("matchLabels", {}).items() <= labels.items()):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "NotIn" and value in e.get("values", []):
            return False
        if e["operator"] == "Exists" and not present:
            return False
        if e["operator"] == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer, pod):
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(pod["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and \
            not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    assert "ipBlock" not in peer, "the model does not know ipBlock"
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod["namespace"]}):
            return False
    elif pod["namespace"] != NAMESPACE:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], pod["labels"])


def port_matches(rule_ports, port, protocol, dst):
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if p.get("port") is None or p["port"] == port or dst["ports"].get(p["port"]) == port:
            return True
    return False


def allowed(policies, src, dst, port, protocol="TCP"):
    def side(direction, pod, peers_key, other):
        if pod["namespace"] != NAMESPACE:
            return True  # outsiders are not ours to isolate
        selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], pod["labels"])
                     and direction in p["spec"]["policyTypes"]]
        if not selecting:
            return True
        rules = [r for p in selecting for r in p["spec"].get(direction.lower(), [])]
        return any((peers_key not in r or any(peer_matches(peer, other) for peer in r[peers_key]))
                   and port_matches(r.get("ports"), port, protocol, dst) for r in rules)
    return side("Egress", src, "to", dst) and side("Ingress", dst, "from", src)


def pods_of(objects):
    """One model pod per workload, by component (consumer groups and jobs included)."""
    pods = {}
    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        ports = {p["name"]: p["containerPort"] for c in containers(o) for p in c.get("ports", []) if "name" in p}
        pods[o["metadata"]["labels"]["app.kubernetes.io/component"]] = \
            {"labels": pod_labels(o), "namespace": NAMESPACE, "ports": ports}
    pods["prometheus"] = {"labels": {"app": "prometheus"}, "namespace": "monitoring", "ports": {}}
    pods["stranger"] = {"labels": {"app": "stranger"}, "namespace": "elsewhere", "ports": {}}
    pods["neighbour"] = {"labels": {"app": "neighbour"}, "namespace": NAMESPACE, "ports": {}}
    pods["kube-dns"] = {"labels": {"k8s-app": "kube-dns"}, "namespace": "kube-system", "ports": {"dns": 53}}
    pods["kube-api"] = {"labels": {}, "namespace": "default", "ports": {}, "ip": "10.0.0.1"}
    for i, pod in enumerate(pods.values()):
        pod.setdefault("ip", f"10.244.0.{i + 10}")
    return pods


@pytest.mark.parametrize("name", ["demo", "hardened", "cluster", "external", "generated"])
def test_network_policies_admit_exactly_the_flows_the_services_need(name):
    objects = render(VALUE_SETS[name], auth=name not in {"demo"} | NO_AUTH)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_of(objects)
    ours = [k for k, p in pods.items() if p["namespace"] == NAMESPACE and k != "neighbour"]
    can = lambda src, dst, port, protocol="TCP": allowed(policies, pods[src], pods[dst], port, protocol)
    # Default deny: every pod of ours is selected for both directions.
    for k in ours:
        for direction in ("Ingress", "Egress"):
            assert any(selector_matches(p["spec"]["podSelector"], pods[k]["labels"])
                       and direction in p["spec"]["policyTypes"] for p in policies), (k, direction)
    # DNS from everyone.
    for k in ours:
        assert can(k, "kube-dns", 53, "UDP") and can(k, "kube-dns", 53, "TCP"), k
    bundled_pg, bundled_redis = "postgresql" in pods, ("redis" in pods or "redis-cluster" in pods)
    redis = "redis-cluster" if "redis-cluster" in pods else "redis"
    clients = {"api": {"db"}, "streamer": {"db", "redis"}, "consumer": {"db", "redis"},
               "history": {"db", "redis"}, "migrations": {"db"}, "redis-cluster-bootstrap": {"redis"}}
    for k in ours:
        needs = clients.get(k, set())
        if bundled_pg:
            assert can(k, "postgresql", 5432) == ("db" in needs), (k, "postgresql")
        if bundled_redis and k != redis:
            assert can(k, redis, 6379) == ("redis" in needs), (k, redis)
        if "jaeger" in pods and k != "jaeger":
            assert can(k, "jaeger", 4317), (k, "jaeger")
            assert not can(k, "jaeger", 16686) or k not in clients, (k, "jaeger ui")
    # The gRPC APIs: anyone may call them; only the simulator and the helm test call out to them
    # (and the pods that call the Kubernetes API, whose egress is open by default: below).
    api_callers = {"chaos", "generated-secrets"}
    grpc = {"api": 50051, "consumer": 50052, "history": 50055}
    for server, port in grpc.items():
        if server in pods:
            assert can("stranger", server, port) and can("neighbour", server, port)
            for k in ours:
                assert can(k, server, port) == (k in {"simulator", "test"} | api_callers), (k, server)
    assert not can("stranger", "streamer", 50053)
    # Metrics: Prometheus from another namespace, on the metrics port only.
    for k in ("api", "streamer", "consumer", "history"):
        if k in pods:
            assert can("prometheus", k, 9090) and not can("prometheus", k, 5432), k
    # The data stores admit nobody else.
    for outsider in ("stranger", "neighbour", "prometheus"):
        if bundled_pg:
            assert not can(outsider, "postgresql", 5432)
        if bundled_redis:
            assert not can(outsider, redis, 6379)
    # Only chaos and the secret generator reach the Kubernetes API, on whatever port the CNI
    # sees it (6443, MicroK8s's 16443, minikube's 8443); nobody reaches the outside world
    # otherwise. They do not get into the data stores either (those admit their clients only).
    assert ("generated-secrets" in pods) == (name == "generated")
    for k in ours:
        for port in (443, 6443, 16443, 8443):
            assert can(k, "kube-api", port) == (k in api_callers), (k, port)
        if k in api_callers and bundled_pg:
            assert not can(k, "postgresql", 5432)
    if name == "cluster":
        assert can("redis-cluster", "redis-cluster", 16379) and can("redis-cluster", "redis-cluster", 6379)
        assert not can("streamer", "redis-cluster", 16379)
    if name == "external":
        # External Postgres/Redis/collector: egress on their ports, to anywhere by default.
        for k in ("api", "streamer", "consumer", "history", "migrations"):
            assert can(k, "stranger", 5432), k
        assert can("streamer", "stranger", 6379) and not can("api", "stranger", 6379)
        assert can("api", "stranger", 4317)


def test_the_kubernetes_api_egress_can_be_narrowed():
    api_server = [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    objects = render({"networkPolicy": {"kubeApi": {"ports": [6443], "to": api_server}}}, auth=False)
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == f"{FULL}-generated-secrets"]
    assert policy["spec"]["egress"] == [{"ports": [{"port": 6443, "protocol": "TCP"}], "to": api_server}]
    pods = pods_of(objects)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert allowed(policies, pods["generated-secrets"], pods["kube-api"], 6443)
    assert not allowed(policies, pods["generated-secrets"], pods["kube-api"], 16443)
    assert not allowed(policies, pods["generated-secrets"], pods["api"], 50051)
    # The default: one rule that admits everything.
    default = [o for o in render({}, auth=False) if o["kind"] == "NetworkPolicy"
               and o["metadata"]["name"] == f"{FULL}-generated-secrets"]
    assert default[0]["spec"]["egress"] == [{}]


def test_network_policies_can_be_turned_off_and_peers_narrowed():
    assert not [o for o in render({"networkPolicy": {"enabled": False}}) if o["kind"] == "NetworkPolicy"]
    only_monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    objects = render({"networkPolicy": {"metricsFrom": only_monitoring, "grpcFrom": [{"podSelector": {}}]}})
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_of(objects)
    pods["other-prometheus"] = dict(pods["prometheus"], namespace="elsewhere")
    assert allowed(policies, pods["prometheus"], pods["api"], 9090)
    assert not allowed(policies, pods["other-prometheus"], pods["api"], 9090)
    assert allowed(policies, pods["neighbour"], pods["api"], 50051)
    assert not allowed(policies, pods["stranger"], pods["api"], 50051)


@pytest.mark.parametrize("target", [False, True])
def test_chaos_reaches_redis_cluster_nodes_only_when_asked(target):
    objects = render({"redis": {"cluster": {"enabled": True}}, "chaos": {"enabled": True, "targetRedisCluster": target}})
    env = {e["name"]: e.get("value") for e in pod_spec(find(objects, "CronJob", f"{RELEASE}-rocket-rides-chaos"))["containers"][0]["env"]}
    selector = dict(kv.split("=") for kv in env["TARGET_SELECTOR"].split(","))
    targets = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects
               if o["kind"] in {"Deployment", "StatefulSet"} and selector.items() <= pod_labels(o).items()}
    assert targets == {"api", "consumer", "history", "streamer"} | ({"redis-cluster"} if target else set())


@pytest.mark.skipif(not shutil.which("getent"), reason="needs getent")
def test_redis_cluster_start_script_points_recorded_hostnames_at_current_ips(tmp_path):
    sts = find(render(VALUE_SETS["cluster"]), "StatefulSet", CLUSTER)
    script = containers(sts, init=False)[0]["command"][2].replace("/data", str(tmp_path))
    conf = tmp_path / "nodes.conf"
    conf.write_text(
        "a1 10.0.0.1:6379@16379,localhost,tls-port=0,shard-id=s1 master - 0 1 1 connected 0-8191\n"
        "b2 10.0.0.2:6379@16379,,shard-id=s2 myself,slave a1 0 1 1 connected\n"
        "c3 fd00::3:6379@16379,no-such-node.invalid master - 0 1 2 connected 8192-16383\n"
        "vars currentEpoch 2 lastVoteEpoch 0\n")
    out = subprocess.run(["sh", "-ec", script, "redis-cluster-node", "echo", "redis-server", "--port", "6379"],
                         env={"PATH": "/usr/bin:/bin", "POD_IP": "10.9.9.9"},
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == "redis-server --port 6379\n"
    localhost = subprocess.run(["getent", "hosts", "localhost"], capture_output=True, text=True).stdout.split()[0]
    assert conf.read_text().splitlines() == [
        f"a1 {localhost}:6379@16379,localhost,tls-port=0,shard-id=s1 master - 0 1 1 connected 0-8191",
        "b2 10.9.9.9:6379@16379,,shard-id=s2 myself,slave a1 0 1 1 connected",
        "c3 fd00::3:6379@16379,no-such-node.invalid master - 0 1 2 connected 8192-16383",
        "vars currentEpoch 2 lastVoteEpoch 0",
    ]


def test_notes_give_the_commands_from_install_to_a_trace():
    chart = helm_python.Chart.load(str(CHART))
    notes = chart.render(with_auth({"chaos": {"enabled": True}}), name=RELEASE, namespace=NAMESPACE,
                         is_install=True)["rocket-rides/templates/NOTES.txt"]
    chart.close()
    for needle in ("port-forward svc/demo-rocket-rides-api 50051:50051",
                   "rocketrides.v1.RideService/CreateRide",
                   "rocketrides.v1.ConsumerService/GetTotal",
                   "port-forward svc/demo-rocket-rides-consumer-totals-a 50052:50052",
                   "totals-a (2 instances", "totals-b (2 instances",
                   "port-forward svc/demo-rocket-rides-jaeger 16686:16686",
                   "rocketrides.v1.HistoryService/GetRide", "is evicted (PodDisruptionBudgets respected) with a 30 s grace period",
                   "get events | grep Chaos"):
        assert needle in notes


@pytest.mark.parametrize("bad", [
    {"unknownKey": True},
    {"api": {"replicas": "two"}},
    {"api": {"replicas": 0}},
    {"failureSimulation": {"crashRate": 1.5}},
    {"logFormat": "xml"},
    {"chaos": {"dryRun": "yes"}},
    {"consumer": {"unknown": 1}},
    {"consumer": {"replicas": 2}},
    {"consumer": {"groups": []}},
    {"consumer": {"groups": [{"replicas": 2}]}},
    {"consumer": {"groups": [{"name": "", "replicas": 2}]}},
    {"consumer": {"groups": [{"name": "totals", "replicas": 0}]}},
    {"consumer": {"groups": [{"name": "totals"}]}},
    {"consumer": {"groups": [{"name": "totals", "replicas": "two"}]}},
    {"consumer": {"groups": [{"name": "Totals_A", "replicas": 1}]}},
    {"consumer": {"groups": [{"name": "totals", "replicas": 1, "batchSize": 10}]}},
    {"redis": {"cluster": {"masters": 2}}},
    {"redis": {"cluster": {"replicasPerMaster": -1}}},
    {"redis": {"cluster": {"unknown": 1}}},
    {"redis": {"waitReplicas": -1}},
    {"redis": {"waitReplicas": "one"}},
    {"externalRedis": {"cluster": "yes"}},
    {"chaos": {"targetRedisCluster": 1}},
    {"chaos": {"gracePeriodSeconds": 0}},
    {"chaos": {"mode": "kill"}},
    {"chaos": {"startingDeadlineSeconds": 0}},
    {"postgresql": {"username": "postgres"}},
    {"postgresql": {"image": "postgres:16"}},
    {"redis": {"auth": {"password": "p@ss:word"}}},
    {"image": {"digest": "latest"}},
    {"migrations": {"hook": True}},
    {"history": {"claimIdle": "ten seconds"}},
    {"monitoring": {"prometheusRule": {"consumerLagSeconds": 0}}},
    {"tracing": {"sampler": "sometimes"}},
    {"listenHost": ""},
    {"tls": {"unknown": True}},
    {"tls": {"caBundle": {"configMap": "ca", "secret": "ca"}}},
    {"tls": {"caBundle": {"configMap": "Corp_CA"}}},
    {"tls": {"caBundle": {"configMap": "ca", "key": ""}}},
    {"tls": {"server": {"enabled": "true"}}},
    {"tls": {"server": {"secretName": "my secret"}}},
    {"tls": {"server": {"certManager": {"duration": "90 days"}}}},
    {"tls": {"server": {"certManager": {"issuerRef": {"kind": "clusterissuer"}}}}},
    {"tls": {"server": {"certManager": {"extraDnsNames": ["rides example"]}}}},
    {"externalDatabase": {"sslmode": "verify"}},
    {"externalRedis": {"tls": "yes"}},
])
def test_the_schema_rejects_bad_values(bad):
    message = render_error(bad)
    assert "schema" in message, message


def test_the_schema_accepts_helms_global_values_and_global_image_registry_applies():
    objects = render({"global": {"imageRegistry": "mirror.example", "storageClass": "fast"}})
    images = {c["image"] for o in objects if o["kind"] in WORKLOADS for c in containers(o)}
    assert images and all(i.startswith("mirror.example/") for i in images), images
    assert "mirror.example/rocket-rides-log:0.1.0" in images
    assert "mirror.example/library/postgres:16.9" in images


def test_external_database_without_a_secret_is_a_clear_error():
    chart = helm_python.Chart.load(str(CHART))
    try:
        with pytest.raises(helm_python.HelmError, match=re.compile("existingSecret is required")):
            chart.render(with_auth({"postgresql": {"enabled": False}}), name=RELEASE, namespace=NAMESPACE,
                         is_install=True)
    finally:
        chart.close()


# ---- Secrets: given, the user's, or generated in the cluster; never at render time, so
# `helm template` is stable.

def secret_data(objects):
    return {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "Secret"}


def generator_jobs(objects):
    return [o for o in objects if o["kind"] == "Job"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "generated-secrets"]


def generated_secrets(objects):
    """{secret: [keys]} the generatedSecrets Job ensures, from its containers' arguments."""
    out = {}
    for job in generator_jobs(objects):
        for c in containers(job):
            assert c["command"] == ["rocket-rides-secrets"] and c["args"][0] == "ensure"
            args = [a.split("=", 1) for a in c["args"][1:]]
            (name,) = [v for k, v in args if k == "--name"]
            out[name] = [v for k, v in args if k == "--key"]
    return out


def test_partial_postgres_passwords_are_a_clear_error_and_redis_may_go_without():
    message = render_error({"postgresql": {"auth": {"password": "x"}}}, auth=False)
    assert "postgresql.auth.postgresPassword" in message and "or neither" in message
    message = render_error({"postgresql": {"auth": {"postgresPassword": "x"}}}, auth=False)
    assert "or neither" in message
    # Redis without a password is a choice one makes explicitly.
    objects = render({"postgresql": AUTH["postgresql"], "redis": {"auth": {"enabled": False}}}, auth=False)
    assert env_of(find(objects, "Deployment", f"{FULL}-streamer"))["REDIS_URL"]["value"] == f"redis://{FULL}-redis:6379"
    assert "REDIS_PASSWORD" not in env_of(find(objects, "Deployment", f"{FULL}-streamer"))
    assert not generator_jobs(objects)


@pytest.mark.parametrize("name", ["default", "existing", "generated"])
def test_helm_template_twice_gives_the_same_secrets(name):
    first = render_fresh(VALUE_SETS[name], auth=name not in NO_AUTH)
    second = render_fresh(VALUE_SETS[name], auth=name not in NO_AUTH)
    assert secret_data(first) == secret_data(second)
    if name == "default":
        assert set(secret_data(first)) == {f"{FULL}-postgresql", f"{FULL}-redis"}
        redis = secret_data(first)[f"{FULL}-redis"]
        assert base64.b64decode(redis["redis-password"]).decode() == "redis-secret"
    if name == "generated":
        # Nothing random at render time: the whole output, the Job's name included, is the same.
        assert first == second
        assert secret_data(first) == {}


def test_without_passwords_a_job_generates_the_secrets_the_pods_refer_to():
    objects = render({}, auth=False)
    assert secret_data(objects) == {}
    (job,) = generator_jobs(objects)
    name = f"{FULL}-generated-secrets"
    assert re.fullmatch(rf"{name}-[0-9a-f]{{8}}", job["metadata"]["name"])
    # A plain Job, not a Helm hook: GitOps applies it like any object.
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    # The same Secret names and keys as the Secrets rendered from given passwords.
    assert generated_secrets(objects) == {f"{FULL}-postgresql": ["password", "postgres-password"],
                                          f"{FULL}-redis": ["redis-password"]}
    api = env_of(find(objects, "Deployment", f"{FULL}-api"))
    assert api["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-postgresql", "key": "password"}
    pg = env_of(find(objects, "StatefulSet", f"{FULL}-postgresql"))
    assert pg["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-postgresql",
                                                                    "key": "postgres-password"}
    assert pg["APP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-postgresql", "key": "password"}
    for w in (find(objects, "Deployment", f"{FULL}-streamer"), find(objects, "StatefulSet", f"{FULL}-redis")):
        assert env_of(w)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == REDIS_PASSWORD_ENV["secretKeyRef"]
    # The Secrets it makes are in no release (uninstall and prune leave them) and carry no Argo CD
    # tracking label, yet Helm's ownership metadata: values that later give the passwords let
    # Helm adopt them instead of failing on "exists and cannot be imported"; and keep.
    for c in containers(job):
        labels = dict(a.removeprefix("--label=").split("=", 1) for a in c["args"] if a.startswith("--label="))
        annotations = dict(a.removeprefix("--annotation=").split("=", 1) for a in c["args"]
                           if a.startswith("--annotation="))
        assert not {"app.kubernetes.io/instance", "helm.sh/chart"} & set(labels)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert annotations == {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE,
                               "helm.sh/resource-policy": "keep"}
    # Its account may read only those Secrets, and create (which cannot be restricted by name).
    role = find(objects, "Role", name)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{FULL}-postgresql", f"{FULL}-redis"],
         "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    binding = find(objects, "RoleBinding", name)
    assert binding["roleRef"]["name"] == name and binding["subjects"][0]["name"] == name
    spec = pod_spec(job)
    assert spec["serviceAccountName"] == name and spec["automountServiceAccountToken"] is True
    assert find(objects, "ServiceAccount", name)["automountServiceAccountToken"] is False
    # A changed pod template is a new Job (its template is immutable); the same one keeps its name.
    other = generator_jobs(render({"image": {"tag": "0.1.1"}}, auth=False))[0]
    assert other["metadata"]["name"] != job["metadata"]["name"]


@pytest.mark.parametrize("values, expected", [
    # Every password given, or every Secret the user's: no Job, no RBAC.
    ({"postgresql": AUTH["postgresql"], "redis": AUTH["redis"]}, {}),
    (VALUE_SETS["existing"], {}),
    (DEMO, {}),
    ({"postgresql": AUTH["postgresql"], "redis": {"auth": {"enabled": False}}}, {}),
    (VALUE_SETS["external"], {}),
    # Only what is missing is generated.
    ({"postgresql": AUTH["postgresql"]}, {f"{FULL}-redis": ["redis-password"]}),
    ({"redis": {"auth": {"existingSecret": "mine"}}}, {f"{FULL}-postgresql": ["password", "postgres-password"]}),
    ({"postgresql": {"auth": {"existingSecret": "pg", "secretKeys": {"password": "app"}}},
      "redis": {"cluster": {"enabled": True}, "auth": {"existingSecretPasswordKey": "pw"}}},
     {f"{FULL}-redis": ["pw"]}),
])
def test_the_generator_job_exists_exactly_when_a_password_is_missing(values, expected):
    objects = render(values, auth=False)
    assert generated_secrets(objects) == expected
    rbac = [o for o in objects if o["kind"] in {"ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"}
            and o["metadata"]["name"] == f"{FULL}-generated-secrets"]
    assert len(rbac) == (4 if expected else 0)
    assert not set(expected) & set(secret_data(objects))


def test_existing_secrets_are_used_and_nothing_is_rendered_for_them():
    objects = render(VALUE_SETS["existing"], auth=False)
    assert secret_data(objects) == {}
    api = env_of(find(objects, "Deployment", f"{FULL}-api"))
    assert api["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-pg", "key": "password"}
    pg = env_of(find(objects, "StatefulSet", f"{FULL}-postgresql"))
    assert pg["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-pg", "key": "postgres-password"}
    for workload in (find(objects, "Deployment", f"{FULL}-streamer"), find(objects, "StatefulSet", f"{FULL}-redis")):
        assert env_of(workload)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}


def test_redis_requires_the_password_and_its_probes_use_it():
    objects = render({})
    redis = find(objects, "StatefulSet", f"{FULL}-redis")
    c = containers(redis)[0]
    assert "--requirepass $(REDIS_PASSWORD)" in " ".join(c["command"])
    env = [e["name"] for e in c["env"]]
    assert env.index("REDIS_PASSWORD") < env.index("REDISCLI_AUTH")
    assert env_of(redis)["REDISCLI_AUTH"]["value"] == "$(REDIS_PASSWORD)"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # redis-cli exits 0 on NOAUTH too: only PONG counts.
        assert c[probe]["exec"]["command"] == ["sh", "-c", 'test "$(redis-cli ping)" = PONG'], probe
    # Every Redis client defines REDIS_PASSWORD before the REDIS_URL that expands it.
    for w in [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]:
        names = [e["name"] for e in containers(w, init=False)[0].get("env", [])]
        if "REDIS_URL" in names:
            assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), w["metadata"]["name"]
    # A maxmemory below the limit, with noeviction: the log is never evicted silently.
    command = " ".join(c["command"])
    assert "--maxmemory 200mb" in command and "--maxmemory-policy noeviction" in command
    assert c["resources"]["limits"]["memory"] == "512Mi"
    cluster = render(VALUE_SETS["cluster"])
    job = bootstrap_job(cluster)
    assert env_of(job)["REDISCLI_AUTH"]["value"] == "$(REDIS_PASSWORD)"


# ---- Migrations: init containers always; a hook Job only when asked.

def test_every_database_client_migrates_first_and_the_hook_is_a_switch():
    objects = render({})
    for w in [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
              and pod_labels(o).get("rocket-rides/db-client") == "true"]:
        init = pod_spec(w)["initContainers"]
        assert [c["name"] for c in init] == ["migrate"], w["metadata"]["name"]
        assert init[0]["command"] == ["rocket-rides-api", "migrate"]
    assert not [o for o in objects if o["kind"] == "Job"]
    hooked = render({"migrations": {"hook": {"enabled": True}}})
    job = find(hooked, "Job", f"{FULL}-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"


# ---- The history service.

def test_history_runs_like_a_consumer_group_member():
    objects = render({})
    deployment = find(objects, "Deployment", f"{FULL}-history")
    assert deployment["spec"]["replicas"] == 2
    c = containers(deployment, init=False)[0]
    assert c["command"] == ["rocket-rides-history"]
    env = env_of(deployment)
    assert env["CONSUMER_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["LISTEN_ADDR"]["value"] == "[::]:50055" and env["METRICS_ADDR"]["value"] == "[::]:9090"
    assert env["CLAIM_IDLE"]["value"] == "10s" and env["MAX_DELIVERIES"]["value"] == "5"
    assert {"DATABASE_URL", "PGPASSWORD", "REDIS_URL", "STREAM_NAME", "LOG_PARTITIONS"} <= env.keys()
    labels = pod_labels(deployment)
    for key in ("rocket-rides/chaos-target", "rocket-rides/db-client", "rocket-rides/redis-client"):
        assert labels[key] == "true", key
    pdb = find(objects, "PodDisruptionBudget", f"{FULL}-history")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = find(objects, "Service", f"{FULL}-history")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("grpc", 50055), ("metrics", 9090)]
    assert not [o for o in render({"history": {"enabled": False}}) if "history" in o["metadata"]["name"]]


# ---- Observability.

def test_each_workload_with_metrics_has_exactly_one_scraped_service():
    objects = render({})
    scraped = [o for o in objects if o["kind"] == "Service" and o["metadata"]["labels"].get("rocket-rides/metrics") == "true"]
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in scraped)
    for w in [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]:
        has_metrics = any(p.get("name") == "metrics" for c in containers(w, init=False) for p in c.get("ports", []))
        selecting = [s for s in scraped if s["spec"]["selector"].items() <= pod_labels(w).items()]
        assert len(selecting) == (1 if has_metrics else 0), w["metadata"]["name"]
        if has_metrics:
            assert pod_labels(w)["app.kubernetes.io/component"] in {"api", "streamer", "consumer", "history"}
    assert {s["metadata"]["name"] for s in scraped} == {f"{FULL}-api", f"{FULL}-streamer", f"{FULL}-history",
                                                        consumer_name("totals-a"), consumer_name("totals-b")}
    assert not [o for o in objects if o["kind"] in CRD_KINDS or o["metadata"]["name"].endswith("-dashboard")]


def test_the_monitors_select_what_they_should():
    objects = render(VALUE_SETS["monitoring"])
    sm = find(objects, "ServiceMonitor", FULL)
    services = [o for o in objects if o["kind"] == "Service"
                and selector_matches(sm["spec"]["selector"], o["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in services} == {f"{FULL}-api", f"{FULL}-streamer", f"{FULL}-history",
                                                         consumer_name("totals-a"), consumer_name("totals-b")}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert not [o for o in objects if o["kind"] == "PodMonitor"]
    pm_objects = render(POD_MONITORING)
    pm = find(pm_objects, "PodMonitor", FULL)
    assert not [o for o in pm_objects if o["kind"] == "ServiceMonitor"]
    pods = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in pm_objects if o["kind"] in WORKLOADS
            and selector_matches(pm["spec"]["selector"], pod_labels(o))}
    assert pods == {"api", "streamer", "consumer", "history"}
    for monitor, endpoints in ((sm, "endpoints"), (pm, "podMetricsEndpoints")):
        (endpoint,) = monitor["spec"][endpoints]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        # No relabeling: the alerts need only the labels every scrape setup attaches.
        assert "relabelings" not in endpoint
    labelled = render(merged(VALUE_SETS["monitoring"], {"monitoring": {"serviceMonitor": {"labels": {"release": "kps"}}}}))
    assert find(labelled, "ServiceMonitor", FULL)["metadata"]["labels"]["release"] == "kps"


def test_monitoring_objects_validate_against_their_crd_schemas():
    """Validated: the hand-written subsets of the Prometheus Operator CRDs in crd-schemas/ (every
    field the chart uses, its type, enum, pattern and required keys; unknown fields rejected).
    Not validated: the full CRD (fields the chart does not use), or what the operator checks at
    run time; PromQL is checked by promtool below."""
    objects = render(VALUE_SETS["monitoring"]) + [o for o in render(POD_MONITORING) if o["kind"] == "PodMonitor"]
    kinds = {o["kind"] for o in objects}
    assert CRD_KINDS <= kinds
    for obj in (o for o in objects if o["kind"] in CRD_KINDS):
        schema = json.loads((HERE / "crd-schemas" / f"{obj['kind'].lower()}.json").read_text())
        jsonschema.validate(obj, schema)
    # The schemas do catch mistakes.
    sm = copy.deepcopy(find(objects, "ServiceMonitor", FULL))
    sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, json.loads((HERE / "crd-schemas" / "servicemonitor.json").read_text()))
    rule = copy.deepcopy(find(objects, "PrometheusRule", FULL))
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, json.loads((HERE / "crd-schemas" / "prometheusrule.json").read_text()))


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's prometheus package (`make deps` does)"
    return path


def test_the_alerts_pass_promtool_check_and_their_unit_tests(tmp_path):
    objects = render(VALUE_SETS["monitoring"])
    rule = find(objects, "PrometheusRule", FULL)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run([promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    # Every alert is tested: firing once its condition held, resolved after recovery.
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    for alert in alerts:
        checks = [c for t in cases for c in t["alert_rule_test"] if c["alertname"] == alert]
        firing = [c["eval_time"] for c in checks if c["exp_alerts"]]
        assert firing, f"{alert} is never seen firing"
        assert any(not c["exp_alerts"] and c["eval_time"] != "0m" for c in checks), f"{alert} never resolves"
    tested = {c["alertname"] for t in cases for c in t["alert_rule_test"]}
    assert tested == alerts


def test_alerts_and_dashboard_use_metrics_the_services_export():
    sources = "\n".join(p.read_text() for p in (CHART.parents[1] / "services").glob("*/src/**/*.rs"))
    exported = set(re.findall(r'(?:counter|gauge|histogram)!\(\s*"([a-z_]+)"', sources))
    # A consumer group kind's metrics: `GroupMetrics::register("<prefix>")` names them
    # `<prefix>_<suffix>`.
    suffixes = re.findall(r'(?:counter|gauge|histogram)!\(\s*format!\("\{prefix\}_([a-z_]+)"', sources)
    for prefix in re.findall(r'GroupMetrics::register\("([a-z_]+)"\)', sources):
        exported |= {f"{prefix}_{suffix}" for suffix in suffixes}
    assert "history_lag_seconds" in exported
    assert "rocket_rides_consumer_lag_seconds" in exported
    rule = find(render(VALUE_SETS["monitoring"]), "PrometheusRule", FULL)
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((CHART / "dashboards" / "rocket-rides.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set()
    for expr in exprs:
        used |= {m for m in re.findall(r"\b((?:rocket_rides|history)_[a-z_]+)", expr)} - {"rocket_rides_release"}
    known = exported | {f"{m}_bucket" for m in exported}
    assert used and used <= known, used - known


def test_the_grafana_dashboard_ships_in_a_configmap_for_the_sidecar():
    objects = render(VALUE_SETS["monitoring"])
    cm = find(objects, "ConfigMap", f"{FULL}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["rocket-rides.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    for needle in ("Rides per second", "Consumer lag (seconds)", "Batch size (p50 / p99)", "gRPC latency (p50 / p99)"):
        assert needle in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_jaeger_v2_with_a_bounded_store_and_configurable_sampling():
    objects = render({"jaeger": {"maxTraces": 1234}, "tracing": {"sampler": "parentbased_traceidratio",
                                                                  "samplingRatio": 0.25}})
    jaeger = find(objects, "Deployment", f"{FULL}-jaeger")
    c = containers(jaeger)[0]
    assert re.fullmatch(r"docker\.io/jaegertracing/jaeger:2\.\d+\.\d+", c["image"]), c["image"]
    config = yaml.safe_load(find(objects, "ConfigMap", f"{FULL}-jaeger")["data"]["config.yaml"])
    assert config["extensions"]["jaeger_storage"]["backends"]["memstore"]["memory"]["max_traces"] == 1234
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == ":4317"
    assert c["readinessProbe"]["httpGet"] == {"path": "/status", "port": "health"}
    env = env_of(find(objects, "Deployment", f"{FULL}-api"))
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"


# ---- TLS: the CA bundle where a TLS client runs, the servers' certificate where a server does.

CA_FILE = "/etc/rocket-rides/ca/ca.crt"
CA_MOUNT = {"name": "ca-bundle", "mountPath": "/etc/rocket-rides/ca", "readOnly": True}
TLS_MOUNT = {"name": "grpc-tls", "mountPath": "/etc/rocket-rides/tls", "readOnly": True}
TLS_VARS = {"SSL_CERT_FILE", "PGSSLMODE", "PGSSLROOTCERT", "REDIS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"}
GRPC_SERVERS = {"api": 50051, "consumer": 50052, "history": 50055}


def tls_view(objects):
    """Every container of every workload: (workload, container) -> (TLS variables, TLS mounts),
    and the pod's TLS volumes by workload."""
    view, volumes = {}, {}
    for o in (o for o in objects if o["kind"] in WORKLOADS):
        name = o["metadata"]["name"]
        volumes[name] = {v["name"]: v for v in pod_spec(o).get("volumes", []) if v["name"] in {"ca-bundle", "grpc-tls"}}
        for c in containers(o):
            env = {e["name"]: e.get("value") for e in c.get("env", []) if e["name"] in TLS_VARS}
            mounts = [m for m in c.get("volumeMounts", []) if m["name"] in {"ca-bundle", "grpc-tls"}]
            view[(name, c["name"])] = (env, mounts)
    return view, volumes


def workload_containers(objects):
    """(workload, container) -> (component, the container's variable names)."""
    return {(o["metadata"]["name"], c["name"]): (o["metadata"]["labels"]["app.kubernetes.io/component"],
                                                 {e["name"] for e in c.get("env", [])})
            for o in objects if o["kind"] in WORKLOADS for c in containers(o)}


def test_defaults_render_no_tls_objects_mounts_or_variables():
    for values in ({}, DEMO, VALUE_SETS["external"]):
        objects = render(values, auth=values is not DEMO)
        assert not [o for o in objects if o["kind"] in CERT_KINDS]
        view, volumes = tls_view(objects)
        assert all(env == {} and mounts == [] for env, mounts in view.values()), view
        assert all(v == {} for v in volumes.values())
        script = helm_test_script(objects)
        assert re.search(r"^tls=-plaintext$", script, re.M) and "-cacert" not in script


def test_the_ca_bundle_reaches_every_tls_client_and_nothing_else():
    objects = render(TLS)
    view, volumes = tls_view(objects)
    # Who talks TLS to whom: every app container (init containers included) trusts the bundle;
    # the database's CA only where DATABASE_URL is, Redis's only where REDIS_URL is; the helm
    # test needs it to verify the servers; chaos talks only to the Kubernetes API.
    info = workload_containers(objects)
    for (workload, container), (env, mounts) in view.items():
        where = (workload, container)
        component, names = info[where]
        if component == "chaos":
            assert env == {} and mounts == [] and volumes[workload] == {}, where
            continue
        if component == "test":
            assert env == {} and mounts == [CA_MOUNT], where
        else:
            assert env["SSL_CERT_FILE"] == CA_FILE, where
            assert CA_MOUNT in mounts, where
        assert volumes[workload]["ca-bundle"] == {"name": "ca-bundle", "secret": {
            "secretName": "corp-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}, where
        db, redis = "DATABASE_URL" in names, "REDIS_URL" in names
        assert (env.get("PGSSLMODE"), env.get("PGSSLROOTCERT")) == \
            (("verify-full", CA_FILE) if db else (None, None)), where
        assert env.get("REDIS_CA_FILE") == (CA_FILE if redis else None), where
        assert all(m["readOnly"] for m in mounts), where
    checked = {component for component, _ in info.values()}
    assert {"api", "streamer", "consumer", "history", "migrations", "test", "chaos"} <= checked
    # Every migrate init container as well as the hook Job.
    inits = [k for k in view if k[1] == "migrate"]
    assert len(inits) == 1 + 1 + 1 + len(DEFAULT_GROUPS) + 1  # api, streamer, history, groups, hook
    # The simulator (without server TLS) trusts it for its collector.
    sim = render(merged(TLS, {"tls": {"server": {"enabled": False, "certManager": {"enabled": False}}},
                              "simulator": {"enabled": True}}))
    env, mounts = tls_view(sim)[0][(f"{FULL}-simulator", "simulator")]
    assert env == {"SSL_CERT_FILE": CA_FILE} and mounts == [CA_MOUNT]


@pytest.mark.parametrize("values,expected", [
    # A CA bundle alone: SSL_CERT_FILE; the bundled Postgres and Redis serve no TLS.
    ({"tls": {"caBundle": {"configMap": "corp-ca"}}}, {"SSL_CERT_FILE": CA_FILE}),
    # sslmode without a bundle: the image's CAs (or the URL's sslrootcert).
    ({"postgresql": {"enabled": False}, "externalDatabase": {"existingSecret": "db", "sslmode": "require"}},
     {"PGSSLMODE": "require"}),
    ({"postgresql": {"enabled": False}, "externalDatabase": {"existingSecret": "db", "sslmode": "disable"},
      "tls": {"caBundle": {"configMap": "corp-ca"}}}, {"PGSSLMODE": "disable", "SSL_CERT_FILE": CA_FILE}),
    ({"postgresql": {"enabled": False}, "externalDatabase": {"existingSecret": "db", "sslmode": "verify-ca"},
      "tls": {"caBundle": {"configMap": "corp-ca"}}},
     {"PGSSLMODE": "verify-ca", "PGSSLROOTCERT": CA_FILE, "SSL_CERT_FILE": CA_FILE}),
])
def test_database_tls_variables_follow_sslmode_and_the_bundle(values, expected):
    objects = render(values)
    env, mounts = tls_view(objects)[0][(f"{FULL}-api", "api")]
    assert env == expected
    assert (CA_MOUNT in mounts) == ("SSL_CERT_FILE" in expected)
    migrate, _ = tls_view(objects)[0][(f"{FULL}-api", "migrate")]
    assert migrate == expected


@pytest.mark.parametrize("redis,url", [
    ({"url": "redis://r.example:6380", "tls": True}, "rediss://r.example:6380"),
    ({"url": "redis://:pw@a:6379, redis://:pw@b:6379", "cluster": True, "tls": True},
     "rediss://:pw@a:6379,rediss://:pw@b:6379"),
    ({"url": "rediss://r.example:6380/0", "tls": True}, "rediss://r.example:6380/0"),
    ({"url": "redis://r.example:6379"}, "redis://r.example:6379"),
])
def test_external_redis_tls_makes_every_node_rediss(redis, url):
    objects = render({"redis": {"enabled": False}, "externalRedis": redis, "tls": {"caBundle": {"configMap": "ca"}}})
    for name, env in redis_env(objects).items():
        assert env["REDIS_URL"] == url, name
        assert env.get("REDIS_CA_FILE") == (CA_FILE if redis.get("tls") else None), name
    # From a Secret, the URL is the user's (it must be rediss:// already); the CA is still given.
    secret = render({"redis": {"enabled": False}, "externalRedis": {"existingSecret": "r", "tls": True}})
    for env in redis_env(secret).values():
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "r", "key": "redis-url"}}
        assert "REDIS_CA_FILE" not in env  # no bundle given: the image's CAs


def test_server_tls_mounts_the_certificate_and_probes_the_port():
    objects = render(TLS)
    cert = find(objects, "Certificate", f"{FULL}-grpc")
    servers = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
               and pod_labels(o).get("rocket-rides/grpc-server") == "true"]
    assert sorted(pod_labels(o)["app.kubernetes.io/component"] for o in servers) == \
        ["api", "consumer", "consumer", "history"]
    for w in objects:
        if w["kind"] not in WORKLOADS:
            continue
        where = w["metadata"]["name"]
        serves = w in servers
        c = containers(w, init=False)[0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        mounts = c.get("volumeMounts", [])
        volume = next((v for v in pod_spec(w).get("volumes", []) if v["name"] == "grpc-tls"), None)
        if not serves:
            assert "TLS_CERT_FILE" not in env and "TLS_KEY_FILE" not in env and TLS_MOUNT not in mounts, where
            assert volume is None, where
            continue
        assert env["TLS_CERT_FILE"] == "/etc/rocket-rides/tls/tls.crt", where
        assert env["TLS_KEY_FILE"] == "/etc/rocket-rides/tls/tls.key", where
        assert TLS_MOUNT in mounts, where
        assert volume == {"name": "grpc-tls", "secret": {
            "secretName": cert["spec"]["secretName"], "defaultMode": 0o440,
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}}, where
        # The kubelet's gRPC probes speak no TLS: they ask the plaintext health-only port.
        assert env["HEALTH_ADDR"] == "[::]:50059", where
        assert c["readinessProbe"]["grpc"] == {"port": 50059}, where
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": 50059, "service": "liveness"}, (where, probe)
        # Init containers are clients: no server certificate there.
        for init in pod_spec(w).get("initContainers", []):
            assert TLS_MOUNT not in init.get("volumeMounts", []), where
    # The streamer serves only health to the kubelet: plaintext, native gRPC probes.
    streamer = containers(find(objects, "Deployment", f"{FULL}-streamer"), init=False)[0]
    assert streamer["readinessProbe"]["grpc"] == {"port": 50053}
    assert streamer["livenessProbe"]["grpc"] == {"port": 50053, "service": "liveness"}
    # A Secret of one's own instead of cert-manager: no Certificate.
    own = render(merged(TLS, {"tls": {"server": {"secretName": "rides-grpc", "certManager": {"enabled": False}}}}))
    assert not [o for o in own if o["kind"] in CERT_KINDS]
    api = find(own, "Deployment", f"{FULL}-api")
    assert next(v for v in pod_spec(api)["volumes"] if v["name"] == "grpc-tls")["secret"]["secretName"] == "rides-grpc"
    named = render(merged(TLS, {"tls": {"server": {"secretName": "rides-grpc"}}}))
    assert find(named, "Certificate", f"{FULL}-grpc")["spec"]["secretName"] == "rides-grpc"


def test_the_certificate_names_every_grpc_service_and_validates_against_its_crd_schema():
    """Validated: crd-schemas/certificate.json, a hand-written subset of cert-manager's
    Certificate CRD (the fields the chart uses; unknown fields rejected). Not validated: what
    cert-manager's webhook and the issuer check at run time."""
    schema = json.loads((HERE / "crd-schemas" / "certificate.json").read_text())
    values = merged(TLS, {"consumer": {"groups": [{"name": "totals", "replicas": 2}, {"name": "audit", "replicas": 1}]},
                          "tls": {"server": {"certManager": {
                              "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}, "duration": "2160h",
                              "renewBefore": "360h", "clusterDomain": "k8s.example", "extraDnsNames": ["rides.example.com"]}}}})
    objects = render(values)
    cert = find(objects, "Certificate", f"{FULL}-grpc")
    jsonschema.validate(cert, schema)
    jsonschema.validate(find(render(TLS), "Certificate", f"{FULL}-grpc"), schema)
    spec = cert["spec"]
    assert spec["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["secretName"] == f"{FULL}-grpc-tls"
    assert (spec["duration"], spec["renewBefore"]) == ("2160h", "360h")
    assert "server auth" in spec["usages"] and spec["privateKey"]["rotationPolicy"] == "Always"
    # Every Service of a gRPC server, by each name a client in the cluster may use.
    names = set(spec["dnsNames"])
    assert len(names) == len(spec["dnsNames"])
    servers = [o for o in objects if o["kind"] == "Service"
               and o["spec"]["selector"].get("app.kubernetes.io/component") in GRPC_SERVERS]
    assert len(servers) == 2 + 2 * 2 + 1
    for svc in servers:
        n = svc["metadata"]["name"]
        assert {n, f"{n}.{NAMESPACE}", f"{n}.{NAMESPACE}.svc", f"{n}.{NAMESPACE}.svc.k8s.example"} <= names, n
    assert names - {n for s in servers for n in (s["metadata"]["name"],)} - \
        {f"{s['metadata']['name']}{x}" for s in servers for x in (f".{NAMESPACE}", f".{NAMESPACE}.svc",
                                                                  f".{NAMESPACE}.svc.k8s.example")} == {"rides.example.com"}
    # The helm test's addresses are among them (grpcurl verifies the host it dials).
    script = helm_test_script(objects)
    hosts = [a.split(":")[0] for a in re.search(r'^consumers="([^"]*)"$', script, re.M).group(1).split()]
    hosts += [re.search(rf"^{v}=([^:]+):", script, re.M).group(1) for v in ("api", "history")]
    assert hosts and set(hosts) <= names
    # The schema does catch mistakes.
    for path, bad in ((("usages",), ["server-auth"]), (("issuerRef",), {"kind": "Issuer"}),
                      (("privateKey", "algorithm"), "EC"), (("duration",), "90 days"), (("dnsName",), ["x"]),
                      (("dnsNames",), ["Not A Name"])):
        broken = copy.deepcopy(cert)
        target = broken["spec"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_the_helm_test_speaks_tls_to_the_servers_with_the_ca_bundle(tmp_path):
    values = merged(VALUE_SETS["hardened"], {"tls": TLS["tls"], "chaos": {"enabled": False}})
    out, calls = run_helm_test(tmp_path, values)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls and len(run_helm_test.flags) == len(calls)
    for flags in run_helm_test.flags:
        words = flags.split()
        assert "-plaintext" not in words, flags
        assert words[words.index("-cacert") + 1] == CA_FILE, flags
    pod = find(render(values), "Pod", f"{FULL}-test-create-ride")
    assert containers(pod)[0]["volumeMounts"] == [CA_MOUNT]
    assert pod_spec(pod)["volumes"][0]["secret"]["secretName"] == "corp-ca"


def test_the_notes_tell_grpcurl_to_verify_the_servers():
    chart = helm_python.Chart.load(str(CHART))
    try:
        notes = chart.render(with_auth(TLS), name=RELEASE, namespace=NAMESPACE,
                             is_install=True)["rocket-rides/templates/NOTES.txt"]
    finally:
        chart.close()
    assert "-plaintext" not in notes
    for server in (f"{FULL}-api", consumer_name("totals-a"), f"{FULL}-history"):
        assert f"grpcurl -cacert ca.crt -servername {server} " in notes, server
    assert f"Secret {FULL}-grpc-tls" in notes


@pytest.mark.parametrize("values,message", [
    (merged(TLS, {"tls": {"caBundle": {"secret": ""}}}), "tls.server.enabled needs tls.caBundle"),
    (merged(TLS, {"tls": {"server": {"certManager": {"issuerRef": {"name": ""}}}}}),
     "tls.server.certManager.issuerRef.name is required"),
    (merged(TLS, {"tls": {"server": {"certManager": {"enabled": False}}}}), "tls.server.secretName is required"),
    ({"tls": {"server": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}},
     "tls.server.certManager.enabled needs tls.server.enabled"),
    ({"externalDatabase": {"sslmode": "require"}}, "the bundled Postgres serves no TLS"),
    ({"externalRedis": {"tls": True}}, "the bundled Redis serves no TLS"),
])
def test_tls_settings_that_cannot_work_are_a_clear_error(values, message):
    assert message in render_error(values)


# ---- Pods: images, labels, probes, shutdown, binds, tokens, spread.

STATEFUL = ("postgresql", "redis", "redis-cluster", "jaeger")


@pytest.mark.parametrize("name", ["default", "cluster"])
def test_stateful_pod_templates_carry_no_version_labels(name):
    objects = render(VALUE_SETS[name])
    checked = 0
    for w in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        labels = pod_labels(w)
        if labels["app.kubernetes.io/component"] in STATEFUL:
            checked += 1
            assert "app.kubernetes.io/version" not in labels and "helm.sh/chart" not in labels, w["metadata"]["name"]
        assert "helm.sh/chart" not in labels, w["metadata"]["name"]
    assert checked == 3


def test_every_image_is_pinned():
    objects = render(merged(VALUE_SETS["cluster"], {"simulator": {"enabled": True}}))
    for o in (o for o in objects if o["kind"] in WORKLOADS):
        for c in containers(o):
            ref = c["image"]
            tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), ref
    defaults = render({})
    assert containers(find(defaults, "Deployment", f"{FULL}-api"))[0]["image"] == "localhost/rocket-rides-log:0.1.0"
    assert containers(find(defaults, "Deployment", f"{FULL}-api"))[0]["imagePullPolicy"] == "IfNotPresent"
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"digest": digest}})
    assert containers(find(pinned, "Deployment", f"{FULL}-api"))[0]["image"] == f"localhost/rocket-rides-log:0.1.0@{digest}"


def test_stateful_sets_have_startup_probes_patient_exec_probes_headless_services_and_shm():
    objects = render(VALUE_SETS["cluster"]) + render({})
    for w in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        for c in containers(w, init=False):
            assert c.get("startupProbe"), (w["metadata"]["name"], c["name"])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in c[probe]:
                    assert c[probe].get("timeoutSeconds", 1) >= 5, (w["metadata"]["name"], probe)
        if w["kind"] == "StatefulSet":
            governing = find(objects, "Service", w["spec"]["serviceName"])
            assert governing["spec"]["clusterIP"] == "None", w["metadata"]["name"]
    pg = find(objects, "StatefulSet", f"{FULL}-postgresql")
    shm = next(v for v in pod_spec(pg)["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in containers(pg)[0]["volumeMounts"]


def test_grpc_servers_bind_every_family_and_wait_before_stopping():
    objects = render(DEMO, auth=False)
    for w in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        c = containers(w, init=False)[0]
        if not c.get("command", [""])[0].startswith("rocket-rides-"):
            continue
        env = env_of(w)
        for var in ("LISTEN_ADDR", "METRICS_ADDR"):
            if var in env:
                assert env[var]["value"].startswith("[::]:"), (w["metadata"]["name"], var)
        serves = pod_labels(w).get("rocket-rides/grpc-server") == "true"
        # Native sleep: the image has no shell for an exec sleep.
        assert (c.get("lifecycle") == {"preStop": {"sleep": {"seconds": 5}}}) == serves, w["metadata"]["name"]
        if serves:
            assert pod_spec(w)["terminationGracePeriodSeconds"] == 30
    v4 = render({"listenHost": "0.0.0.0"})
    assert env_of(find(v4, "Deployment", f"{FULL}-api"))["LISTEN_ADDR"]["value"] == "0.0.0.0:50051"


@pytest.mark.parametrize("name", ["demo", "generated"])
def test_only_chaos_and_the_secret_generator_get_a_service_account_token(name):
    objects = render(VALUE_SETS[name], auth=False)
    for o in (o for o in objects if o["kind"] in WORKLOADS):
        expected = o["metadata"]["labels"]["app.kubernetes.io/component"] in {"chaos", "generated-secrets"}
        assert pod_spec(o).get("automountServiceAccountToken") is expected, o["metadata"]["name"]


def test_replicated_workloads_spread_over_nodes():
    objects = render({})
    for w in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        component = pod_labels(w)["app.kubernetes.io/component"]
        spread = pod_spec(w).get("topologySpreadConstraints")
        if component in {"api", "streamer", "consumer", "history"}:
            (constraint,) = spread
            assert constraint["topologyKey"] == "kubernetes.io/hostname"
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels(w).items()
            assert constraint["labelSelector"]["matchLabels"] == w["spec"]["selector"]["matchLabels"]
        else:
            assert spread is None, w["metadata"]["name"]


def test_the_api_has_a_headless_service_for_client_side_balancing():
    objects = render(DEMO, auth=False)
    headless = find(objects, "Service", f"{FULL}-api-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == find(objects, "Service", f"{FULL}-api")["spec"]["selector"]
    # The simulator resolves the headless name to every api pod and balances over them.
    assert env_of(find(objects, "Deployment", f"{FULL}-simulator"))["API_URL"]["value"] == f"http://{FULL}-api-headless:50051"


def test_with_server_tls_the_simulator_calls_over_tls_and_trusts_the_ca():
    objects = render(merged(TLS, {"simulator": {"enabled": True}}), auth=False)
    env = env_of(find(objects, "Deployment", f"{FULL}-simulator"))
    assert env["API_URL"]["value"] == f"https://{FULL}-api-headless:50051"
    assert all(u.startswith("https://") for u in env["CONSUMER_URLS"]["value"].split(","))
    assert env["SSL_CERT_FILE"]["value"] == "/etc/rocket-rides/ca/ca.crt"


def test_the_chart_needs_kubernetes_1_24():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    # Helm refuses to install on an older cluster (lint does not check it, so neither can we here).
    assert chart["kubeVersion"] == ">=1.24.0-0"


# ---- The local Prometheus (deploy/monitoring): its config is valid and its rules are the chart's.

LOCAL = CHART.parents[1] / "deploy" / "monitoring"
LOCAL_RULES_HEADER = """\
# Generated from helm/rocket-rides (the PrometheusRule, for namespace "local" and release "local",
# the labels deploy/monitoring/prometheus.yml gives every local target). Do not edit: change the
# chart, then regenerate with  RR_WRITE_LOCAL_RULES=1 make chart
"""


def local_rules():
    # No chaos locally; LOG_PARTITIONS as up.sh defaults it.
    values = merged(MONITORING, {"chaos": {"enabled": False}, "logPartitions": 4})
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(with_auth(values), name="local", namespace="local", is_install=True)
    finally:
        chart.close()
    docs = [d for d in yaml.safe_load_all(out["rocket-rides/templates/monitoring.yaml"]) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    return LOCAL_RULES_HEADER + yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=1000)


def test_the_local_prometheus_config_is_valid_and_its_rules_are_the_charts():
    if os.environ.get("RR_WRITE_LOCAL_RULES"):
        (LOCAL / "rules.yml").write_text(local_rules())
    assert (LOCAL / "rules.yml").read_text() == local_rules(), \
        "deploy/monitoring/rules.yml is stale: RR_WRITE_LOCAL_RULES=1 make chart"
    check = subprocess.run([promtool(), "check", "config", str(LOCAL / "prometheus.yml")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load((LOCAL / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    # The METRICS_ADDR ports of deploy/local/up.sh, and the history service's two.
    up = (CHART.parents[1] / "deploy" / "local" / "up.sh").read_text()
    for port in re.findall(r"METRICS_ADDR=127\.0\.0\.1:(\d+)", up):
        assert f"127.0.0.1:{port}" in targets, port
    assert {"127.0.0.1:9105", "127.0.0.1:9106"} <= targets


def test_the_chart_readme_lists_every_value():
    def leaves(v, path=""):
        if isinstance(v, dict) and v and not path.endswith(("resources", "labels", "Context")):
            for k, x in v.items():
                yield from leaves(x, f"{path}.{k}" if path else k)
        else:
            yield path
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaves(values) if f"| `{p}` |" not in readme]
    assert not missing, missing


# ---- Options users expect (issue 20, point 9).

APP_COMPONENTS = {"api", "streamer", "consumer", "history", "simulator"}


def test_every_pod_gets_the_pull_secrets_priority_class_annotations_and_labels():
    objects = render(VALUE_SETS["options"])
    pods = [o for o in objects if o["kind"] in WORKLOADS]
    assert len(pods) > 8
    for o in pods:
        spec, name = pod_spec(o), o["metadata"]["name"]
        assert spec["imagePullSecrets"] == [{"name": "mirror"}, {"name": "regcred"}], name
        assert spec["priorityClassName"] == "rides-critical", name
        assert pod_labels(o)["team"] == "rides", name
        meta = o["metadata"] if o["kind"] == "Pod" else (
            o["spec"]["jobTemplate"]["spec"]["template"]["metadata"] if o["kind"] == "CronJob"
            else o["spec"]["template"]["metadata"])
        assert meta["annotations"]["team.example.com/owner"] == "rides", name
    # The chart's own annotations stay beside them.
    api = find(objects, "Deployment", f"{FULL}-api")
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # Labels that selectors rely on cannot be overridden.
    assert "is one of the chart's own labels" in render_error({"podLabels": {"app.kubernetes.io/name": "x"}})


def test_the_service_account_is_created_for_workload_identity_and_used_by_the_app_pods():
    objects = render(VALUE_SETS["options"])
    sa = find(objects, "ServiceAccount", FULL)
    assert sa["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "rides@p.iam.gserviceaccount.com"}
    assert sa["automountServiceAccountToken"] is False
    for o in objects:
        if o["kind"] in {"Deployment", "StatefulSet"}:
            spec = pod_spec(o)
            assert spec["serviceAccountName"] == FULL and spec["automountServiceAccountToken"] is False
    # Chaos keeps its own account and Role.
    chaos = find(objects, "CronJob", f"{FULL}-chaos")
    assert pod_spec(chaos)["serviceAccountName"] == f"{FULL}-chaos"
    # An account of the user's: not created, named on the pods.
    mine = render({"serviceAccount": {"create": False, "name": "rides-wi"}})
    assert not [o for o in mine if o["kind"] == "ServiceAccount" and o["metadata"]["name"] in {FULL, "rides-wi"}]
    assert pod_spec(find(mine, "Deployment", f"{FULL}-api"))["serviceAccountName"] == "rides-wi"
    assert pod_spec(find(render({"serviceAccount": {"create": False}}), "Deployment", f"{FULL}-api"))[
        "serviceAccountName"] == "default"


def test_extra_env_volumes_and_mounts_reach_the_app_containers_only():
    objects = render(VALUE_SETS["options"])
    seen = set()
    for o in objects:
        if o["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        component = o["metadata"]["labels"]["app.kubernetes.io/component"]
        c = containers(o, init=False)[0]
        env = {e["name"]: e for e in c.get("env", [])}
        volumes = {v["name"] for v in pod_spec(o).get("volumes", [])}
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        is_app = component in APP_COMPONENTS
        assert ("HTTPS_PROXY" in env) == is_app, o["metadata"]["name"]
        assert ("vault" in volumes) == is_app and ("/mnt/vault" in mounts) == is_app, o["metadata"]["name"]
        if is_app:
            seen.add(component)
            # After the chart's own variables: it cannot shadow one by accident of order.
            assert list(env)[-1] == "HTTPS_PROXY"
    assert seen == {"api", "streamer", "consumer", "history"}


def test_the_api_can_autoscale_and_then_renders_no_replica_count():
    objects = render(VALUE_SETS["options"])
    api = find(objects, "Deployment", f"{FULL}-api")
    assert "replicas" not in api["spec"]
    hpa = find(objects, "HorizontalPodAutoscaler", f"{FULL}-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{FULL}-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    assert [(m["resource"]["name"], m["resource"]["target"]["averageUtilization"]) for m in hpa["spec"]["metrics"]] \
        == [("cpu", 80), ("memory", 75)]
    # The PDB follows the autoscaler's floor.
    assert find(objects, "PodDisruptionBudget", f"{FULL}-api")
    single = render({"api": {"autoscaling": {"enabled": True, "minReplicas": 1}}})
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == f"{FULL}-api"]
    assert "exceeds maxReplicas" in render_error({"api": {"autoscaling": {"enabled": True, "minReplicas": 9,
                                                                            "maxReplicas": 3}}})
    assert not [o for o in render({}) if o["kind"] == "HorizontalPodAutoscaler"]


def test_the_api_and_the_jaeger_ui_can_be_exposed():
    objects = render(VALUE_SETS["options"])
    svc = find(objects, "Service", f"{FULL}-api")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    ing = find(objects, "Ingress", f"{FULL}-api")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "rides.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULL}-api", "port": {"name": "grpc"}}
    assert "grpc" in {p["name"] for p in svc["spec"]["ports"]}
    jaeger = find(objects, "Ingress", f"{FULL}-jaeger")
    assert jaeger["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == \
        {"name": f"{FULL}-jaeger", "port": {"name": "ui"}}
    assert "ui" in {p["name"] for p in find(objects, "Service", f"{FULL}-jaeger")["spec"]["ports"]}
    assert "needs at least one entry in api.ingress.hosts" in render_error({"api": {"ingress": {"enabled": True}}})
    defaults = render({})
    assert find(defaults, "Service", f"{FULL}-api")["spec"]["type"] == "ClusterIP"
    assert not [o for o in defaults if o["kind"] == "Ingress"]


def test_redis_cluster_nodes_never_share_a_kubernetes_node_by_default():
    sts = find(render(VALUE_SETS["cluster"]), "StatefulSet", CLUSTER)
    (term,) = pod_spec(sts)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selector_matches(term["labelSelector"], pod_labels(sts))
    soft = find(render(VALUE_SETS["options"]), "StatefulSet", CLUSTER)
    (pref,) = pod_spec(soft)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert selector_matches(pref["podAffinityTerm"]["labelSelector"], pod_labels(soft))
    # The user's affinity replaces the preset.
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["redis"]}]}]}}}
    own = find(render(merged(VALUE_SETS["cluster"], {"affinity": mine})), "StatefulSet", CLUSTER)
    assert pod_spec(own)["affinity"] == mine


def test_service_monitor_and_pod_monitor_together_are_refused():
    message = render_error(merged(MONITORING, {"monitoring": {"podMonitor": {"enabled": True}}}))
    assert "enable one of them" in message and "twice" in message


def test_the_alerts_select_this_release_by_namespace_and_pod_alone():
    rule = find(render(VALUE_SETS["monitoring"]), "PrometheusRule", FULL)
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"] if g["name"] == "rocket-rides.log"]
    assert exprs and not any("rocket_rides_release" in e for e in exprs)
    pods = re.search(r'pod=~"([^"]+)"', exprs[0]).group(1)
    pattern = re.compile(pods.replace("\\\\", "\\"))
    for ours in (f"{FULL}-api-5f6d4b-a1b2c", f"{FULL}-streamer-7c9d8f-x1x1x", f"{FULL}-history-6b7f5c-h1h1h",
                 f"{FULL}-consumer-totals-a-0", f"{FULL}-consumer-totals-b-12"):
        assert pattern.fullmatch(ours), ours
    for theirs in ("other-rocket-rides-api-5f6d4b-a1b2c", f"{FULL}-postgresql-0", f"{FULL}-consumer-audit-0",
                   f"{FULL}-jaeger-5f6d4b-a1b2c"):
        assert not pattern.fullmatch(theirs), theirs


def test_the_chart_readme_gives_each_values_default():
    """The README's default column is values.yaml's value (strings bare, "" when empty, JSON
    for lists and maps)."""
    def leaves(v, path=""):
        if isinstance(v, dict) and v and not path.endswith(("resources", "labels", "Context")):
            for k, x in v.items():
                yield from leaves(x, f"{path}.{k}" if path else k)
        else:
            yield path, v

    def shown(v):
        if v is None or isinstance(v, bool):
            return json.dumps(v)
        if isinstance(v, str):
            return v or '""'
        return str(v) if isinstance(v, (int, float)) else json.dumps(v)
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `(.*?)` \|", readme, re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    wrong = [(path, rows.get(path), shown(v)) for path, v in leaves(values) if rows.get(path) != shown(v)]
    assert not wrong, wrong
