"""Tests of the control-plane harness itself, against the real kube-apiserver and etcd.

They double as executable documentation of what the real apiserver does with admission webhooks
in this setup (which calls it makes, what it says when a backend is gone, which metrics appear),
which is what the exporter's own tests build on.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from exporter.backend import WebhookBackend
from tests.controlplane.egress_proxy import split_host_port
from tests.controlplane.fixtures import *  # noqa: F403 - fixtures
from tests.controlplane.fixtures import EXPORTER_USER, api_client_for
from tests.controlplane.harness import (
    REPO_ROOT,
    ControlPlane,
    free_port,
    webhook_backend_command,
)
from tests.controlplane.netns import SUBNET, NetNamespace
from tests.servers import Threaded

pytestmark = pytest.mark.controlplane
T = TypeVar("T")

WEBHOOK_METRIC = re.compile(r"^(apiserver_admission_webhook_[a-z_]+)\{([^}]*)\}", re.M)


def until(pred: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy (returns it) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def must(value: T | None) -> T:
    """Narrow the client's Optional model fields (the apiserver always sets the ones we read)."""
    assert value is not None
    return value


def message(e: ApiException) -> str:
    """The Status message of an API error (the body is JSON, so quotes in it are escaped)."""
    return str(json.loads(e.body or "{}").get("message", e))


def labels(s: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', s))


@pytest.fixture
def namespace(kube_api: Any) -> Iterator[str]:
    """A fresh namespace; webhooks in these tests select only it, so they never hit other tests."""
    name = f"awe-t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def webhook_config(name: str, namespace: str, client_config: dict[str, Any], mutating: bool = False) -> dict[str, Any]:
    """A one-webhook (Validating|Mutating)WebhookConfiguration on ConfigMap CREATE in ``namespace``."""
    hook = {
        "name": f"{name}.awe.test",
        "clientConfig": client_config,
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    }
    kind = "MutatingWebhookConfiguration" if mutating else "ValidatingWebhookConfiguration"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [hook],
    }


@contextlib.contextmanager
def installed(api: Any, cfg: dict[str, Any]) -> Iterator[None]:
    arv1 = client.AdmissionregistrationV1Api(api)
    mutating = cfg["kind"].startswith("Mutating")
    create: Callable[[Any], Any] = (
        arv1.create_mutating_webhook_configuration if mutating else arv1.create_validating_webhook_configuration
    )
    create(cfg)  # a plain dict is serialized as-is
    try:
        yield
    finally:
        with contextlib.suppress(ApiException):
            name = cfg["metadata"]["name"]
            (arv1.delete_mutating_webhook_configuration if mutating else arv1.delete_validating_webhook_configuration)(
                name
            )


def create_cm(api: Any, namespace: str, name: str | None = None) -> str:
    name = name or f"cm-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"k": "v"})
    )
    return name


def create_cm_until_seen(api: Any, namespace: str, seen: Callable[[str], bool], what: str) -> str:
    """The apiserver picks up new webhook configurations asynchronously (informer): retry creating
    ConfigMaps until the backend has seen one; returns that ConfigMap's name."""

    def attempt() -> str | None:
        name = create_cm(api, namespace)
        return name if seen(name) else None

    return str(until(attempt, 20, what))


@pytest.fixture
def loopback_backend(control_plane: ControlPlane) -> Iterator[Threaded[WebhookBackend]]:
    srv = Threaded(WebhookBackend(control_plane.ca.issue(["127.0.0.1"], common_name="loopback-webhook"))).start()
    yield srv
    srv.stop()


# ----------------------------------------------------------------------------------------------


def test_apiserver_ready_and_version(control_plane: ControlPlane) -> None:
    status, body = control_plane.request("/readyz")
    assert (status, body) == (200, b"ok")
    version = json.loads(control_plane.request("/version")[1])
    assert version["gitVersion"].startswith("v1.34."), version
    assert control_plane.server_url.startswith("https://127.0.0.1:")
    assert control_plane.kubeconfig_path.is_file() and control_plane.ca_path.is_file()


def test_restricted_user_is_authenticated_but_not_authorized(control_plane: ControlPlane) -> None:
    with api_client_for(control_plane, EXPORTER_USER) as api:
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(api).list_namespace()
    assert e.value.status == 403 and f'User "{EXPORTER_USER}"' in message(e.value)


