"""The Helm chart, checked without a cluster: linted and rendered by the real Helm SDK,
every object validated against the Kubernetes schemas, then the things a schema cannot see."""

import copy
import pathlib
import re
import shutil
import subprocess
import sys

import helm_python
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "rocket-rides"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "demo", "rides"

VALUE_SETS = {
    "default": {},
    "external": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "rides-db", "urlKey": "url"},
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "rides-redis"},
        "chaos": {"enabled": False},
        "jaeger": {"enabled": False},
        "tracing": {"otlpEndpoint": "http://collector.observability:4317"},
    },
    "hardened": {
        "networkPolicy": {"enabled": True},
        "consumer": {"groups": [{"name": "totals", "replicas": 3}, {"name": "audit", "replicas": 1}]},
        "streamer": {"replicas": 2},
        "simulator": {"enabled": False},
        "failureSimulation": {"doubleSendRate": 0, "crashRate": 0},
    },
    "single": {"api": {"replicas": 1}, "consumer": {"groups": [{"name": "totals", "replicas": 1}]},
               "chaos": {"dryRun": True}},
    "cluster": {
        "redis": {"cluster": {"enabled": True}},
        "networkPolicy": {"enabled": True},
        "chaos": {"targetRedisCluster": True},
    },
}

WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
DEFAULT_GROUPS = [{"name": "totals-a", "replicas": 2}, {"name": "totals-b", "replicas": 2}]


def render(values, release=RELEASE):
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    objects = []
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        objects += [o for o in yaml.safe_load_all(text) if o]
    return objects


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param])


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
    result = helm_python.lint(str(CHART), VALUE_SETS[name], strict=True, namespace=NAMESPACE,
                              kube_version=f"v{KUBE_VERSION}")
    assert result["errors"] == []
    problems = [m for m in result["messages"] if m["severity"] >= 2]
    assert problems == []


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    _, objects = rendered
    assert objects
    for obj in objects:
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
    _, objects = rendered
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
                                                 values.get("externalRedis", {})) if v.get("existingSecret")}
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
    for obj in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        name = obj["metadata"]["name"]
        if obj["spec"].get("replicas", 1) > 1:
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
        assert svc["spec"]["ports"] == [{"name": "grpc", "port": 50052, "targetPort": "grpc",
                                         "appProtocol": "grpc"}]
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
            chart.render({"consumer": {"groups": groups}}, name=RELEASE, namespace=NAMESPACE, is_install=True)
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
import json, os, pathlib, sys
state = pathlib.Path(os.environ["STATE"])
address, method = sys.argv[-2:]
with open(state / "calls", "a") as calls:
    calls.write(f"{{address}} {{method}}\\n")
if method.endswith("/CreateRide"):
    (state / "created").touch()
    print(json.dumps({{"id": "1"}}, indent=2))
    sys.exit(0)
host = address.split(":")[0]
if host in os.environ.get("DOWN", "").split():
    sys.exit("connection refused")
counted = (state / "created").exists() and host not in os.environ.get("DEAF", "").split()
# As GetTotal answers: the consumer's fields first, then each partition's, which never change here.
print(json.dumps({{"totalDistance": 10, "rideCount": str(7 + counted),
                  "partitions": [{{"partition": 0, "rideCount": "3"}}, {{"partition": 1, "rideCount": "4"}}]}},
                 indent=2))
