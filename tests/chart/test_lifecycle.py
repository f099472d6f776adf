"""The chart over time and in the cluster: upgrades from every released version (rendered from
git), the version and changelog that go with every change of content, the order in which Helm,
Flux and Argo CD apply it, and the checks that compare the values with the live objects (fed
fixtures in place of a cluster, which this machine does not run)."""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess

import helm_python
import pytest
import yaml

from test_chart import (CHART, FULL, NAMESPACE, RELEASE, VALUE_SETS, NO_AUTH, containers, find,
                        merged, pod_spec, render, with_auth)

REPO = CHART.parents[1]
CHART_PATH = CHART.relative_to(REPO).as_posix()
CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())


def git(*args):
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr} (these tests need the repository's history)"
    return out.stdout


def released():
    """{version: commit} for every chart version in git history but the current one: the last
    commit carrying it, i.e. what its users last got."""
    versions = {}
    for commit in git("log", "--format=%H", "HEAD", "--", CHART_PATH).split():
        chart = git("show", f"{commit}:{CHART_PATH}/Chart.yaml")
        versions.setdefault(yaml.safe_load(chart)["version"], commit)
    versions.pop(CHART_YAML["version"], None)
    return versions


def semver(v):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", v).groups())


def major(v):
    """The compatibility-breaking component: the leftmost non-zero one (0.2.x -> 0.3.0 breaks,
    as Cargo and npm's caret count it)."""
    parts = semver(v)
    return next(((i, p) for i, p in enumerate(parts) if p), (2, parts[2]))


@pytest.fixture(scope="module")
def old_charts(tmp_path_factory):
    """Each released version's chart directory, extracted from git."""
    out = {}
    for version, commit in released().items():
        root = tmp_path_factory.mktemp(f"chart-{version}")
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, CHART_PATH], capture_output=True,
                                 check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=60)
        out[version] = root / CHART_PATH
    return out


def render_chart(path, values, **opts):
    chart = helm_python.Chart.load(str(path))
    try:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, **opts)
    finally:
        chart.close()
    return [o for p, t in files.items() if p.endswith(".yaml") for o in yaml.safe_load_all(t) if o]


def is_hook(obj):
    return "helm.sh/hook" in obj["metadata"].get("annotations", {})


def hooks(obj):
    return set(obj["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")) - {""}


# ---- Upgrades

# What Kubernetes refuses to change in place, by kind (of objects Helm keeps across releases;
# hooks are deleted and created anew).
IMMUTABLE = {
    "StatefulSet": ("serviceName", "selector", "volumeClaimTemplates", "podManagementPolicy"),
    "Deployment": ("selector",),
    "Job": ("selector", "template"),
}


def immutable_changes(old, new):
    """[(kind, name, field)] that an upgrade from `old` to `new` objects would have to change."""
    before = {(o["kind"], o["metadata"]["name"]): o for o in old if not is_hook(o)}
    changes = []
    for o in new:
        key = (o["kind"], o["metadata"]["name"])
        if key not in before or is_hook(o):
            continue
        for field in IMMUTABLE.get(o["kind"], ()):
            if before[key]["spec"].get(field) != o["spec"].get(field):
                changes.append((*key, field))
        if o["kind"] == "Service" and (before[key]["spec"].get("clusterIP") == "None") != \
                (o["spec"].get("clusterIP") == "None"):
            changes.append((*key, "clusterIP"))
    return changes


UPGRADE_VALUES = {"default": {}, "cluster": {"redis": {"cluster": {"enabled": True}}},
                  "external": VALUE_SETS["external"]}


def upgrade_notes():
    readme = (CHART / "README.md").read_text()
    return readme[readme.index("## Upgrading"):readme.index("## Values")]


def test_the_released_versions_are_found_in_git():
    versions = released()
    # 0.1.0, and the last of the contents that shipped as 0.2.0.
    assert {"0.1.0", "0.2.0"} <= set(versions), versions
    assert semver(CHART_YAML["version"]) > max(semver(v) for v in versions)


