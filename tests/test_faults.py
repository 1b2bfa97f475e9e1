"""Fault injection: hostile backends, a flaky Kubernetes API, churn, and shutdown, each bounded in time.

Backends are real servers on 127.0.0.1 (`tests.hostile`): each gives exactly one verdict, the probe ends
within its deadline, memory stays bounded, and the other targets keep their schedule meanwhile. API faults
run against the real kube-apiserver + etcd (`tests/controlplane`), except the one case the real apiserver
cannot produce (an invalid object), served by a fake list. Every API case ends with the exporter serving
the right state again, without a restart, and with the watch-health metrics telling what happened.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import re
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest

from exporter.app import Exporter
from exporter.discovery import Discovery
from exporter.kubeapi import VALIDATING_CONFIGS, Credentials, load_credentials
from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.probe import MAX_BODY_BYTES, ProbeResult, probe
from exporter.reasons import Reason
from exporter.results import ResultStore
from exporter.scheduler import ProbeScheduler
from exporter.targets import Target
from tests import factories as f
from tests import hostile
from tests.conftest import Servers
from tests.controlplane.fixtures import EXPORTER_GROUP, EXPORTER_USER, api_client_for
from tests.controlplane.harness import ControlPlane
from tests.helpers import only_plan, plans_of
from tests.kube import Kube as SharedKube
from tests.kube import exporter_role, start_live_exporter
from tests.servers import Handler, never_speak, plain_http

REPO = Path(__file__).parent.parent
MEMORY_BOUND = 20 * hostile.MiB  # per probe: a hostile peer must not make us hold much more than a response
DEADLINE_MARGIN = 0.5  # seconds past timeoutSeconds a probe may take to be torn down


async def eventually(predicate: Callable[[], bool], within: float, what: str = "") -> float:
    """Seconds until `predicate()` held; fails the test after `within`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# ==========================================================================================================
# Hostile backends
# ==========================================================================================================
@dataclass(frozen=True)
class Hostile:
    """One misbehaving backend and the single verdict the probe must reach against it."""

    handler: Handler | None  # None: a well-behaved WebhookBackend serving `cert`
    cert: str  # "none" (raw TCP), "leaf", "chain50" or "huge"
    reason: Reason | None
    detail: str  # exactly


TIMEOUT = 2  # the hostile webhooks' timeoutSeconds
BIG = 100 * hostile.MiB

HOSTILE: dict[str, Hostile] = {
    "accepts, never speaks": Hostile(never_speak, "none", Reason.TIMEOUT,
                                     f"context deadline exceeded (no answer within {TIMEOUT}s)"),
    "TLS, then one byte per second": Hostile(hostile.trickle(1.0), "leaf", Reason.TIMEOUT,
                                             f"context deadline exceeded (no answer within {TIMEOUT}s)"),
    "100 MB body, Content-Length": Hostile(hostile.huge_body("content-length", BIG), "leaf", Reason.HTTP_ERROR,
                                           f"response body of {BIG} bytes, larger than {MAX_BODY_BYTES}"),
    "100 MB body, chunked": Hostile(hostile.huge_body("chunked", BIG), "leaf", Reason.HTTP_ERROR,
                                    f"response body larger than {MAX_BODY_BYTES} bytes"),
    "100 MB body, until close": Hostile(hostile.huge_body("close", BIG), "leaf", Reason.HTTP_ERROR,
                                        f"response body larger than {MAX_BODY_BYTES} bytes"),
    "reset mid-handshake": Hostile(hostile.reset_mid_handshake, "none", Reason.TLS_HANDSHAKE,
                                   "read: connection reset by peer"),
    # Go verifies a chain of any depth (no limit short of 100 signature checks), and so does OpenSSL (100):
    # the apiserver would call this webhook successfully, so must we.
    "50-certificate chain": Hostile(None, "chain50", None, ""),
    # Go refuses a Certificate message over 256 KiB, OpenSSL over 100 KiB: both fail the handshake.
    "1 MB certificate": Hostile(None, "huge", Reason.TLS_HANDSHAKE, "tls: EXCESSIVE_MESSAGE_SIZE"),
    "plain HTTP": Hostile(plain_http, "none", Reason.TLS_HANDSHAKE,
                          "http: server gave HTTP response to HTTPS client"),  # Go's words for it
    "closes after the headers": Hostile(hostile.close_after_headers, "leaf", Reason.HTTP_ERROR,
                                        "connection closed before a full response: 0 bytes read on a total of "
                                        "1000 expected bytes"),
}