def test_namespace_service_and_endpointslice(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    assert namespace in [must(n.metadata).name for n in core.list_namespace().items]
    svc = core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="hook"),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=443, target_port=8443)]),
        ),
    )
    assert ipaddress.ip_address(must(must(svc.spec).cluster_ip)) in ipaddress.ip_network("10.0.0.0/24")
    disc = client.DiscoveryV1Api(kube_api)

    def slice_(addr: str) -> client.V1EndpointSlice:
        return client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(generate_name="hook-", labels={"kubernetes.io/service-name": "hook"}),
            address_type="IPv4",
            ports=[client.DiscoveryV1EndpointPort(name="", port=8443, protocol="TCP")],
            endpoints=[client.V1Endpoint(addresses=[addr], conditions=client.V1EndpointConditions(ready=True))],
        )

    made = disc.create_namespaced_endpoint_slice(namespace, slice_(str(SUBNET.network_address + 2)))
    assert must(made.endpoints)[0].addresses == [str(SUBNET.network_address + 2)]
    with pytest.raises(ApiException) as e:
        disc.create_namespaced_endpoint_slice(namespace, slice_("127.0.0.1"))
    assert e.value.status == 422 and "loopback" in message(e.value), message(e.value)


def test_url_webhook_called_then_fails_closed(
    control_plane: ControlPlane, kube_api: Any, namespace: str, loopback_backend: Threaded[WebhookBackend]
) -> None:
    cfg = webhook_config(
        f"url-{namespace}",
        namespace,
        {
            "url": f"https://127.0.0.1:{loopback_backend.server.port}/validate",
            "caBundle": base64.b64encode(control_plane.ca.cert_pem).decode(),
        },
    )
    with installed(kube_api, cfg):
        name = create_cm_until_seen(
            kube_api,
            namespace,
            lambda n: any(c.name == n for c in loopback_backend.server.calls),
            "url webhook call",
        )
        call = next(c for c in loopback_backend.server.calls if c.name == name)
        assert (call.kind, call.operation, call.path) == ("ConfigMap", "CREATE", "/validate")
        assert call.query == "timeout=5s"  # the apiserver tells the backend its timeoutSeconds
        loopback_backend.stop()
        with pytest.raises(ApiException) as e:
            create_cm(kube_api, namespace)
    assert e.value.status == 500
    assert f'failed calling webhook "url-{namespace}.awe.test"' in message(e.value)
    # Usually a fresh dial is refused; under load the apiserver may still pick the kept-alive
    # connection the backend just cut, and then reports EOF / reset for that one call.
    # A kept-alive connection to the dead backend fails on write (broken pipe) rather than on connect.
    causes = ("connect: connection refused", "EOF", "connection reset by peer", "write: broken pipe")
    assert any(c in message(e.value) for c in causes), message(e.value)


def test_service_webhook_through_egress_proxy_into_netns(
    control_plane: ControlPlane, kube_api: Any, namespace: str, netns_host: NetNamespace, tmp_path: Path
) -> None:
    ns_ip, port = netns_host.address, 8443
    dns = f"hook.{namespace}.svc"
    cert, key = control_plane.ca.issue([dns]).write(tmp_path, "hook")
    calls = tmp_path / "calls.jsonl"
    backend = netns_host.popen(
        webhook_backend_command(ns_ip, port, cert, key, calls_file=calls),
        cwd=str(REPO_ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def reachable() -> bool:
        assert backend.poll() is None, backend.stderr.read().decode() if backend.stderr else "backend died"
        with contextlib.suppress(OSError), socket.create_connection((ns_ip, port), timeout=1):
            return True
        return False

    until(reachable, 15, f"backend on {ns_ip}:{port} inside netns")

    core = client.CoreV1Api(kube_api)
    svc = core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="hook"),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=443, target_port=port)]),
        ),
    )
    client.DiscoveryV1Api(kube_api).create_namespaced_endpoint_slice(
        namespace,
        client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(name="hook-1", labels={"kubernetes.io/service-name": "hook"}),
            address_type="IPv4",
            ports=[client.DiscoveryV1EndpointPort(name="", port=port, protocol="TCP")],
            endpoints=[client.V1Endpoint(addresses=[ns_ip], conditions=client.V1EndpointConditions(ready=True))],
        ),
    )
    cluster_ip = must(must(svc.spec).cluster_ip)
    control_plane.map_service(cluster_ip, 443, ns_ip, port, service=dns)

    def seen(name: str) -> bool:
        return calls.exists() and any(json.loads(line)["name"] == name for line in calls.read_text().splitlines())

    cfg = webhook_config(
        f"svc-{namespace}",
        namespace,
        {
            "service": {"namespace": namespace, "name": "hook", "path": "/validate", "port": 443},
            "caBundle": base64.b64encode(control_plane.ca.cert_pem).decode(),
        },
    )
    with installed(kube_api, cfg):
        create_cm_until_seen(kube_api, namespace, seen, "service webhook call via egress proxy")
        recs = [r for r in control_plane.egress_log() if r.get("target") == f"{cluster_ip}:443"]
        assert recs and recs[-1]["result"] == "200" and recs[-1]["dest"] == f"{ns_ip}:{port}", recs
        # backend gone (its process ends, closing the kept-alive tunnel): the proxy answers 502
        backend.terminate()
        backend.wait(10)
        with pytest.raises(ApiException) as e502:
            create_cm(kube_api, namespace)
        # service no longer mapped: the proxy answers 503
        control_plane.unmap_service(cluster_ip, 443, service=dns)
        with pytest.raises(ApiException) as e503:
            create_cm(kube_api, namespace)
    for e, code in ((e502, 502), (e503, 503)):
        assert e.value.status == 500 and f'failed calling webhook "svc-{namespace}.awe.test"' in message(e.value)
        assert f"code {code}" in message(e.value), message(e.value)
        print(f"service webhook error via proxy ({code}):", message(e.value))