@pytest.mark.parametrize("values", sorted(UPGRADE_VALUES))
def test_an_upgrade_from_each_released_version_changes_no_immutable_field_unannounced(old_charts, values):
    notes = upgrade_notes()
    current = render_chart(CHART, UPGRADE_VALUES[values], is_upgrade=True)
    checked = 0
    for version, path in sorted(old_charts.items()):
        try:
            old = render_chart(path, UPGRADE_VALUES[values], is_install=True)
        except helm_python.HelmError as e:
            # An old chart that did not have the option (or refuses these values) has no
            # release to upgrade with them.
            assert "values don't meet the specifications" in str(e) or "required" in str(e), (version, e)
            continue
        checked += 1
        for kind, name, field in immutable_changes(old, current):
            # Allowed only by a major version and a note that says what to run for that object.
            assert major(CHART_YAML["version"]) != major(version), \
                f"{kind} {name}: {field} changes from {version} without a major version"
            templated = name.replace(RELEASE, "<release>", 1)
            assert templated in notes and "--cascade=orphan" in notes and f"From {version}" in notes, \
                f"README.md 'Upgrading' must say what to run for {kind} {name} ({field}) from {version}"
    assert checked, "no released version rendered with these values"


def test_the_upgrade_check_sees_a_changed_service_name(old_charts):
    """It can fail: 0.1.0 -> now changes the Postgres and Redis StatefulSets' serviceName."""
    old = render_chart(old_charts["0.1.0"], {}, is_install=True)
    changes = immutable_changes(old, render_chart(CHART, {}, is_upgrade=True))
    assert ("StatefulSet", f"{FULL}-postgresql", "serviceName") in changes
    assert ("StatefulSet", f"{FULL}-redis", "serviceName") in changes
    # And not from the last 0.2.0: nothing to announce there.
    assert immutable_changes(render_chart(old_charts["0.2.0"], with_auth({}), is_install=True),
                             render_chart(CHART, with_auth({}), is_upgrade=True)) == []


# ---- Versions and changelog

def content_digest(files):
    """sha256 over the chart's files (path and bytes), CHANGELOG.md aside."""
    h = hashlib.sha256()
    for path, data in sorted(files.items()):
        if path != "CHANGELOG.md":
            h.update(path.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def tree_files():
    return {p.relative_to(CHART).as_posix(): p.read_bytes() for p in CHART.rglob("*") if p.is_file()}


def git_files(ref):
    names = git("ls-tree", "-r", "--name-only", ref, "--", CHART_PATH).split()
    out = {}
    for name in names:
        data = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{name}"], capture_output=True,
                              check=True, timeout=60).stdout
        out[name[len(CHART_PATH) + 1:]] = data
    return out


def base_ref():
    """What the chart is compared with: RR_CHART_BASE, else where this branch left main (as
    chart-testing compares with the target branch), else HEAD (on main itself)."""
    if os.environ.get("RR_CHART_BASE"):
        return os.environ["RR_CHART_BASE"]
    try:
        return git("merge-base", "HEAD", "main").strip()
    except AssertionError:
        return "HEAD"


def test_a_change_of_the_charts_content_changes_its_version():
    base = base_ref()
    old = git_files(base)
    old_version = yaml.safe_load(old["Chart.yaml"])["version"]
    if content_digest(old) != content_digest(tree_files()):
        assert semver(CHART_YAML["version"]) > semver(old_version), \
            f"the chart changed since {base[:12]} but its version is still {old_version}: bump it in Chart.yaml, " \
            "CHANGELOG.md and artifacthub.io/changes"


def test_each_version_superseded_in_git_shipped_one_content():
    """From 0.3.0 on (0.2.0 shipped three contents, which is how this rule came about)."""
    seen = {}
    for commit in git("log", "--format=%H", "HEAD", "--", CHART_PATH).split():
        files = git_files(commit)
        version = yaml.safe_load(files["Chart.yaml"])["version"]
        if version == CHART_YAML["version"] or semver(version) < (0, 3, 0):
            continue
        seen.setdefault(version, set()).add(content_digest(files))
    assert all(len(d) == 1 for d in seen.values()), seen


