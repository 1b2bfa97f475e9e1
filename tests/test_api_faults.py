"""A flaky Kubernetes API: restarts, silently dropped and black-holed connections, 410 Gone, revoked RBAC,
invalid objects and watches that end at once.

These run against the real kube-apiserver + etcd (`tests/controlplane`), except the cases the real apiserver
cannot produce, served by a fake (`hostile.FakeKubeApi`). Every case ends with the exporter serving the
right state again, without a restart, and with the watch-health metrics telling what happened.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

from exporter.kubeapi import VALIDATING_CONFIGS, Credentials
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests import hostile
from tests.conftest import Servers, StartExporter
from tests.controlplane.fixtures import EXPORTER_GROUP, EXPORTER_USER, api_client_for
from tests.controlplane.harness import ControlPlane
from tests.helpers import eventually, uid
from tests.kube import Kube, LiveExporter, exporter_role

controlplane = pytest.mark.controlplane


@pytest.fixture
def exporters(live_exporters: StartExporter) -> StartExporter:
    """Live exporters probing every second."""
    return functools.partial(live_exporters, interval=1.0)


class UpRecorder:
    """Samples watch_up of one resource every 20 ms, to tell afterwards whether it was ever 0."""

    def __init__(self, running: LiveExporter, resource: str = VALIDATING_CONFIGS.plural) -> None:
        self.seen: set[float | None] = set()
        self._task = asyncio.create_task(self._sample(running, resource))

    async def _sample(self, running: LiveExporter, resource: str) -> None:
        while True:
            self.seen.add(running.up(resource))
            await asyncio.sleep(0.02)

    async def stop(self) -> set[float | None]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.seen


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
        # (ClientPayloadError), then perhaps refused connections while it was down, and a 410 where the resumed
        # resourceVersion is older than what the restarted apiserver's fresh watch cache holds (a relist).
        whys = restart_lines(caplog, VALIDATING_CONFIGS.plural)
        assert whys and all(re.match(r"^(ClientPayloadError|ClientConnectorError|ServerDisconnectedError"
                                     r"|ClientOSError|ApiError|410 Gone)", why) for why in whys), whys
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
    running: LiveExporter | None = None
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
    running: LiveExporter | None = None
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

