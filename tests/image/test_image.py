"""The exporter's image, built here by tests/image/build.sh (no registry), run under the private podman.

What a user runs after `helm install`: the image must start as the non-root uid the chart expects, with a
read-only root filesystem, and probe and serve. What was mounted into its build (the host's trust store and
pip configuration, needed to reach PyPI here) must not be in any layer: proven by hashing every file of every
layer, and by showing that the image's CA bundle is exactly the one Debian's ca-certificates package
generates from its own certificates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.conftest import Servers
from tests.image import layers
from tests.image.podman import BUILD_SECONDS, ROOT, Images
from tests.servers import free_port

pytestmark = pytest.mark.timeout(BUILD_SECONDS + 300)

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONFS = [Path(p) for p in (os.environ.get("PIP_CONFIG_FILE") or "/etc/pip.conf",)]
NONROOT = 65532


def chart_default_image() -> str:
    chart = ROOT / "deploy" / "helm" / "admission-webhook-exporter"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values['image']['repository']}:{values['image']['tag'] or app_version}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pem_certificates(bundle: bytes) -> set[bytes]:
    """The DER of every certificate in a PEM bundle (comments and line wrapping do not matter)."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", bundle, re.S)
    return {base64.b64decode(b"".join(block.split())) for block in blocks}


@pytest.fixture
def containers(images: Images) -> Iterator[list[str]]:
    """Names of containers a test started; every one is removed at teardown, failed test or not."""
    names: list[str] = []
    yield names
    for name in names:
        images.podman("rm", "--force", "--time", "2", name, check=False)


def test_archives_carry_the_names_the_chart_and_the_node_use(images: Images) -> None:
    assert images.image == chart_default_image()
    tags, layer_names, config = layers.manifest(images.archive)
    assert tags == [images.image]
    assert config["config"]["User"] == f"{NONROOT}:{NONROOT}"
    assert config["config"]["Entrypoint"] == ["admission-webhook-exporter"]
    assert len(layer_names) >= 2  # the base, then the virtualenv
    pause_tags, _, pause_config = layers.manifest(images.pause_archive)
    assert pause_tags == ["registry.k8s.io/pause:3.10"] == [images.pause_image]
    assert pause_config["config"]["Entrypoint"] == ["/pause", "-P"]


def test_no_host_file_in_any_layer(images: Images) -> None:
    """Neither the host's pip configuration nor its trust store is in the image, by name or by content."""
    pip_confs = {sha256(p.read_bytes()): str(p) for p in HOST_PIP_CONFS if p.is_file()}
    host_ca = HOST_CA.read_bytes()
    debian_bundle = layers.read_files(images.archive, {"etc/ssl/certs/ca-certificates.crt"})
    # If the host's bundle happens to be Debian's stock one, equal content proves nothing either way: the
    # provenance test below is what shows where the image's bundle comes from.
    hashes = {**pip_confs, **({} if debian_bundle.get("etc/ssl/certs/ca-certificates.crt") == host_ca
                              else {sha256(host_ca): str(HOST_CA)})}
    seen = 0
    leaks = []
    for lf in layers.files(images.archive):
        seen += 1
        if lf.sha256 in hashes:
            leaks.append(f"{lf.path} in layer {lf.layer[:12]} is a copy of the host's {hashes[lf.sha256]}")
        if lf.path.rpartition("/")[2] == "pip.conf" or lf.path.startswith(("root/.pip", "root/.config/pip")):
            leaks.append(f"{lf.path} in layer {lf.layer[:12]}: a pip configuration")
    assert seen > 1000, "the archive was not read"
    assert not leaks, leaks


