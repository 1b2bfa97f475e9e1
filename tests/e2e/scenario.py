"""The end-to-end scenario shared by tests/test_e2e_alerts.py and tests/test_dashboards.py.

One namespace of our own on the test kube-apiserver, real TLS backends on 127.0.0.1, and webhook
configurations that between them produce every series the alerts and the dashboards read:

=================  ========  ===================================================================  ==========
role               policy    backend                                                              called by
=================  ========  ===================================================================  ==========
``healthy``        Fail      url, a healthy backend                                               every CM
``expiring``       Fail      url, a backend whose serving certificate expires in 3 days           every CM
``fail_open``      Ignore    url, a port that refuses connections                                 every CM
``denying``        Fail      url, a backend that answers ``allowed: false``                       route=deny
``broken``         Fail      url, a port that refuses connections                                 route=broken
``no_endpoints``   Fail      service whose EndpointSlice has no ready endpoint                    never
``risky``          Fail      url, the healthy backend; timeoutSeconds 20, a finding of the audit  never
=================  ========  ===================================================================  ==========

"called by" is which ConfigMap creations in our namespace the kube-apiserver sends to the webhook
(``traffic()``), scoped with the ``awe-e2e.example.com/route`` object label. Every webhook has a
namespaceSelector matching only our namespace, so nothing else in the shared control plane is intercepted.
``risky`` is what the configuration audit (exporter/audit/) reports as ``fail_policy_long_timeout``, a real
finding that costs nothing here: the audit decides what a webhook intercepts the way the apiserver does
(namespaceSelector, objectSelector, matchConditions), so a webhook that intercepts nothing in practice cannot
be flagged for matching kube-system, but a timeout above 15 s is flagged whatever the scope.

The ``no_endpoints`` Service's only endpoint (10.213.7.0/24, the test network namespace's range, which
validation accepts) is never ready, so neither the exporter nor the apiserver ever dials it.

The exporter runs in-process as ``serve`` would (live discovery with the admin kubeconfig, probe interval
1 s), with the canary on in our namespace (``--canary-namespace``, interval 1 s: healthy, expiring and denying are
reachable through the apiserver, broken and no_endpoints are not, risky's dry run is answered by no_endpoints'
failure first (inconclusive), fail_open is not canaried: Ignore),
and serves /metrics on 127.0.0.1; kubernetes client calls run in a thread so that this event loop keeps
serving the backends, the exporter and its probes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.backend import Behaviour
from exporter.canary import Canary, CanaryConfig
from exporter.discovery import Discovery
from exporter.kubeapi import KubeApi, load_credentials
from exporter.pki import CertificateAuthority
from exporter.webconfig import WebSecurity
from tests import factories as f
from tests.conftest import Servers
from tests.kube import Kube

ROUTE_LABEL = "awe-e2e.example.com/route"
RISKY_TIMEOUT_S = 20  # > exporter/audit/rules.py's LONG_TIMEOUT_SECONDS (15)
EXPIRING_IN = dt.timedelta(days=3)
PROBE_INTERVAL_S = 1.0
NETNS_ADDRESS = "10.213.7.200"  # inside the netns /24 validation accepts; never ready, never dialled


@dataclass(frozen=True)
class Hook:
    """One webhook of the scenario, with the labels the exporter and the apiserver give it."""

    role: str
    configuration: str
    name: str
    failure_policy: str
    endpoint: str  # "" when there is nothing to dial
    type: str = "validating"

    @property
    def labels(self) -> dict[str, str]:
        return {"configuration": self.configuration, "name": self.name, "type": self.type}


@dataclass
class Scenario:
    namespace: str
    hooks: dict[str, Hook]
    configurations: list[str]
    exporter: Exporter
    exporter_port: int
    kube: Kube

    def __getitem__(self, role: str) -> Hook:
        return self.hooks[role]

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.exporter.registry.get_sample_value(metric, labels)

    async def traffic(self, rounds: int, pause_s: float = 0.3) -> dict[str, int]:
        """Create ConfigMaps in our namespace so the apiserver calls the webhooks: per round one plain (allowed
        by healthy/expiring, failing open on fail_open), one denied by ``denying``, one rejected because
        ``broken`` cannot be called. Returns how many creations were allowed and rejected."""
        from kubernetes.client.exceptions import ApiException

        counts = {"allowed": 0, "rejected": 0}
        for i in range(rounds):
            for route in ("plain", "deny", "broken"):
                body = {"metadata": {"generateName": f"{route}-", "labels": {ROUTE_LABEL: route}},
                        "data": {"round": str(i)}}
                try:
                    await self.kube.call(self.kube.core.create_namespaced_config_map, self.namespace, body)
                    counts["allowed"] += 1
                except ApiException:
                    counts["rejected"] += 1
            await asyncio.sleep(pause_s)
        return counts

    async def wait_probed(self, within_s: float = 20.0) -> None:
        """Every webhook has a probe verdict in the exporter's registry (the apiserver saw them too)."""
        started = time.monotonic()
        for hook in self.hooks.values():
            while self.value("admission_webhook_probe_success", **hook.labels, endpoint=hook.endpoint) is None:
                assert time.monotonic() - started < within_s, f"{hook.role} not probed within {within_s}s"
                await asyncio.sleep(0.05)