"""


def run_helm_test(tmp_path, values, **env):
    script = helm_test_script(render(values))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "grpcurl"
    fake.write_text(FAKE_GRPCURL.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    out = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(state), **env})
    return out, (state / "calls").read_text().splitlines()


def test_the_helm_test_passes_once_every_logical_consumer_counted_the_ride(tmp_path):
    out, calls = run_helm_test(tmp_path, VALUE_SETS["hardened"])
    assert out.returncode == 0, out.stderr
    for group in ("totals", "audit"):
        assert f"{consumer_name(group)}:50052 counted it" in out.stdout
        assert f"{consumer_name(group)}:50052 rocketrides.v1.ConsumerService/GetTotal" in calls
    assert calls.count(f"{RELEASE}-rocket-rides-api:50051 rocketrides.v1.RideService/CreateRide") == 1


@pytest.mark.parametrize("env", [{"DEAF": consumer_name("audit")}, {"DOWN": consumer_name("audit")}])
def test_the_helm_test_fails_when_a_logical_consumer_does_not_count_the_ride(tmp_path, env):
    values = copy.deepcopy(VALUE_SETS["hardened"])
    values["tests"] = {"timeoutSeconds": 2}
    out, _ = run_helm_test(tmp_path, values, **env)
    assert out.returncode == 1
    assert f"{consumer_name('totals')}:50052 counted it" in out.stdout
    assert f"{consumer_name('audit')}:50052 did not count the ride in time" in out.stdout


def test_chaos_role_grants_only_listing_and_deleting_pods():
    objects = render({})
    role = find(objects, "Role", f"{RELEASE}-rocket-rides-chaos")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]}]
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    binding = find(objects, "RoleBinding", f"{RELEASE}-rocket-rides-chaos")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    cron = find(objects, "CronJob", f"{RELEASE}-rocket-rides-chaos")
    spec = pod_spec(cron)
    assert spec["serviceAccountName"] == binding["subjects"][0]["name"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["DRY_RUN"] == "false" and env["GRACE_PERIOD_SECONDS"] == "0"
    # Its selector reaches the app's pods, and only those of this release.
    selector = dict(kv.split("=") for kv in env["TARGET_SELECTOR"].split(","))
    targets = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
               and selector.items() <= pod_labels(o).items()]
    assert {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in targets} == \
        {"api", "consumer", "simulator", "streamer"}
    assert all(s in targets for s in consumer_statefulsets(objects))


def test_network_policies_admit_only_the_clients_of_postgres_and_redis():
    objects = render(VALUE_SETS["hardened"])
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "Job"}]
    for dep, port, clients in (("postgresql", 5432, {"api", "streamer", "consumer", "migrations"}),
                               ("redis", 6379, {"streamer", "consumer"})):
        rule = policies[f"{RELEASE}-rocket-rides-{dep}"]["spec"]["ingress"][0]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        allowed = rule["from"][0]["podSelector"]["matchLabels"]
        admitted = {w["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads
                    if allowed.items() <= pod_labels(w).items()}
        assert admitted == clients, dep
    assert not any(o["kind"] == "NetworkPolicy" for o in render({}))


def test_defaults_wire_postgres_redis_jaeger_and_failure_simulation():
    objects = render({})
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    for expected in [("StatefulSet", "demo-rocket-rides-postgresql"), ("StatefulSet", "demo-rocket-rides-redis"),
                     ("Deployment", "demo-rocket-rides-jaeger"), ("Job", "demo-rocket-rides-migrations"),
                     ("CronJob", "demo-rocket-rides-chaos"), ("Pod", "demo-rocket-rides-test-create-ride")]:
        assert expected in kinds
    redis = find(objects, "StatefulSet", "demo-rocket-rides-redis")
    command = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    api_env = {e["name"]: e for e in containers(find(objects, "Deployment", "demo-rocket-rides-api"), init=False)[0]["env"]}
    assert api_env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://demo-rocket-rides-jaeger:4317"
    assert api_env["OTEL_SERVICE_NAME"]["value"] == "rocket-rides-api"
    streamer_env = {e["name"]: e for e in containers(find(objects, "Deployment", "demo-rocket-rides-streamer"), init=False)[0]["env"]}
    assert streamer_env["DOUBLE_SEND_RATE"]["value"] == "0.1"
    migrations = find(objects, "Job", "demo-rocket-rides-migrations")
    assert pod_spec(migrations)["containers"][0]["command"] == ["rocket-rides-api", "migrate"]
    assert "pre-upgrade" in migrations["metadata"]["annotations"]["helm.sh/hook"]
    secret = find(objects, "Secret", "demo-rocket-rides-postgresql")
    assert {"password", "database-url"} <= secret["data"].keys()
    external = render(VALUE_SETS["external"])
    assert not any(o["kind"] == "Secret" for o in external)
    hook = find(external, "Job", "demo-rocket-rides-migrations")["metadata"]["annotations"]["helm.sh/hook"]
    assert hook == "pre-install,pre-upgrade"


CLUSTER = f"{RELEASE}-rocket-rides-redis-cluster"


def cluster_nodes(n):
    return [f"{CLUSTER}-{i}.{CLUSTER}-headless:6379" for i in range(n)]


def redis_env(objects):
    """REDIS_* of the streamer and of every consumer group, by workload."""
    apps = [find(objects, "Deployment", f"{RELEASE}-rocket-rides-streamer")] + consumer_statefulsets(objects)
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
                 "--cluster-preferred-endpoint-type hostname"):
        assert flag in args, flag
    # The start script hands the arguments on to Redis.
    assert redis["command"][:2] == ["sh", "-ec"] and redis["command"][2].rstrip().endswith('exec "$@"')
    assert {p["containerPort"] for p in redis["ports"]} == {6379, 16379}
    assert pod_spec(sts)["securityContext"]["runAsUser"] == 999
    # Defaults leave the single Redis as it was.
    defaults = render({})
    assert find(defaults, "StatefulSet", f"{RELEASE}-rocket-rides-redis")["spec"]["replicas"] == 1
    assert not [o for o in defaults if o["metadata"]["name"].startswith(CLUSTER)]
    for env in redis_env(defaults).values():
        assert env == {"REDIS_URL": f"redis://{RELEASE}-rocket-rides-redis:6379"}


def test_redis_cluster_bootstrap_job_creates_the_cluster_over_every_node_once():
    objects = render(VALUE_SETS["cluster"])
    job = find(objects, "Job", f"{CLUSTER}-bootstrap")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"].split(",")
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
    script = containers(find(bigger, "Job", f"{CLUSTER}-bootstrap"))[0]["args"][0]
    assert " ".join(cluster_nodes(12)) + " --cluster-replicas 2 --cluster-yes" in script


def test_streamer_and_consumers_reach_every_cluster_node():
    for name, env in redis_env(render(VALUE_SETS["cluster"])).items():
        assert env["REDIS_URL"].split(",") == [f"redis://{n}" for n in cluster_nodes(6)], name
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
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
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


def test_network_policy_admits_clients_and_the_cluster_bus_between_nodes():
    objects = render(VALUE_SETS["cluster"])
    policy = find(objects, "NetworkPolicy", CLUSTER)
    workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "Job"}]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(find(objects, "StatefulSet", CLUSTER)).items()

    def admitted(rule):
        allowed = rule["from"][0]["podSelector"]["matchLabels"]
        return {w["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads
                if allowed.items() <= pod_labels(w).items()}

    clients, peers = policy["spec"]["ingress"]
    assert clients["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert admitted(clients) == {"streamer", "consumer", "redis-cluster-bootstrap"}
    assert peers["ports"] == [{"port": 6379, "protocol": "TCP"}, {"port": 16379, "protocol": "TCP"}]
    assert admitted(peers) == {"redis-cluster"}


@pytest.mark.parametrize("target", [False, True])
def test_chaos_reaches_redis_cluster_nodes_only_when_asked(target):
    objects = render({"redis": {"cluster": {"enabled": True}}, "chaos": {"targetRedisCluster": target}})
    env = {e["name"]: e.get("value") for e in pod_spec(find(objects, "CronJob", f"{RELEASE}-rocket-rides-chaos"))["containers"][0]["env"]}
    selector = dict(kv.split("=") for kv in env["TARGET_SELECTOR"].split(","))
    targets = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects
               if o["kind"] in {"Deployment", "StatefulSet"} and selector.items() <= pod_labels(o).items()}
    assert targets == {"api", "consumer", "simulator", "streamer"} | ({"redis-cluster"} if target else set())


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
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)["rocket-rides/templates/NOTES.txt"]
    chart.close()
    for needle in ("port-forward svc/demo-rocket-rides-api 50051:50051",
                   "rocketrides.v1.RideService/CreateRide",
                   "rocketrides.v1.ConsumerService/GetTotal",
                   "port-forward svc/demo-rocket-rides-consumer-totals-a 50052:50052",
                   "totals-a (2 instances", "totals-b (2 instances",
                   "port-forward svc/demo-rocket-rides-jaeger 16686:16686"):
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
])
def test_the_schema_rejects_bad_values(bad):
    chart = helm_python.Chart.load(str(CHART))
    try:
        with pytest.raises(helm_python.HelmError):
            chart.render(copy.deepcopy(bad), name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()


def test_external_database_without_a_secret_is_a_clear_error():
    chart = helm_python.Chart.load(str(CHART))
    try:
        with pytest.raises(helm_python.HelmError, match=re.compile("existingSecret is required")):
            chart.render({"postgresql": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