def test_webhook_metrics_have_name_and_type(
    control_plane: ControlPlane, kube_api: Any, namespace: str, loopback_backend: Threaded[WebhookBackend]
) -> None:
    ca = base64.b64encode(control_plane.ca.cert_pem).decode()
    url = f"https://127.0.0.1:{loopback_backend.server.port}"
    v = webhook_config(f"mv-{namespace}", namespace, {"url": url + "/validate", "caBundle": ca})
    m = webhook_config(f"mm-{namespace}", namespace, {"url": url + "/mutate", "caBundle": ca}, mutating=True)
    with installed(kube_api, v), installed(kube_api, m):

        def both() -> bool:
            create_cm(kube_api, namespace)
            return {c.path for c in loopback_backend.server.calls} >= {"/validate", "/mutate"}

        until(both, 20, "both webhooks called")
    text = control_plane.metrics_text()
    series = [(metric, labels(lbl)) for metric, lbl in WEBHOOK_METRIC.findall(text)]
    ours = [(metric, lb) for metric, lb in series if lb.get("name", "").endswith(f"-{namespace}.awe.test")]
    assert ours, "no apiserver_admission_webhook_* series for our webhooks"
    types = {lb["name"]: lb.get("type") for _, lb in ours}
    assert types == {f"mv-{namespace}.awe.test": "validating", f"mm-{namespace}.awe.test": "admit"}, types
    names = {metric for metric, _ in ours}
    assert {
        "apiserver_admission_webhook_admission_duration_seconds_count",
        "apiserver_admission_webhook_request_total",
    } <= names, names
    # Recorded for humans (-s): every webhook metric family in this session with its type/label keys.
    for family in sorted({metric for metric, _ in series}):
        lbs = [lb for metric, lb in series if metric == family]
        print(family, sorted({lb.get("type", "-") for lb in lbs}), sorted({k for lb in lbs for k in lb}))


def test_apiserver_keeps_no_offhost_connections(control_plane: ControlPlane) -> None:
    """Every TCP socket of kube-apiserver and etcd talks to loopback or the netns /24 only."""
    allowed = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"), SUBNET]
    for name, pid in control_plane.pids.items():
        assert pid is not None, name
        for remote in _remote_addresses(pid):
            ip = ipaddress.ip_address(remote)
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            assert ip.is_unspecified or any(ip in n for n in allowed), f"{name} talks to {remote}"