@pytest.fixture(scope="module")
def certs(ca: CertificateAuthority, loopback_cert: ServingCertificate) -> dict[str, ServingCertificate]:
    return {"leaf": loopback_cert, "chain50": hostile.long_chain(ca, ["127.0.0.1"], length=50),
            "huge": hostile.huge_certificate(ca, ["127.0.0.1"], size=hostile.MiB)}


async def start_hostile(servers: Servers, case: Hostile, certs: dict[str, ServingCertificate]) -> int:
    serving = None if case.cert == "none" else certs[case.cert]
    if case.handler is None:
        assert serving is not None
        return (await servers.backend(serving)).port
    return (await servers.raw(case.handler, serving=serving)).port


def hook_for(name: str, port: int, ca: CertificateAuthority) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f.webhook(f"{slug}.example.com", f.url_client(port, ca.ca_bundle), timeout=TIMEOUT)


def assert_verdict(case: Hostile, result: ProbeResult) -> None:
    assert result.reason is case.reason, (result.reason, result.detail)
    assert result.success is (case.reason is None)
    assert result.detail == case.detail


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_backend_gets_one_verdict_within_deadline_and_bounded_memory(
        name: str, servers: Servers, ca: CertificateAuthority, certs: dict[str, ServingCertificate]) -> None:
    case = HOSTILE[name]
    port = await start_hostile(servers, case, certs)
    (target,) = only_plan(f.configuration("hostile", hook_for(name, port, ca))).targets
    started = time.monotonic()
    result, memory = await hostile.measure_memory(probe(target))
    elapsed = time.monotonic() - started
    assert_verdict(case, result)
    assert elapsed < TIMEOUT + DEADLINE_MARGIN, f"{name}: probe took {elapsed:.2f}s"
    if case.reason is Reason.TIMEOUT:
        assert elapsed >= TIMEOUT
    assert memory.peak_traced < MEMORY_BOUND, f"{name}: Python heap peak {memory.peak_traced / hostile.MiB:.1f} MiB"
    assert memory.rss_growth < MEMORY_BOUND, f"{name}: RSS grew {memory.rss_growth / hostile.MiB:.1f} MiB"