def test_ca_bundle_is_the_one_debian_generates(images: Images) -> None:
    """The bundle holds exactly the certificates of Debian's ca-certificates package enabled in the image's
    /etc/ca-certificates.conf, each file matching dpkg's own checksum: update-ca-certificates' output, not a
    copy of anything from the host (whose bundle here holds local CAs Debian does not ship)."""
    got = layers.read_files(images.archive, {
        "etc/ssl/certs/ca-certificates.crt", "etc/ca-certificates.conf", "var/lib/dpkg/info/ca-certificates.md5sums",
        "usr/share/ca-certificates/*", "usr/local/share/ca-certificates/*"})
    md5sums: dict[str, str] = {}
    for line in got["var/lib/dpkg/info/ca-certificates.md5sums"].decode().splitlines():
        digest, path = line.split(None, 1)
        md5sums[path] = digest
    shipped = {p: data for p, data in got.items() if p.startswith("usr/share/ca-certificates/")}
    assert shipped and all(hashlib.md5(data).hexdigest() == md5sums.get(p) for p, data in shipped.items()), \
        "certificate files in the image that are not dpkg's"
    enabled = [line for line in got["etc/ca-certificates.conf"].decode().splitlines()
               if line and not line.startswith(("#", "!"))]
    expected = set().union(*(pem_certificates(shipped[f"usr/share/ca-certificates/{name}"]) for name in enabled))
    assert not [p for p in got if p.startswith("usr/local/share/ca-certificates/")], "local CAs in the image"
    bundle = pem_certificates(got["etc/ssl/certs/ca-certificates.crt"])
    assert bundle == expected
    host_only = pem_certificates(HOST_CA.read_bytes()) - expected
    assert not host_only & bundle  # the host's own CAs (a proxy's, here) never got in


def test_help_runs_as_nonroot(images: Images) -> None:
    done = images.podman("run", "--rm", "--network", "none", images.image, "--help")
    assert "serve" in done.stdout and "check" in done.stdout
    uid = images.podman("run", "--rm", "--network", "none", "--entrypoint", "id", images.image, "-u")
    assert uid.stdout.strip() == str(NONROOT)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def metrics_when(images: Images, container: str, port: int, ready: Callable[[str], bool], what: str) -> str:
    """/metrics of the exporter in ``container`` once ``ready(text)`` holds (polled every 0.2 s, at most 60 s);
    past that the test fails with ``what`` and the end of the container's log."""
    deadline, text = time.monotonic() + 60, ""
    while not ready(text):
        if time.monotonic() > deadline:
            logs = (await asyncio.to_thread(images.podman, "logs", container, check=False)).stderr
            pytest.fail(f"{what} within 60 s; container log:\n{logs[-3000:]}")
        await asyncio.sleep(0.2)
        try:
            text = await asyncio.to_thread(_metrics, port)
        except OSError:
            continue
    return text


async def test_serve_probes_and_answers_metrics(images: Images, servers: Servers, containers: list[str],
                                                tmp_path: Path) -> None:
    """`serve --manifests` in the image, locked down as the chart runs it, probes a real TLS backend on loopback
    and answers /metrics: the process runs as 65532."""
    ca = CertificateAuthority.create("image test CA")
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "webhooks.yaml").write_text(yaml.safe_dump(f.configuration(
        "image-test", f.webhook("probe.image.test", f.url_client(backend.port, ca.ca_bundle)))))
    manifests.chmod(0o755)  # the container's uid 65532 reads it
    (manifests / "webhooks.yaml").chmod(0o644)
    port = await free_port()
    name = f"awe-image-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    await asyncio.to_thread(
        images.podman, "run", "--detach", "--name", name, "--network", "host", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--volume", f"{manifests}:/manifests:ro", images.image,
        "serve", "--manifests", "/manifests", "--listen-address", f"127.0.0.1:{port}", "--probe-interval", "1")
    body = await metrics_when(images, name, port,
                              lambda text: "admission_webhook_probe_success{" in text and backend.requests != 0,
                              "no probe result on /metrics")
    success = [line for line in body.splitlines() if line.startswith("admission_webhook_probe_success{")]
    assert any('name="probe.image.test"' in line and line.endswith(" 1.0") for line in success), success
    pid = (await asyncio.to_thread(images.podman, "inspect", "--format", "{{.State.Pid}}", name)).stdout.strip()
    status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
    uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uids.split()[1:] == [str(NONROOT)] * 4
    state = json.loads((await asyncio.to_thread(images.podman, "inspect", name)).stdout)[0]
    assert state["HostConfig"]["ReadonlyRootfs"] is True


