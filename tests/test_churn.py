"""Churn soak: webhook configurations and EndpointSlices come and go every second against the real
kube-apiserver; memory and file descriptors stay flat and no series outlives its object."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

from exporter.pki import CertificateAuthority
from tests import factories as f
from tests import hostile
from tests.conftest import Servers, StartExporter
from tests.controlplane.harness import ControlPlane
from tests.helpers import eventually, uid
from tests.kube import Kube

REPO = Path(__file__).parent.parent

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


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
async def test_churn_soak(kube: Kube, control_plane: ControlPlane, live_exporters: StartExporter, netns_host: Any,
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
    running = await live_exporters(control_plane.kubeconfig_path, interval=1.0)
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
              f"fds {baseline[1]} -> {end[1]}; probes {running.exporter.scheduler.counts().by_result}")
        assert end[0] <= baseline[0] * 1.10, f"RSS grew {baseline[0] / mib:.1f} -> {end[0] / mib:.1f} MiB"
        assert end[1] <= baseline[1] * 1.10, f"open fds grew {baseline[1]} -> {end[1]}"
    finally:
        for name in configs:
            await kube.delete_hook(name)
        await kube.call(kube.core.delete_namespace, namespace)
        proc.kill()