async def test_healthy_target_keeps_its_schedule_while_hostile_probes_hang(
        servers: Servers, ca: CertificateAuthority, certs: dict[str, ServingCertificate]) -> None:
    """Every hostile backend at once, and one healthy one probed every 0.5 s: its schedule must not slip."""
    interval, window = 0.5, 4.0
    healthy = await servers.backend(certs["leaf"])
    hooks = [f.webhook("healthy.example.com", f.url_client(healthy.port, ca.ca_bundle), timeout=TIMEOUT)]
    expected: dict[str, Hostile] = {}
    for name, case in HOSTILE.items():
        hook = hook_for(name, await start_hostile(servers, case, certs), ca)
        hooks.append(hook)
        expected[hook["name"]] = case
    plans = plans_of(f.configuration("mixed", *hooks))
    starts: dict[str, list[float]] = {}

    async def recording(target: Target) -> ProbeResult:
        starts.setdefault(target.key.webhook.name, []).append(time.monotonic())
        return await probe(target)

    results = ResultStore()
    scheduler = ProbeScheduler(results=results, probe_fn=recording, interval=interval, jitter=0.0)
    rss0 = hostile.rss_bytes()
    scheduler.update(plans)
    try:
        await asyncio.sleep(window)
    finally:
        await scheduler.close()
    times = starts["healthy.example.com"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= window / interval - 1, times
    assert max(gaps) < interval + 0.25, f"healthy probe schedule slipped: gaps {gaps}"
    snapshot = results.snapshot()
    for plan in plans:
        (target,) = plan.targets
        result = snapshot[target.key]
        if plan.key.name == "healthy.example.com":
            assert result.success
        else:
            assert_verdict(expected[plan.key.name], result)
            assert result.duration_seconds < TIMEOUT + DEADLINE_MARGIN
    assert hostile.rss_bytes() - rss0 < 2 * MEMORY_BOUND


# ==========================================================================================================
# Graceful shutdown
# ==========================================================================================================
async def test_sigterm_stops_within_five_seconds_cancelling_in_flight_probes(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate, tmp_path: Path) -> None:
    hanging = [await servers.raw(never_speak) for _ in range(3)]
    hanging.append(await servers.raw(hostile.trickle(1.0), serving=loopback_cert))
    hooks = [f.webhook(f"hang-{i}.example.com", f.url_client(s.port, ca.ca_bundle), timeout=30)
             for i, s in enumerate(hanging)]
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(f.configuration("hanging", *hooks)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "serve", "--manifests", str(tmp_path), "--listen-address",
        "127.0.0.1:0", "--probe-interval", "60", cwd=str(REPO), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    stderr = b""
    try:
        while b"event=listening" not in stderr:
            stderr += await asyncio.wait_for(proc.stderr.readline(), 20)
        # every probe is in flight, 30 s from its deadline
        await eventually(lambda: all(s.connections for s in hanging), 20, "all probes in flight")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 10)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (stderr + rest).decode()
    assert code == 0, text
    assert took < 5.0, f"SIGTERM took {took:.2f}s"
    assert "event=stopping" in text and "Traceback" not in text, text
    assert "probe_failed" not in text  # cancelled, not reported as failures


# ==========================================================================================================
# The Kubernetes API
# ==========================================================================================================
controlplane = pytest.mark.controlplane


class Running:
    def __init__(self, exporter: Exporter, discovery: Discovery) -> None:
        self.exporter = exporter
        self.discovery = discovery

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.exporter.registry.get_sample_value(metric, labels)

    def up(self, resource: str = VALIDATING_CONFIGS.plural) -> float | None:
        return self.value("admission_webhook_exporter_watch_up", resource=resource)

    def restarts(self, resource: str = VALIDATING_CONFIGS.plural) -> float:
        return self.value("admission_webhook_exporter_watch_restarts_total", resource=resource) or 0

    def probed(self, configuration: str, name: str, port: int) -> bool:
        return self.value("admission_webhook_probe_success", configuration=configuration, name=name,
                          type="validating", endpoint=f"127.0.0.1:{port}") == 1

    def api_lists(self, resource: str = VALIDATING_CONFIGS.plural) -> int:
        return self.discovery.api.requests[("list", resource)]

    def configurations(self) -> set[str]:
        text = generate_latest(self.exporter.registry).decode()
        return {labels["configuration"] for labels, _ in hostile.family_samples(text, "admission_webhook_info")}


class UpRecorder:
    """Samples watch_up of one resource every 20 ms, to tell afterwards whether it was ever 0."""

    def __init__(self, running: Running, resource: str = VALIDATING_CONFIGS.plural) -> None:
        self.seen: set[float | None] = set()
        self._task = asyncio.create_task(self._sample(running, resource))

    async def _sample(self, running: Running, resource: str) -> None:
        while True:
            self.seen.add(running.up(resource))
            await asyncio.sleep(0.02)

    async def stop(self) -> set[float | None]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.seen


StartExporter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def exporters() -> AsyncIterator[StartExporter]:
    started: list[Running] = []

    async def start(source: Path | Credentials, *, server_timeout: int = 290, idle_timeout: float = 330,
                    interval: float = 1.0) -> Running:
        creds = load_credentials(str(source)) if isinstance(source, Path) else source
        running = Running(*await start_live_exporter(creds, interval=interval, server_timeout=server_timeout,
                                                     idle_timeout=idle_timeout))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.exporter.close()


class Kube(SharedKube):
    """The shared test client, plus the webhook create/delete the fault cases repeat."""

    def __init__(self, api: Any) -> None:
        super().__init__(api)
        self.api = api

    async def create_hook(self, configuration: str, name: str, client: dict[str, Any]) -> None:
        hook = f.webhook(name, client, policy="Ignore", timeout=2,
                         namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}})
        await self.call(self.admission.create_validating_webhook_configuration, f.configuration(configuration, hook))

    async def delete_hook(self, configuration: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self.call(self.admission.delete_validating_webhook_configuration, configuration)
        except ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture
def kube(kube_api: Any) -> Kube:
    return Kube(kube_api)


def uid() -> str:
    return uuid.uuid4().hex[:8]


def kubeconfig_via(source: Path, port: int, dest: Path) -> Path:
    """A copy of `source` (the harness writes kubeconfigs as JSON) pointing at 127.0.0.1:`port`."""
    config = json.loads(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    dest.write_text(json.dumps(config))
    return dest


@dataclass(frozen=True)
class Healthy:
    port: int
    ca_bundle: str


@pytest.fixture
async def healthy(servers: Servers) -> Healthy:
    """A well-behaved backend on loopback and the caBundle it chains to."""
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    return Healthy(backend.port, ca.ca_bundle)


def restart_lines(caplog: pytest.LogCaptureFixture, resource: str) -> list[str]:
    return [str(r.__dict__.get("awe_fields", {}).get("why")) for r in caplog.records
            if r.getMessage() == "watch_restart" and r.__dict__.get("awe_fields", {}).get("resource") == resource]


@controlplane
async def test_apiserver_restart_is_survived_and_told(kube: Kube, control_plane: ControlPlane,
                                                      exporters: StartExporter, servers: Servers,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exporter")
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    keep, gone, new = f"keep-{uid()}", f"gone-{uid()}", f"new-{uid()}"
    for cfg in (keep, gone):
        await kube.create_hook(cfg, "h.example.com", f.url_client(backend.port, ca.ca_bundle))
    running = await exporters(control_plane.kubeconfig_path)
    try:
        await eventually(lambda: running.probed(keep, "h.example.com", backend.port)
                         and running.probed(gone, "h.example.com", backend.port), 10, "both probed")
        recorder = UpRecorder(running)
        await asyncio.to_thread(control_plane.restart_apiserver)
        after = Kube(api_client_for(control_plane))  # the old client's pooled connections died with the server
        try:
            await after.delete_hook(gone)
            await after.create_hook(new, "h.example.com", f.url_client(backend.port, ca.ca_bundle))
            await eventually(lambda: running.probed(new, "h.example.com", backend.port)
                             and gone not in running.configurations(), 30, "state after the restart")
        finally:
            await after.delete_hook(new)
            after.api.close()
        seen = await recorder.stop()
        assert 0 in seen, f"watch_up never said the watch was down: {seen}"
        assert running.up() == 1
        assert running.restarts() >= 1
        assert running.probed(keep, "h.example.com", backend.port)
        # One log line per restart, saying why: the stream cut mid-chunk when the server went away
        # (ClientPayloadError), then perhaps refused connections while it was down.
        whys = restart_lines(caplog, VALIDATING_CONFIGS.plural)
        assert whys and all(re.match(r"^(ClientPayloadError|ClientConnectorError|ServerDisconnectedError"
                                     r"|ClientOSError|ApiError)", why) for why in whys), whys
    finally:
        await kube.delete_hook(keep)
        await kube.delete_hook(gone)


@pytest.fixture
async def proxy_to() -> AsyncIterator[Callable[[ControlPlane], Awaitable[hostile.FreezableProxy]]]:
    """Freezable loopback relays to a control plane's apiserver, stopped after the test."""
    made: list[hostile.FreezableProxy] = []

    async def make(cp: ControlPlane) -> hostile.FreezableProxy:
        proxy = await hostile.FreezableProxy(cp.apiserver_port).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.stop()


@controlplane
async def test_silently_dropped_watch_is_noticed_and_resumed(
        kube: Kube, control_plane: ControlPlane, exporters: StartExporter, proxy_to: Any, healthy: Healthy,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The exporter's connections go silent (no data, no FIN: a dropped NAT entry); the watch timeout notices.

    The server ends each watch after 3 s, so a live watch never stays quiet for the 4 s idle timeout.
    """
    caplog.set_level(logging.INFO, logger="exporter")
    proxy = await proxy_to(control_plane)
    ca_bundle = healthy.ca_bundle
    first, second = f"drop-a-{uid()}", f"drop-b-{uid()}"
    await kube.create_hook(first, "h.example.com", f.url_client(healthy.port, ca_bundle))
    running = await exporters(kubeconfig_via(control_plane.kubeconfig_path, proxy.port, tmp_path / "kc"),
                              server_timeout=3, idle_timeout=4)
    try:
        await eventually(lambda: running.probed(first, "h.example.com", healthy.port), 10, "first probed")
        restarts_before = running.restarts()
        assert proxy.freeze() >= 3  # the three cluster-wide watches at least
        frozen_at = time.monotonic()
        await kube.delete_hook(first)
        await kube.create_hook(second, "h.example.com", f.url_client(healthy.port, ca_bundle))
        await asyncio.sleep(1)
        assert running.probed(first, "h.example.com", healthy.port), "a silent watch cannot have seen the delete"
        took = await eventually(lambda: running.probed(second, "h.example.com", healthy.port)
                                and first not in running.configurations(), 15, "state after the silent drop")
        print(f"silent drop noticed and state correct {time.monotonic() - frozen_at:.2f}s after the freeze "
              f"({took:.2f}s after the check)")
        assert running.restarts() > restarts_before
        whys = restart_lines(caplog, VALIDATING_CONFIGS.plural)
        assert any(why == "SocketTimeoutError: Timeout on reading data from socket" for why in whys), whys
        await eventually(lambda: running.up() == 1, 5, "watch_up back to 1")
        assert running.api_lists() == 1, "resumed from the last resourceVersion: no second list"
    finally:
        await kube.delete_hook(first)
        await kube.delete_hook(second)


@controlplane
async def test_black_holed_api_reads_as_down_until_a_watch_is_accepted(
        kube: Kube, control_plane: ControlPlane, exporters: StartExporter, proxy_to: Any, healthy: Healthy,
        tmp_path: Path) -> None:
    """The whole path to the apiserver goes silent: open connections freeze, new ones are accepted and never
    answered (packets dropped past a firewall). From the moment the idle timeout notices, watch_up reads 0
    until a watch is accepted again: a retry merely sent into the black hole is not an established watch."""
    proxy = await proxy_to(control_plane)
    name = f"hole-{uid()}"
    running = await exporters(kubeconfig_via(control_plane.kubeconfig_path, proxy.port, tmp_path / "kc"),
                              server_timeout=2, idle_timeout=3)
    try:
        await asyncio.wait_for(running.discovery.wait_synced(), 10)
        await eventually(lambda: running.up() == 1, 5, "watching")
        proxy.blackhole(True)
        proxy.freeze()
        await eventually(lambda: running.up() == 0, 3 + 3, "the idle timeout notices")
        await kube.create_hook(name, "h.example.com", f.url_client(healthy.port, healthy.ca_bundle))
        recorder = UpRecorder(running)
        await asyncio.sleep(8)  # retries, each into the black hole until its connect (10 s) or idle (3 s) timeout
        seen = await recorder.stop()
        assert seen == {0}, f"watch_up claimed an established watch while every retry went unanswered: {seen}"
        assert running.restarts() >= 1
        assert name not in running.configurations()
        proxy.blackhole(False)
        took = await eventually(lambda: running.up() == 1 and running.probed(name, "h.example.com", healthy.port),
                                25, "back, and caught up, once the path answers")
        print(f"path restored; watching and caught up {took:.2f}s later")
    finally:
        await kube.delete_hook(name)


@controlplane
async def test_410_gone_after_compaction_relists_and_drops_what_was_missed(
        make_control_plane: Callable[..., ControlPlane], exporters: StartExporter, proxy_to: Any, healthy: Healthy,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Watches served from etcd (no watch cache, so no bookmarks either); the exporter misses a delete while
    its connections are frozen, etcd is compacted past its resourceVersion, and resuming answers 410 Gone."""
    caplog.set_level(logging.INFO, logger="exporter")
    cp = make_control_plane(watch_cache=False)
    admin = Kube(api_client_for(cp))
    proxy = await proxy_to(cp)
    first, second = f"gone-a-{uid()}", f"gone-b-{uid()}"
    try:
        await admin.create_hook(first, "h.example.com", f.url_client(healthy.port, healthy.ca_bundle))
        running = await exporters(kubeconfig_via(cp.kubeconfig_path, proxy.port, tmp_path / "kc"),
                                  server_timeout=3, idle_timeout=4)
        await eventually(lambda: running.probed(first, "h.example.com", healthy.port), 10, "first probed")
        lists_before = running.api_lists()
        proxy.freeze()
        await admin.delete_hook(first)
        await admin.create_hook(second, "h.example.com", f.url_client(healthy.port, healthy.ca_bundle))
        for i in range(5):  # move etcd's revision on, then compact everything before it
            await admin.call(admin.core.create_namespaced_config_map, "default",
                             {"metadata": {"name": f"bump-{uid()}-{i}"}})
        revision = await asyncio.to_thread(cp.compact_etcd)
        took = await eventually(lambda: running.probed(second, "h.example.com", healthy.port)
                                and first not in running.configurations(), 20, "state after 410")
        print(f"compacted at {revision}; state correct {took:.2f}s later")
        whys = restart_lines(caplog, VALIDATING_CONFIGS.plural)
        assert any(why.startswith("410 Gone: resourceVersion compacted") for why in whys), whys
        assert running.api_lists() > lists_before, "a 410 must be followed by a fresh list"
        assert running.restarts() >= 2  # the silent connection, then the 410
        await eventually(lambda: running.up() == 1, 5, "watch_up back to 1")
    finally:
        admin.api.close()


@pytest.fixture
async def restricted_role(kube: Kube) -> AsyncIterator[dict[str, Any]]:
    """deploy/rbac/clusterrole.yaml under a unique name, bound to the exporter test user's group."""
    async with exporter_role(kube, f"awe-faults-{uid()}", EXPORTER_GROUP) as (_, binding):
        yield binding


@controlplane
async def test_rbac_revoked_then_restored(kube: Kube, control_plane: ControlPlane, exporters: StartExporter,
                                          restricted_role: dict[str, Any], healthy: Healthy) -> None:
    """Revoked: every watch is refused at its next start; the last known state keeps being served and
    watch_up says 0. Restored: the watches resume from where they were and catch up, no restart needed."""
    first, second = f"rbac-a-{uid()}", f"rbac-b-{uid()}"
    await kube.create_hook(first, "h.example.com", f.url_client(healthy.port, healthy.ca_bundle))
    try:
        running = await exporters(control_plane.kubeconfig_for(EXPORTER_USER), server_timeout=2, idle_timeout=4)
        await eventually(lambda: running.probed(first, "h.example.com", healthy.port), 10, "first probed")
        await kube.call(kube.rbac.delete_cluster_role_binding, restricted_role["metadata"]["name"])
        await eventually(lambda: running.up() == 0, 10, "watch_up 0 once revoked")
        assert "403" in running.discovery.last_error and "forbidden" in running.discovery.last_error
        await kube.create_hook(second, "h.example.com", f.url_client(healthy.port, healthy.ca_bundle))
        await asyncio.sleep(2)
        assert running.probed(first, "h.example.com", healthy.port), "the last known state is still served"
        assert second not in running.configurations()
        refused = running.restarts()
        assert refused >= 1
        await kube.call(kube.rbac.create_cluster_role_binding,
                        {**restricted_role, "metadata": {"name": restricted_role["metadata"]["name"]}})
        # Bounded by the retry backoff (full jitter, capped at 30 s): a few failures mean a few seconds.
        took = await eventually(lambda: running.probed(second, "h.example.com", healthy.port), 35,
                                "a change made while revoked, seen once restored")
        print(f"restored; caught up {took:.2f}s later after {refused:.0f} refused watch starts")
        for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations", "namespaces"):
            await eventually(lambda r=resource: running.up(r) == 1, 35, f"watch_up 1 for {resource}")  # type: ignore[misc]
        assert running.probed(first, "h.example.com", healthy.port)
    finally:
        await kube.delete_hook(first)
        await kube.delete_hook(second)


async def test_invalid_webhook_configuration_from_a_fake_list(exporters: StartExporter, healthy: Healthy,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A fake API server: the real kube-apiserver validates webhook configurations and refuses to store
    an invalid one, so this is the only way to serve one over list+watch. It speaks the apiserver's JSON
    (a List with metadata.resourceVersion, then watch events as lines, with bookmarks).

    The invalid webhook is reported (metric and log line) and skipped; its valid sibling and the other
    configuration are probed; a fix arriving by watch clears the report."""
    caplog.set_level(logging.INFO, logger="exporter")
    fake = await hostile.FakeKubeApi().start()
    path = VALIDATING_CONFIGS.path()
    good = f.webhook("good.example.com", f.url_client(healthy.port, healthy.ca_bundle), policy="Ignore")
    bad = f.webhook("bad.example.com", f.url_client(healthy.port, healthy.ca_bundle), policy="Ignore",
                    timeout=None, timeoutSeconds="ten")
    fake.put(path, f.configuration("mixed", good, bad))
    fake.put(path, f.configuration("valid", {**good, "name": "valid.example.com"}))
    running: Running | None = None
    try:
        running = await exporters(Credentials(server=fake.url, ssl_context=False, token=lambda: None),
                                  server_timeout=5, idle_timeout=10)
        await eventually(lambda: running.probed("mixed", "good.example.com", healthy.port)
                         and running.probed("valid", "valid.example.com", healthy.port), 10, "valid ones probed")
        assert running.value("admission_webhook_exporter_inventory_invalid_objects") == 1
        lines = [r for r in caplog.records if r.getMessage() == "invalid_object"]
        assert [r.__dict__["awe_fields"]["reason"] for r in lines] == \
            ["webhook 'bad.example.com': timeoutSeconds must be an integer, got 'ten'"]
        assert lines[0].__dict__["awe_fields"]["name"] == "mixed"
        assert "bad.example.com" not in {labels["name"] for labels, _ in hostile.family_samples(
            generate_latest(running.exporter.registry).decode(), "admission_webhook_info")}

        fixed = {**bad, "timeoutSeconds": 3}
        fake.put(path, f.configuration("mixed", good, fixed))  # MODIFIED, delivered by the watch
        await eventually(lambda: running.probed("mixed", "bad.example.com", healthy.port)
                         and running.value("admission_webhook_exporter_inventory_invalid_objects") == 0, 5,
                         "the fix followed")
        assert running.up() == 1 and running.restarts() == 0
        assert [verb for verb, p in fake.requests if p == path].count("list") == 1
    finally:
        if running is not None:
            await running.exporter.close()  # before the fake goes away, so no watch error is logged
        await fake.stop()


async def test_watch_the_server_ends_at_once_backs_off_instead_of_spinning(exporters: StartExporter) -> None:
    """A fake API server whose every watch ends cleanly at once, saying nothing (an apiserver or proxy that
    refuses quietly): the exporter must back off, not hammer the API with a watch per loop turn."""
    fake = await hostile.FakeKubeApi().start()
    running: Running | None = None
    try:
        # server_timeout=0: the fake closes each watch as soon as it is opened.
        running = await exporters(Credentials(server=fake.url, ssl_context=False, token=lambda: None),
                                  server_timeout=0, idle_timeout=10)
        await asyncio.sleep(3)
        watches = [p for verb, p in fake.requests if verb == "watch" and p == VALIDATING_CONFIGS.path()]
        assert 1 <= len(watches) <= 15, len(watches)  # without backoff: hundreds in 3 s
    finally:
        if running is not None:
            await running.exporter.close()
        await fake.stop()


# ==========================================================================================================
# Churn soak
# ==========================================================================================================
SOAK_SECONDS = float(os.environ.get("AWE_SOAK_SECONDS", "60"))  # the issue's soak is 300 s; the suite runs 60
LIVE_CONFIGS = 5  # configurations alive at once: one added and the oldest removed every second


def _footprint() -> tuple[int, int]:
    """RSS and open fds, as the median of 5 samples over a second (probes open and close sockets)."""
    rss, fds = [], []
    for _ in range(5):
        gc.collect()
        rss.append(hostile.rss_bytes())
        fds.append(hostile.open_fds())
        time.sleep(0.2)
    return int(statistics.median(rss)), int(statistics.median(fds))


@controlplane
@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
async def test_churn_soak(kube: Kube, control_plane: ControlPlane, exporters: StartExporter, netns_host: Any,
                          servers: Servers) -> None:
    """Every second: a webhook configuration added and the oldest removed, an EndpointSlice added and an
    older one removed (endpoints coming and going, ready or not). RSS and open fds at the end stay within
    10% of their value after warm-up; no series is left behind for a deleted object."""
    run = uid()
    namespace = f"churn-{run}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    ca = CertificateAuthority.create()
    url_backends = [await servers.backend(ca.issue(["127.0.0.1"])) for _ in range(3)]
    serving = ca.issue([f"hook-svc.{namespace}.svc"])
    certdir = Path(control_plane.data_dir or "/tmp") / f"churn-{run}"
    certdir.mkdir(parents=True, exist_ok=True)
    (certdir / "tls.crt").write_bytes(serving.cert_pem)
    (certdir / "tls.key").write_bytes(serving.key_pem)
    inside = netns_host.addresses  # .2 answers on 8443; nothing listens on .3 (connection refused, in the netns)
    proc = netns_host.popen([sys.executable, "-m", "tests.netns_backend", "--host", inside[0], "--port", "8443",
                             "--cert", str(certdir / "tls.crt"), "--key", str(certdir / "tls.key"),
                             "--seconds", str(SOAK_SECONDS + 120)], cwd=str(REPO))
    await kube.call(kube.core.create_namespaced_service, namespace, f.service(
        namespace, "hook-svc", [{"name": "https", "port": 443, "targetPort": 8443}]))
    scoped = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}}}
    patterns: list[list[tuple[str, bool | None]]] = [
        [(inside[0], True)], [(inside[0], True), (inside[1], True)], [(inside[1], False)], [], [(inside[1], True)]]
    configs: list[str] = []
    slices: list[str] = []
    running = await exporters(control_plane.kubeconfig_path, interval=1.0)
    started = time.monotonic()
    warm_up = max(10.0, SOAK_SECONDS * 0.2)
    baseline: tuple[int, int] | None = None
    tick = 0
    try:
        await asyncio.wait_for(running.discovery.wait_synced(), 10)
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            tick_started = time.monotonic()
            name = f"churn-{run}-{tick}"
            hooks = [f.webhook("url.example.com", f.url_client(url_backends[tick % 3].port, ca.ca_bundle),
                               policy="Ignore", timeout=2, **scoped),
                     f.webhook("svc.example.com", f.service_client(namespace, "hook-svc", ca.ca_bundle),
                               policy="Ignore", timeout=2, **scoped)]
            await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(name, *hooks))
            configs.append(name)
            if len(configs) > LIVE_CONFIGS:
                await kube.delete_hook(configs.pop(0))
            slice_name = f"hook-svc-{tick}"
            await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace, f.endpoint_slice(
                namespace, "hook-svc", [{"name": "https", "port": 8443, "protocol": "TCP"}],
                patterns[tick % len(patterns)], name=slice_name))
            slices.append(slice_name)
            if len(slices) > 2:
                await kube.call(kube.discovery.delete_namespaced_endpoint_slice, slices.pop(0), namespace)
            if baseline is None and elapsed >= warm_up:
                baseline = await asyncio.to_thread(_footprint)
            tick += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick_started)))
        end = await asyncio.to_thread(_footprint)
        assert baseline is not None

        # No series for a deleted configuration, nor for an endpoint no live slice lists.
        live_endpoints = set()
        for s in slices:
            eps = await kube.call(kube.discovery.read_namespaced_endpoint_slice, s, namespace)
            live_endpoints |= {f"{e.addresses[0]}:8443" for e in eps.endpoints or []
                               if e.conditions is None or e.conditions.ready is not False}

        def consistent() -> bool:
            text = generate_latest(running.exporter.registry).decode()
            seen = {labels["configuration"] for labels, _ in hostile.family_samples(text, "admission_webhook_info")
                    if labels["configuration"].startswith(f"churn-{run}")}
            endpoints = {labels["endpoint"] for labels, _ in
                         hostile.family_samples(text, "admission_webhook_probe_success")
                         if labels["name"] == "svc.example.com" and labels["endpoint"]}
            return seen == set(configs) and endpoints <= live_endpoints

        await eventually(consistent, 5, "series match the live objects")
        assert running.up() == 1 and running.up("endpointslices") == 1
        for name in configs:
            await kube.delete_hook(name)
        deleted, configs = configs, []
        await eventually(lambda: not any(c in running.configurations() for c in deleted), 5, "all churn gone")
        text = generate_latest(running.exporter.registry).decode()
        assert f"churn-{run}" not in text, "series left behind for deleted configurations"
        assert running.up("endpointslices") is None, "no webhook left, so no backend watch either"
        mib = hostile.MiB
        print(f"churn soak {SOAK_SECONDS:.0f}s, {tick} ticks: RSS {baseline[0] / mib:.1f} -> {end[0] / mib:.1f} MiB, "
              f"fds {baseline[1]} -> {end[1]}; probes {running.exporter.stats.by_result}")
        assert end[0] <= baseline[0] * 1.10, f"RSS grew {baseline[0] / mib:.1f} -> {end[0] / mib:.1f} MiB"
        assert end[1] <= baseline[1] * 1.10, f"open fds grew {baseline[1]} -> {end[1]}"
    finally:
        for name in configs:
            await kube.delete_hook(name)
        await kube.call(kube.core.delete_namespace, namespace)
        proc.kill()