def test_the_image_leaves_out_what_the_exporter_never_uses(images: Images) -> None:
    """No `kubernetes` client (kubeconfig.py reads credentials itself) and no CEL REPL (typer, rich,
    prompt_toolkit): importing the CLI loads none of them."""
    probe = ("import importlib.util, sys, exporter.cli, exporter.audit, exporter.kubeconfig; "
             "gone = ['kubernetes', 'typer', 'rich', 'prompt_toolkit', 'pygments', 'pydantic', 'cel.cli']; "
             "print([m for m in gone if importlib.util.find_spec(m) is not None or m in sys.modules])")
    done = images.podman("run", "--rm", "--network", "none", "--entrypoint", "python", images.image, "-c", probe)
    assert done.stdout.strip() == "[]"


def test_audit_evaluates_cel_in_the_image(images: Images, tmp_path: Path) -> None:
    """matchConditions are compiled and evaluated by the CEL package the image slimmed down."""
    hook = f.webhook("cel.image.test", f.url_client(1, "Zm9v"), policy="Fail",
                     matchConditions=[{"name": "team", "expression": 'object.metadata.labels["team"] == "a"'}])
    manifests = tmp_path / "manifests"
    manifests.mkdir(mode=0o755)
    (manifests / "webhooks.yaml").write_text(yaml.safe_dump(f.configuration("cel-test", hook)))
    (manifests / "webhooks.yaml").chmod(0o644)
    done = images.podman("run", "--rm", "--network", "none", "--read-only", "--volume", f"{manifests}:/m:ro",
                         images.image, "audit", "--manifests", "/m", "--output", "json", "--fail-on", "never")
    findings = json.loads(done.stdout)["findings"]
    matched = [x for x in findings if x["id"] == "match_condition_invalid"]
    assert matched and "fails on" in matched[0]["why"], findings


@pytest.mark.controlplane
async def test_serve_in_cluster_without_the_kubernetes_package(images: Images, control_plane: Any, servers: Servers,
                                                               containers: list[str], tmp_path: Path) -> None:
    """`serve` in the image as in a pod: KUBERNETES_SERVICE_HOST/PORT and a service account token and CA where
    the kubelet mounts them; it watches the real kube-apiserver and probes the webhook it finds there."""
    ca = CertificateAuthority.create("image in-cluster CA")
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    name = f"image-{uuid.uuid4().hex[:8]}"
    nowhere: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}}}
    body = f.configuration(name, f.webhook(f"{name}.image.test", f.url_client(backend.port, ca.ca_bundle),
                                           policy="Ignore", **nowhere))
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    status, answer = await asyncio.to_thread(control_plane.request, path, "POST", body)
    assert status == 201, answer
    sa = tmp_path / "serviceaccount"
    sa.mkdir(mode=0o755)
    (sa / "token").write_text(control_plane.admin_token)
    (sa / "ca.crt").write_bytes(control_plane.ca_path.read_bytes())
    for file in sa.iterdir():
        file.chmod(0o644)
    port, api_port = await free_port(), control_plane.server_url.rsplit(":", 1)[1]
    container = f"awe-image-test-{uuid.uuid4().hex[:8]}"
    containers.append(container)
    try:
        await asyncio.to_thread(
            images.podman, "run", "--detach", "--name", container, "--network", "host", "--read-only",
            "--cap-drop", "ALL", "--env", "KUBERNETES_SERVICE_HOST=127.0.0.1",
            "--env", f"KUBERNETES_SERVICE_PORT={api_port}",
            "--volume", f"{sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro", images.image,
            "serve", "--listen-address", f"127.0.0.1:{port}", "--probe-interval", "1")
        want = f'admission_webhook_probe_success{{configuration="{name}",name="{name}.image.test"'
        await metrics_when(images, container, port,
                           lambda text: any(line.startswith(want) and line.endswith(" 1.0")
                                            for line in text.splitlines()),
                           f"{name} not probed healthy")
    finally:
        await asyncio.to_thread(control_plane.request, f"{path}/{name}", "DELETE")