def _remote_addresses(pid: int) -> list[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            t = os.readlink(fd)
            if t.startswith("socket:["):
                inodes.add(t[8:-1])
    out = []
    for fam in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{fam}").read_text().splitlines()[1:]
        for line in lines:
            f = line.split()
            if f[9] not in inodes:
                continue
            hexip = f[2].split(":")[0]
            raw = bytes.fromhex(hexip)
            if fam == "tcp":
                out.append(str(ipaddress.IPv4Address(raw[::-1])))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                out.append(str(ipaddress.IPv6Address(words)))
    return out


def watch_events(cp: ControlPlane, namespace: str, rv: str) -> list[tuple[str, int | None]]:
    """Raw watch of ConfigMaps from ``rv`` for ~1 s: ``[(type, status code of ERROR events)]``."""
    status, body = cp.request(
        f"/api/v1/namespaces/{namespace}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1", timeout=10
    )
    assert status == 200, body[:300]
    events = [json.loads(line) for line in body.splitlines() if line.strip()]
    return [(e["type"], e["object"].get("code") if e["type"] == "ERROR" else None) for e in events]


def test_restart_apiserver_keeps_data_and_port(control_plane: ControlPlane, kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    name = create_cm(kube_api, namespace)
    old_rv = must(must(core.read_namespaced_config_map(name, namespace).metadata).resource_version)
    core.patch_namespaced_config_map(name, namespace, {"data": {"k": "v2"}})
    assert watch_events(control_plane, namespace, old_rv) == [("MODIFIED", None)]  # in the watch cache window
    url = control_plane.server_url
    old_pid = control_plane.pids["kube-apiserver"]
    ready_s = control_plane.restart_apiserver()
    assert control_plane.server_url == url and control_plane.pids["kube-apiserver"] not in (None, old_pid)
    assert ready_s < 60
    with api_client_for(control_plane) as api:
        client.CoreV1Api(api).read_namespace(namespace)  # survived: same etcd
    # the restarted apiserver's watch cache starts after old_rv: resuming a watch from it is 410 Gone
    assert watch_events(control_plane, namespace, old_rv) == [("ERROR", 410)]


def test_compact_etcd_makes_old_resource_version_gone(
    make_control_plane: Callable[..., ControlPlane],
) -> None:
    cp = make_control_plane(watch_cache=False)  # reads go to etcd: compaction shows at once
    ns = "default"
    status, body = cp.request(f"/api/v1/namespaces/{ns}/configmaps", "POST", {"metadata": {"name": "c"}})
    assert status == 201, body
    old_rv = json.loads(body)["metadata"]["resourceVersion"]
    for i in range(3):
        assert (
            cp.request(
                f"/api/v1/namespaces/{ns}/configmaps/c",
                "PUT",
                {"metadata": {"name": "c"}, "data": {"i": str(i)}},
            )[0]
            == 200
        )
    assert watch_events(cp, ns, old_rv) == [("MODIFIED", None)] * 3
    rev = cp.compact_etcd()
    assert rev > int(old_rv)
    status, body = cp.request(f"/api/v1/namespaces/{ns}/configmaps?resourceVersion={old_rv}&resourceVersionMatch=Exact")
    assert status == 410, body
    assert watch_events(cp, ns, old_rv) == [("ERROR", 410)]


def test_stop_leaves_nothing_behind(make_control_plane: Callable[..., ControlPlane]) -> None:
    cp = make_control_plane(watch_cache=False)
    pids = dict(cp.pids)
    data_dir = cp.data_dir
    assert all(pids.values()) and data_dir is not None and data_dir.is_dir()
    cp.stop()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still exists"
    assert not data_dir.exists()


def test_egress_proxy_refuses_everything_but_loopback_and_netns(tmp_path: Path) -> None:
    """The proxy alone: unmapped non-loopback -> 503, mapped off-host -> 403, loopback -> dialled."""
    sock, mapping = tmp_path / "p.sock", tmp_path / "map.json"
    dead_port = free_port()
    mapping.write_text(json.dumps({"10.0.0.9:443": "198.51.100.7:443", "10.0.0.8:443": f"127.0.0.1:{dead_port}"}))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("egress_proxy.py")),
            "--socket",
            str(sock),
            "--map",
            str(mapping),
            "--allow-cidr",
            str(SUBNET),
            "--log",
            str(tmp_path / "log"),
        ]
    )
    try:
        until(sock.is_socket, 10, "proxy socket")

        def connect(target: str) -> str:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(sock))
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                return s.recv(200).split(b"\r\n")[0].decode()

        assert connect("198.51.100.7:443").startswith("HTTP/1.1 503")  # unmapped, off-host
        assert connect("hook.x.svc:443").startswith("HTTP/1.1 503")  # unmapped name, never resolved
        assert connect("10.0.0.9:443").startswith("HTTP/1.1 403")  # mapped off-host
        assert connect("10.0.0.8:443").startswith("HTTP/1.1 502")  # mapped loopback, nobody there
        assert connect(f"127.0.0.1:{dead_port}").startswith("HTTP/1.1 502")
        log = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
        assert [r["result"][:3] for r in log] == ["503", "503", "403", "502", "502"]
        assert split_host_port("[::1]:443") == ("::1", 443)
    finally:
        proc.terminate()
        proc.wait(10)


def test_netns_http_server_reachable_from_host(netns_host: NetNamespace) -> None:
    import urllib.request

    port = 18080
    p = netns_host.popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", netns_host.addresses[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(REPO_ROOT),
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch() -> int | None:
        assert p.poll() is None
        with contextlib.suppress(OSError):
            with opener.open(f"http://{netns_host.addresses[1]}:{port}/", timeout=2) as r:
                return int(r.status)
        return None

    assert until(fetch, 15, "http.server inside the namespace") == 200
    # and it is not reachable via loopback on the host: it lives in the namespace only
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