def test_the_changelog_and_artifact_hub_record_this_version():
    version = CHART_YAML["version"]
    changelog = (CHART / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (\S+)", changelog, re.M)
    assert headings[0] == version, "CHANGELOG.md must start with this version"
    assert headings == sorted(headings, key=semver, reverse=True)
    changes = yaml.safe_load(CHART_YAML["annotations"]["artifacthub.io/changes"])
    assert changes and all(c["kind"] in {"added", "changed", "deprecated", "removed", "fixed", "security"}
                           and c["description"] for c in changes)
    for key in ("icon", "maintainers"):
        assert CHART_YAML.get(key), key


# ---- Install order: what `helm install --wait`, Flux and Argo CD do before what.

def referenced(spec):
    """(Secret names, ConfigMap names) a pod spec needs to start."""
    secrets, configmaps = set(), set()
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
            if "configMapKeyRef" in ref:
                configmaps.add(ref["configMapKeyRef"]["name"])
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                secrets.add(src["secretRef"]["name"])
            if "configMapRef" in src:
                configmaps.add(src["configMapRef"]["name"])
    for v in spec.get("volumes", []):
        if "secret" in v:
            secrets.add(v["secret"]["secretName"])
        if "configMap" in v:
            configmaps.add(v["configMap"]["name"])
    return secrets, configmaps


def generated_by_jobs(objects):
    """Secret names that the release's Jobs create (rocket-rides-secrets ensure --name=...)."""
    return {a.removeprefix("--name=") for o in objects if o["kind"] == "Job"
            for c in containers(o) if c.get("command") == ["rocket-rides-secrets"]
            for a in c.get("args", []) if a.startswith("--name=")}


def install_order_problems(objects):
    """What `helm install --wait` (and Flux, Argo CD) would never get past, or apply in the
    wrong order, as sentences."""
    problems = []
    waited = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}]
    # A post-install/post-upgrade hook runs only after `--wait` saw every workload ready, and
    # Argo CD runs it as PostSync: nothing a workload needs may be one.
    for o in objects:
        late = hooks(o) & {"post-install", "post-upgrade"}
        if late:
            problems.append(f"{o['kind']} {o['metadata']['name']} runs as {sorted(late)}")
    rendered_secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret" and not is_hook(o)}
    rendered_configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap" and not is_hook(o)}
    hook_made = {o["metadata"]["name"] for o in objects if o["kind"] in {"Secret", "ConfigMap"} and is_hook(o)}
    hook_made |= generated_by_jobs([o for o in objects if is_hook(o)])
    by_jobs = generated_by_jobs([o for o in objects if not is_hook(o)])
    for w in waited:
        secrets, configmaps = referenced(pod_spec(w))
        # Whatever a waited-on pod mounts comes from the release itself (rendered, or made by
        # a plain Job that runs alongside) or from the user, never from a hook.
        for s in sorted((secrets | configmaps) & hook_made):
            problems.append(f"{w['metadata']['name']} needs {s}, which only a hook makes")
        for s in sorted(secrets - rendered_secrets - by_jobs - hook_made):
            if s in {f"{FULL}-postgresql", f"{FULL}-redis"}:
                problems.append(f"{w['metadata']['name']} needs {s}, which nothing in the release makes")
    # Pre-install hooks run before any object of the release exists: they may only use what the
    # user made.
    release_made = rendered_secrets | rendered_configmaps | by_jobs
    for o in objects:
        if {"pre-install"} & hooks(o) and o["kind"] in {"Job", "Pod"}:
            secrets, configmaps = referenced(pod_spec(o))
            for s in sorted((secrets | configmaps) & release_made):
                problems.append(f"pre-install hook {o['metadata']['name']} needs {s}, made only later")
    return problems


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_nothing_readiness_needs_waits_for_a_hook(name):
    objects = render(VALUE_SETS[name], auth=name not in NO_AUTH)
    assert [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    assert install_order_problems(objects) == []


def test_the_install_order_check_sees_a_secret_only_a_hook_makes():
    """It can fail: the generated-secrets Job made a post-install hook (as some charts do)."""
    objects = render({}, auth=False)
    for o in objects:
        if o["kind"] == "Job" and o["metadata"]["name"].startswith(f"{FULL}-generated-secrets"):
            o["metadata"].setdefault("annotations", {})["helm.sh/hook"] = "post-install"
    problems = install_order_problems(objects)
    assert any("runs as ['post-install']" in p for p in problems)
    assert f"{FULL}-api needs {FULL}-postgresql, which only a hook makes" in problems
    # And a pre-install hook that needs what the release makes.
    objects = render(VALUE_SETS["external"])
    job = find(objects, "Job", f"{FULL}-migrations")
    pod_spec(job)["volumes"] = [{"name": "x", "configMap": {"name": f"{FULL}-dashboard"}}]
    objects.append({"kind": "ConfigMap", "metadata": {"name": f"{FULL}-dashboard"}})
    assert f"pre-install hook {FULL}-migrations needs {FULL}-dashboard, made only later" in install_order_problems(objects)


def test_an_unformed_redis_cluster_node_is_ready_so_nothing_waits_on_its_bootstrap():
    sts = find(render(VALUE_SETS["cluster"]), "StatefulSet", f"{FULL}-redis-cluster")
    probe = " ".join(containers(sts)[0]["readinessProbe"]["exec"]["command"])
    # A node that knows only itself (before the bootstrap Job ran) is ready; the Job forms the
    # cluster while `--wait` waits for the apps.
    assert "cluster_known_nodes:1" in probe and "cluster_state:ok" in probe


def test_the_install_order_check_catches_the_0_2_0_bootstrap_hook(tmp_path):
    """The check above would have failed on 0.2.0: its bootstrap Job was a post-install hook."""
    old = released()["0.2.0"]
    text = git("show", f"{old}:{CHART_PATH}/templates/redis-cluster.yaml")
    assert "post-install" in text
    (tmp_path / "redis-cluster.yaml").write_text(text)
    chart = copy_chart(tmp_path / "chart")
    shutil.copy(tmp_path / "redis-cluster.yaml", chart / "templates" / "redis-cluster.yaml")
    objects = render_chart(chart, with_auth(VALUE_SETS["cluster"]), is_install=True)
    assert install_order_problems(objects) == [
        f"Job {FULL}-redis-cluster-bootstrap runs as ['post-install', 'post-upgrade']"]


# ---- Checks against the live cluster. The chart reads the cluster in one place
# (templates/_lookup.tpl); these tests replace that file with fixtures, since no cluster runs
# here, and render through the real Helm SDK.

def copy_chart(dest):
    shutil.copytree(CHART, dest)
    return dest


def with_live(tmp_path, live):
    """A copy of the chart whose rr.lookup answers from `live`: {"Kind/name": object}."""
    chart = copy_chart(tmp_path / "chart")
    (chart / "templates" / "_lookup.tpl").write_text(
        '{{- define "rr.lookup" -}}\n'
        '{{- $live := `' + json.dumps(live) + '` | fromJson -}}\n'
        '{{- get $live (printf "%s/%s" .kind .name) | default dict | toJson -}}\n'
        '{{- end }}\n')
    return chart


def render_live(tmp_path, live, values, auth=True):
    return render_chart(with_live(tmp_path, live), with_auth(values, auth), is_upgrade=True)


def live_error(tmp_path, live, values, auth=True):
    with pytest.raises(helm_python.HelmError) as err:
        render_live(tmp_path, live, values, auth)
    return str(err.value)


def live_streamer(partitions):
    return {"spec": {"template": {"spec": {"containers": [
        {"name": "streamer", "env": [{"name": "RUST_LOG", "value": "info"},
                                     {"name": "LOG_PARTITIONS", "value": str(partitions)}]}]}}}}


def test_the_lookup_file_is_the_only_place_the_chart_reads_the_cluster():
    for path in (CHART / "templates").rglob("*"):
        if path.is_file() and path.name != "_lookup.tpl":
            assert "lookup " not in path.read_text().replace("rr.lookup", ""), path


def test_a_changed_log_partition_count_is_refused_before_anything_is_applied(tmp_path):
    live = {f"Deployment/{FULL}-streamer": live_streamer(4)}
    assert render_live(tmp_path / "same", live, {"logPartitions": 4})
    message = live_error(tmp_path / "more", live, {"logPartitions": 8})
    assert "the running log has 4 partitions and this upgrade asks for 8" in message
    assert "Keep logPartitions=4" in message
    # A first install (no streamer yet) takes any count.
    assert render_live(tmp_path / "new", {}, {"logPartitions": 8})


def test_the_pod_disruption_budgets_let_unhealthy_pods_be_evicted():
    pdbs = [o for o in render({}) if o["kind"] == "PodDisruptionBudget"]
    assert pdbs and all(p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for p in pdbs)


def test_another_redis_cluster_shape_is_refused_before_anything_is_applied(tmp_path):
    live = {f"StatefulSet/{FULL}-redis-cluster": {"spec": {"replicas": 6, "serviceName": "x"}}}
    cluster = {"redis": {"cluster": {"enabled": True}}}
    assert render_live(tmp_path / "same", live, cluster)
    message = live_error(tmp_path / "bigger", live, merged(cluster, {"redis": {"cluster": {"masters": 4}}}))
    assert "the running Redis Cluster has 6 nodes" in message and "ask for 8" in message
    assert "redis-cli --cluster add-node" in message


def test_an_upgrade_keeps_the_live_service_name_of_postgres_and_redis(tmp_path):
    live = {f"StatefulSet/{FULL}-postgresql": {"spec": {"serviceName": f"{FULL}-postgresql"}},
            f"StatefulSet/{FULL}-redis": {"spec": {"serviceName": f"{FULL}-redis"}}}
    objects = render_live(tmp_path, live, {})
    assert find(objects, "StatefulSet", f"{FULL}-postgresql")["spec"]["serviceName"] == f"{FULL}-postgresql"
    assert find(objects, "StatefulSet", f"{FULL}-redis")["spec"]["serviceName"] == f"{FULL}-redis"
    # The Services they name are still rendered.
    assert find(objects, "Service", f"{FULL}-postgresql") and find(objects, "Service", f"{FULL}-redis")
    # A new install gets the headless ones.
    fresh = render({})
    assert find(fresh, "StatefulSet", f"{FULL}-postgresql")["spec"]["serviceName"] == f"{FULL}-postgresql-headless"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def test_given_passwords_must_match_the_live_secret(tmp_path):
    """Generated first, given later: Helm adopts the Secret (its ownership metadata, see
    test_chart), and a password other than the one the data was created with is refused."""
    owned = {"labels": {"app.kubernetes.io/managed-by": "Helm"},
             "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}}
    live = {f"Secret/{FULL}-postgresql": {"metadata": owned, "data": {"password": b64("app-secret"),
                                                                      "postgres-password": b64("super-secret")}},
            f"Secret/{FULL}-redis": {"metadata": owned, "data": {"redis-password": b64("redis-secret")}}}
    objects = render_live(tmp_path / "same", live, {})
    secret = find(objects, "Secret", f"{FULL}-postgresql")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    message = live_error(tmp_path / "other", live, {"redis": {"auth": {"password": "another-one"}}})
    assert f"Secret {FULL}-redis already holds another redis-password" in message
    assert f"kubectl get secret {FULL}-redis" in message
    message = live_error(tmp_path / "pg", live, {"postgresql": {"auth": {"password": "changed"}}})
    assert f"Secret {FULL}-postgresql already holds another password" in message


def test_a_secret_without_helms_ownership_is_refused_with_the_commands_to_adopt_it(tmp_path):
    """0.2.0's Job created the Secrets without Helm's metadata: giving the passwords then would
    fail mid-upgrade ("exists and cannot be imported"); the chart refuses first and says how."""
    live = {f"Secret/{FULL}-redis": {"metadata": {"labels": {"rocket-rides/generated-by": RELEASE}},
                                      "data": {"redis-password": b64("redis-secret")}}}
    message = live_error(tmp_path, live, {})
    assert f"Secret {FULL}-redis exists but is not this release's" in message
    assert f"kubectl -n {NAMESPACE} label secret {FULL}-redis app.kubernetes.io/managed-by=Helm" in message
    assert f"meta.helm.sh/release-name={RELEASE} meta.helm.sh/release-namespace={NAMESPACE}" in message
    # Another release's Secret of the same name is not ours either.
    other = {"labels": {"app.kubernetes.io/managed-by": "Helm"},
             "annotations": {"meta.helm.sh/release-name": "other", "meta.helm.sh/release-namespace": NAMESPACE}}
    live[f"Secret/{FULL}-redis"]["metadata"] = other
    assert "is not this release's" in live_error(tmp_path / "other", live, {})


# ---- The Redis Cluster's bootstrap Job and readiness, run against real Redis cluster nodes.

@pytest.fixture
def cluster_nodes(tmp_path, free_port):
    """Six real redis-server nodes in cluster mode, not yet a cluster, with a password."""
    assert shutil.which("redis-server"), "Redis is missing: run `make deps`"
    ports, servers = [], []
    while len(ports) < 6:
        # The cluster bus listens on port + 10000: that one must be free too.
        port = free_port("127.0.0.1")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port + 10000)) != 0:
                ports.append(port)
    try:
        for port in ports:
            servers.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(tmp_path), "--save", "",
                 "--requirepass", "pw", "--masterauth", "pw"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield ports
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=30)