def _refusing_port() -> socket.socket:
    """A port that refuses connections and that nobody else can take: bound, never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _ns_scoped(namespace: str, route: str | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    if route is not None:
        scope["objectSelector"] = {"matchLabels": {ROUTE_LABEL: route}}
    return scope


@pytest.fixture
async def scenario(kube_api: Any, control_plane: Any, servers: Servers) -> AsyncIterator[Scenario]:
    """``open_scenario`` for one test."""
    async with open_scenario(kube_api, control_plane, servers) as running:
        yield running


@contextlib.asynccontextmanager
async def open_scenario(kube_api: Any, control_plane: Any, servers: Servers) -> AsyncIterator[Scenario]:
    """The webhooks above created in the control plane, and the exporter following them (ready: every webhook
    probed once). Configurations are deleted and the exporter closed afterwards; the namespace stays (no
    namespace controller runs in the test control plane to finalise its deletion). The backends belong to
    ``servers``, which stops them."""
    kube = Kube(kube_api)
    tag = uuid.uuid4().hex[:6]
    namespace = f"e2e-{tag}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    ca = CertificateAuthority.create("e2e CA")
    healthy = await servers.backend(ca.issue(["127.0.0.1"]))
    expiring = await servers.backend(ca.issue(["127.0.0.1"],
                                              valid_until=dt.datetime.now(dt.UTC) + EXPIRING_IN))
    denying = await servers.backend(ca.issue(["127.0.0.1"]), Behaviour(allowed=False))
    refusing = _refusing_port()
    try:
        async with _running(kube, control_plane, namespace, ca, healthy.port, expiring.port, denying.port,
                            refusing.getsockname()[1]) as running:
            yield running
    finally:
        refusing.close()


@contextlib.asynccontextmanager
async def _running(kube: Kube, control_plane: Any, namespace: str, ca: CertificateAuthority, healthy: int,
                   expiring: int, denying: int, dead: int) -> AsyncIterator[Scenario]:
    """``open_scenario``'s objects and exporter, given the backends' ports (``dead`` refuses connections)."""
    tag = namespace.removeprefix("e2e-")
    await kube.call(kube.core.create_namespaced_service, namespace, f.service(
        namespace, "hook-svc", [{"name": "https", "port": 443, "targetPort": 8443}]))
    await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace, f.endpoint_slice(
        namespace, "hook-svc", [{"name": "https", "port": 8443, "protocol": "TCP"}], [(NETNS_ADDRESS, False)]))

    main, risky_conf = f"e2e-{tag}", f"e2e-{tag}-risky"
    bundle = ca.ca_bundle

    def name(role: str) -> str:
        return f"{role.replace('_', '-')}-{tag}.e2e.example.com"

    specs: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [  # role, conf, policy, client, scope
        ("healthy", main, "Fail", f.url_client(healthy, bundle), _ns_scoped(namespace)),
        ("expiring", main, "Fail", f.url_client(expiring, bundle), _ns_scoped(namespace)),
        ("fail_open", main, "Ignore", f.url_client(dead, bundle), _ns_scoped(namespace)),
        ("denying", main, "Fail", f.url_client(denying, bundle), _ns_scoped(namespace, "deny")),
        ("broken", main, "Fail", f.url_client(dead, bundle), _ns_scoped(namespace, "broken")),
        ("no_endpoints", main, "Fail", f.service_client(namespace, "hook-svc", bundle),
         _ns_scoped(namespace, "never")),
        ("risky", risky_conf, "Fail", f.url_client(healthy, bundle),
         {**_ns_scoped(namespace, "never"), "timeoutSeconds": RISKY_TIMEOUT_S}),
    ]
    endpoints = {"healthy": healthy, "expiring": expiring, "fail_open": dead, "denying": denying, "broken": dead,
                 "risky": healthy}
    hooks = {role: Hook(role, conf, name(role), policy,
                        f"127.0.0.1:{endpoints[role]}" if role in endpoints else "")
             for role, conf, policy, _, _ in specs}
    by_conf: dict[str, list[dict[str, Any]]] = {}
    for role, conf, policy, client, scope in specs:
        # 3 s unless the scope says otherwise: a refusing port fails at once; it only bounds a stuck backend.
        hook = f.webhook(name(role), client, policy=policy, timeout=None, **{"timeoutSeconds": 3, **scope})
        by_conf.setdefault(conf, []).append(hook)
    created: list[str] = []
    exporter: Exporter | None = None
    # `serve --web.config.file` with a file that asks for nothing: plain HTTP still, and the web configuration's
    # reload families on /metrics (its runbook's queries have data)
    web_dir = Path(tempfile.mkdtemp(prefix="awe-e2e-web-"))
    (web_dir / "web.yml").write_text("")
    try:
        for conf, webhooks in by_conf.items():
            await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(conf, *webhooks))
            created.append(conf)
        discovery = Discovery(KubeApi(load_credentials(str(control_plane.kubeconfig_path))))
        canary = Canary(discovery.api, CanaryConfig(namespace=namespace, interval=PROBE_INTERVAL_S))
        exporter = Exporter(interval=PROBE_INTERVAL_S, discovery=discovery, canary=canary)
        await exporter.start()
        port = await exporter.serve("127.0.0.1", 0, security=WebSecurity(web_dir / "web.yml"))
        running = Scenario(namespace=namespace, hooks=hooks, configurations=created, exporter=exporter,
                           exporter_port=port, kube=kube)
        await asyncio.wait_for(discovery.wait_synced(), 15)
        await running.wait_probed()
        yield running
    finally:
        if exporter is not None:
            await exporter.close()
        shutil.rmtree(web_dir, ignore_errors=True)
        for conf in created:
            with contextlib.suppress(Exception):
                await kube.call(kube.admission.delete_validating_webhook_configuration, conf)
