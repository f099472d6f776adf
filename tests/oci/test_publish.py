"""Publishing: the image (`make image-debug`) and the packaged chart go to an OCI registry and
come back intact. The registry is Debian's docker-registry (the CNCF distribution), run here on
a loopback port with its storage in a temporary directory; the image is pushed and pulled with
podman, the chart with the Helm SDK (as `helm push`/`helm pull` do, Helm's media types), and
both are checked through the registry's own HTTP API (OCI distribution spec)."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request

import helm_python
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rocket-rides"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"]
VERSION = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(),
                    re.M | re.S).group(1)
IMAGE = f"localhost/rocket-rides-log:{VERSION}-debug"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def podman(*args, timeout=600):
    out = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"podman {' '.join(args[:2])}: {out.stderr}"
    return out.stdout


def get(url, accept=None):
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers, response.read()


@pytest.fixture(scope="module")
def registry(free_port):
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: run `make deps` (Debian's docker-registry)"
    root = pathlib.Path(tempfile.mkdtemp(prefix="rr-oci-"))
    port = free_port("127.0.0.1")
    config = {"version": 0.1, "log": {"level": "warn"},
              "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=open(root / "log", "w"),
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            get(f"http://127.0.0.1:{port}/v2/")
            break
        except OSError:
            assert server.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "the registry did not answer /v2/ within 30 s"
            time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_the_image_is_pushed_and_pulled_back_intact(registry, tmp_path):
    archive = os.environ.get("ROCKET_RIDES_IMAGE_ARCHIVE") or str(REPO / "target" / "image" / "rocket-rides-log-debug.oci.tar")
    assert os.path.exists(archive), f"{archive} is missing: run `make image-debug`"
    subprocess.run(["bash", str(REPO / "deploy" / "image" / "containers-conf.sh")], check=True, timeout=60)
    podman("load", "-q", "-i", archive)
    image_id = json.loads(podman("image", "inspect", IMAGE))[0]["Id"]
    remote = f"{registry}/rocket-rides-log:{VERSION}-debug"
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--format", "oci", "--digestfile", str(digestfile), IMAGE, f"docker://{remote}")
    pushed = digestfile.read_text().strip()
    # The registry serves that manifest under the tag, and every blob it names.
    headers, body = get(f"http://{registry}/v2/rocket-rides-log/manifests/{VERSION}-debug", OCI_MANIFEST)
    assert headers["Docker-Content-Digest"] == pushed == "sha256:" + hashlib.sha256(body).hexdigest()
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    for blob in [manifest["config"], *manifest["layers"]]:
        _, data = get(f"http://{registry}/v2/rocket-rides-log/blobs/{blob['digest']}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"] and len(data) == blob["size"]
    config = json.loads(get(f"http://{registry}/v2/rocket-rides-log/blobs/{manifest['config']['digest']}")[1])
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION
    # Pulled back under another name: the same image (its config digest is the image id).
    copy = f"localhost/rocket-rides-log-pulled:{VERSION}-debug"
    podman("pull", "--tls-verify=false", "-q", f"docker://{remote}")
    podman("tag", f"{remote}", copy)
    try:
        assert json.loads(podman("image", "inspect", copy))[0]["Id"] == image_id
        assert manifest["config"]["digest"] == f"sha256:{image_id}"
    finally:
        subprocess.run([*PODMAN, "rmi", "-f", copy, remote], capture_output=True, timeout=120)


def test_the_chart_is_pushed_as_an_oci_artifact_and_pulled_back_intact(registry, tmp_path):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    packaged = pathlib.Path(helm_python.package(str(CHART), destination=str(tmp_path)))
    assert packaged.name == f"rocket-rides-{chart['version']}.tgz"
    client = helm_python.RegistryClient(plain_http=True, credentials_file=str(tmp_path / "registry.json"))
    try:
        client.push(str(packaged), f"oci://{registry}/charts", plain_http=True)
        # Helm's media types, as the registry stores them.
        headers, body = get(f"http://{registry}/v2/charts/rocket-rides/manifests/{chart['version']}", OCI_MANIFEST)
        manifest = json.loads(body)
        assert manifest["config"]["mediaType"] == HELM_CONFIG
        (layer,) = [layer for layer in manifest["layers"] if layer["mediaType"] == HELM_CHART]
        assert layer["digest"] == "sha256:" + hashlib.sha256(packaged.read_bytes()).hexdigest()
        config = json.loads(get(f"http://{registry}/v2/charts/rocket-rides/blobs/{manifest['config']['digest']}")[1])
        assert (config["name"], config["version"], config["appVersion"]) == \
            ("rocket-rides", chart["version"], chart["appVersion"])
        assert client.tags(f"oci://{registry}/charts/rocket-rides") == [chart["version"]]
        assert client.resolve(f"oci://{registry}/charts/rocket-rides:{chart['version']}")["digest"] == \
            headers["Docker-Content-Digest"]
        # Pulled back: the very archive, which loads and renders.
        back = tmp_path / "pulled"
        back.mkdir()
        client.pull(f"oci://{registry}/charts/rocket-rides", version=chart["version"], destination=str(back),
                    plain_http=True)
        pulled = back / packaged.name
        assert pulled.read_bytes() == packaged.read_bytes()
        with tarfile.open(pulled) as tar:
            names = tar.getnames()
        assert "rocket-rides/Chart.yaml" in names and "rocket-rides/CHANGELOG.md" in names
        loaded = helm_python.Chart.load_archive(pulled.read_bytes())
        try:
            assert loaded.version == chart["version"]
            files = loaded.render({"postgresql": {"auth": {"password": "a", "postgresPassword": "b"}},
                                   "redis": {"auth": {"password": "c"}}}, name="oci", namespace="rides",
                                  is_install=True)
            assert "rocket-rides/templates/api.yaml" in files
        finally:
            loaded.close()
    finally:
        client.close()