def redis_shim(tmp_path, port):
    """PATH with a redis-cli that talks to `port`: the probes' `redis-cli` means this pod's own
    node (127.0.0.1:6379 in the pod)."""
    real = shutil.which("redis-cli")
    bin_dir = tmp_path / f"bin-{port}"
    bin_dir.mkdir()
    (bin_dir / "redis-cli").write_text(f'#!/bin/sh\nexec {real} -p {port} "$@"\n')
    (bin_dir / "redis-cli").chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def probe_passes(sts, kind, tmp_path, port):
    command = containers(sts, init=False)[0][kind]["exec"]["command"]
    shim = tmp_path / f"bin-{port}"
    env = {"PATH": f"{shim}:/usr/bin:/bin" if shim.exists() else redis_shim(tmp_path, port), "REDISCLI_AUTH": "pw"}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0


def bootstrap_script(values, ports):
    objects = render(values)
    (job,) = [o for o in objects if o["kind"] == "Job" and "-redis-cluster-bootstrap-" in o["metadata"]["name"]]
    script = containers(job)[0]["args"][0]
    # The nodes' DNS names (<pod>.<headless service>:6379) as this machine reaches them.
    for i, port in enumerate(ports):
        script = script.replace(f"{FULL}-redis-cluster-{i}.{FULL}-redis-cluster-headless:6379", f"127.0.0.1:{port}")
    assert "redis-cluster-headless" not in script
    return script


def test_the_bootstrap_job_forms_the_cluster_once_and_nodes_are_ready_before_it(cluster_nodes, tmp_path):
    cluster = merged(VALUE_SETS["cluster"], {})
    sts = find(render(cluster), "StatefulSet", f"{FULL}-redis-cluster")
    # Not yet a cluster: every node is ready (nothing that --wait waits for needs the Job first).
    for port in cluster_nodes:
        assert probe_passes(sts, "readinessProbe", tmp_path, port) and probe_passes(sts, "livenessProbe", tmp_path, port)
    env = {"PATH": "/usr/bin:/bin", "REDISCLI_AUTH": "pw"}
    run = lambda script: subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=120)
    formed = run(bootstrap_script(cluster, cluster_nodes))
    assert formed.returncode == 0, formed.stdout + formed.stderr
    assert "the cluster stands: 6 nodes, cluster_state:ok on each" in formed.stdout
    info = subprocess.run(["redis-cli", "-p", str(cluster_nodes[0]), "cluster", "info"], env=env,
                          capture_output=True, text=True, timeout=30).stdout
    assert "cluster_slots_assigned:16384" in info and "cluster_size:3" in info
    for port in cluster_nodes:
        assert probe_passes(sts, "readinessProbe", tmp_path, port)
    # Run again (every upgrade, or a Job re-created): nothing to do.
    again = run(bootstrap_script(cluster, cluster_nodes))
    assert again.returncode == 0 and "already stands" in again.stdout, again.stdout + again.stderr
    # Another shape: the Job refuses, saying what to do.
    smaller = merged(cluster, {"redis": {"cluster": {"masters": 5, "replicasPerMaster": 0}}})
    refused = run(bootstrap_script(smaller, cluster_nodes[:5]))
    assert refused.returncode == 1 and "redis-cli --cluster add-node" in refused.stderr
