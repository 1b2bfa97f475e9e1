"""The canary on the real control plane: a real kube-apiserver calls real TLS webhook backends through the
harness's egress proxy, the only way from the apiserver to a backend here (``proxy_url_webhooks``), while the
exporter probes the same backends directly, as it does from its Pod.

The exporter runs in-process as the chart's ServiceAccount, with the RBAC the chart renders for
``canary.enabled=true`` (the read-only ClusterRole and the canary's Role in the test's namespace), on a bound token
from the TokenRequest API. The control plane is this module's own: its egress proxy refuses destinations (the
firewall between control plane and nodes), and its apiserver writes an audit log, which is how the last test
knows what the exporter sent: from the apiserver's record, not from the exporter's code.

1. healthy: the canary succeeds, and a webhook that denies the canary object counts as reachable;
2. path broken: the proxy drops the apiserver's route to one backend; the direct probe passes, the canary fails
   with the apiserver's exact text (the same a user gets), AdmissionWebhookCanaryFailing fires in a real
   Prometheus evaluating the committed rules (``for:`` shortened), and lifting the refusal clears both;
3. not canaried: sideEffects Some, selectors no object satisfies, a webhook scoped to another namespace (and
   failurePolicy Ignore), each with its reason;
4. RBAC: the chart's Role deleted, the canary says ``forbidden`` (never a webhook failure) while the probes go on;
   every request the exporter made is in the audit log, and every create carries ``dryRun=All``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.backend import Behaviour
from exporter.canary import CANARY_LABEL, Canary, CanaryConfig
from exporter.discovery import Discovery
from exporter.kubeapi import Credentials, KubeApi
from exporter.model import WebhookKey
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.chart import apply, dynamic_client, ensure_namespace, only, require_helm, template
from tests.conftest import Servers
from tests.controlplane.fixtures import REQUIRE_ENV
from tests.controlplane.harness import ControlPlane, ControlPlaneError, ControlPlaneUnavailable
from tests.e2e import prometheus as e2e_prometheus
from tests.e2e.prometheus import Prometheus
from tests.helpers import eventually, uid, unavailable
from tests.kube import Kube

pytestmark = [pytest.mark.controlplane, pytest.mark.slow, pytest.mark.timeout(240)]
make_prometheus = e2e_prometheus.make_prometheus  # the fixture, for the path-broken test

RELEASE, RELEASE_NAMESPACE = "admission-webhook-exporter", "monitoring"
USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
INTERVAL_S = 1.0  # canary and probe interval: seconds, so each test sees several rounds
WITHIN_S = 45.0  # bound on any wait for a verdict (interval 1 s; the webhook timeout below is 2 s)
HOOK_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def canary_cp() -> Iterator[ControlPlane]:
    """This module's control plane: url webhooks through the egress proxy (so it can refuse them), audit log."""
    try:
        cp = ControlPlane(proxy_url_webhooks=True, audit_log=True)
        cp.start()
    except ControlPlaneUnavailable as e:
        unavailable("kube-apiserver/etcd", e.reason, REQUIRE_ENV)
    except ControlPlaneError as e:
        pytest.fail(f"control plane failed to start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@dataclass
class Rig:
    """One test's namespace, the chart's RBAC for a canary there, a CA for backends, and the exporter."""

    cp: ControlPlane
    kube: Kube
    namespace: str
    ca: CertificateAuthority
    exporter: Exporter
    port: int
    role: dict[str, Any]
    configurations: list[str]

    @property
    def canary(self) -> Canary:
        assert self.exporter.canary is not None
        return self.exporter.canary

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.exporter.registry.get_sample_value(metric, labels)

    def hook(self, name: str, port: int, **extra: Any) -> dict[str, Any]:
        """A Fail webhook on ConfigMap CREATE in this test's namespace only, 2 s timeout."""
        scope = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}}}
        return f.webhook(name, f.url_client(port, self.ca.ca_bundle), timeout=HOOK_TIMEOUT_S, **{**scope, **extra})

    async def install(self, *hooks: dict[str, Any]) -> str:
        name = f"canary-{uid()}"
        await self.kube.call(self.kube.admission.create_validating_webhook_configuration, f.configuration(name, *hooks))
        self.configurations.append(name)
        return name


def _key(configuration: str, name: str) -> dict[str, str]:
    return {"configuration": configuration, "name": name, "type": "validating"}


@contextlib.asynccontextmanager
async def rig(cp: ControlPlane, tmp_path: Path) -> AsyncIterator[Rig]:
    from kubernetes import client

    from tests.controlplane.fixtures import api_client_for

    helm = require_helm()
    api = api_client_for(cp)
    kube = Kube(api)
    namespace = f"canary-{uid()}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    docs = await asyncio.to_thread(template, helm, "canary.enabled=true", f"canary.namespace={namespace}",
                                   f"canary.interval={INTERVAL_S:g}", release=RELEASE, namespace=RELEASE_NAMESPACE)
    deployment = only(docs, "Deployment")
    assert f"--canary-namespace={namespace}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    rbac = [only(docs, k) for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    dyn = await asyncio.to_thread(dynamic_client, api, tmp_path)
    await asyncio.to_thread(ensure_namespace, dyn, RELEASE_NAMESPACE)
    for doc in rbac:  # for real: the exporter runs with exactly these
        await asyncio.to_thread(apply, dyn, doc, dry_run=False)
    token = (await kube.call(kube.core.create_namespaced_service_account_token, RELEASE, RELEASE_NAMESPACE,
                             {"spec": {"expirationSeconds": 3600}})).status.token
    credentials = Credentials(server=cp.server_url, ssl_context=cp.ssl_context(), token=lambda: f"Bearer {token}")
    discovery = Discovery(KubeApi(credentials))
    canary = Canary(discovery.api, CanaryConfig(namespace=namespace, interval=INTERVAL_S))
    exporter = Exporter(interval=INTERVAL_S, discovery=discovery, canary=canary)
    running = Rig(cp, kube, namespace, CertificateAuthority.create("canary CA"), exporter, 0, rbac[3], [])
    try:
        await exporter.start()
        running.port = await exporter.serve("127.0.0.1", 0)
        await asyncio.wait_for(discovery.wait_synced(), 15)
        yield running
    finally:
        await exporter.close()
        for name in running.configurations:
            with contextlib.suppress(Exception):
                await kube.call(kube.admission.delete_validating_webhook_configuration, name)
        with contextlib.suppress(Exception):
            await kube.call(client.RbacAuthorizationV1Api(api).delete_namespaced_role_binding, RELEASE, namespace)
        api.close()


def message(err: Any) -> str:
    return str(json.loads(err.body or "{}").get("message", err))


# ------------------------------------------------------------------------------------------------------------
async def test_a_healthy_webhook_and_one_that_denies_the_canary_both_count_as_reachable(
        canary_cp: ControlPlane, servers: Servers, tmp_path: Path) -> None:
    async with rig(canary_cp, tmp_path) as r:
        slow = await servers.backend(r.ca.issue(["127.0.0.1"]), Behaviour(delay_seconds=0.3))
        denying = await servers.backend(r.ca.issue(["127.0.0.1"]), Behaviour(allowed=False, message="no canaries"))
        not_deny = {"matchExpressions": [{"key": "route", "operator": "NotIn", "values": ["deny"]}]}
        conf = await r.install(r.hook("slow.canary.example.com", slow.port, objectSelector=not_deny),
                               r.hook("denying.canary.example.com", denying.port,
                                      objectSelector={"matchLabels": {"route": "deny"}}))
        ok, deny = _key(conf, "slow.canary.example.com"), _key(conf, "denying.canary.example.com")
        await eventually(lambda: r.value("admission_webhook_canary_success", **ok) == 1
                         and r.value("admission_webhook_canary_success", **deny) == 1, WITHIN_S,
                         "both webhooks canaried through the apiserver")
        assert r.canary.identity is not None and r.canary.identity.username == USER  # for matchConditions
        results = r.canary.status().results
        assert results[WebhookKey(**ok)].outcome == "admitted"  # type: ignore[arg-type]
        denied = results[WebhookKey(**deny)]  # type: ignore[arg-type]
        assert (denied.outcome, denied.status) == ("denied", 403)
        assert denied.detail == 'admission webhook "denying.canary.example.com" denied the request: no canaries'
        # The apiserver called each backend with the canary's object, as a dry run.
        canary_calls = [c for c in slow.calls if c.name.startswith("awe-canary-")]
        assert canary_calls and {(c.kind, c.operation, c.namespace) for c in canary_calls} == {
            ("ConfigMap", "CREATE", r.namespace)}
        assert [c for c in denying.calls if c.name.startswith("awe-canary-")]
        target = r.canary.targets[WebhookKey(**deny)]  # type: ignore[arg-type]
        assert json.loads(target.body)["metadata"]["labels"] == {"route": "deny", CANARY_LABEL: "true"}
        # The apiserver waited for the slow backend: the round trip includes its 0.3 s (a lower bound only).
        assert (r.value("admission_webhook_canary_duration_seconds", **ok) or 0) >= 0.3
        for labels in (ok, deny):
            assert r.value("admission_webhook_probe_success", **labels,
                           endpoint=f"127.0.0.1:{slow.port if labels is ok else denying.port}") == 1
        # Nothing was stored: dry runs only.
        listed = await r.kube.call(r.kube.core.list_namespaced_config_map, r.namespace)
        assert not [c for c in listed.items if c.metadata.name.startswith("awe-canary-")]


async def test_a_broken_control_plane_path_fails_the_canary_while_the_probe_passes_and_alerts(
        canary_cp: ControlPlane, servers: Servers, tmp_path: Path, make_prometheus: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    async with rig(canary_cp, tmp_path) as r:
        backend = await servers.backend(r.ca.issue(["127.0.0.1"]))
        name = "firewalled.canary.example.com"
        conf = await r.install(r.hook(name, backend.port))
        labels, endpoint = _key(conf, name), f"127.0.0.1:{backend.port}"
        await eventually(lambda: r.value("admission_webhook_canary_success", **labels) == 1
                         and r.value("admission_webhook_probe_success", **labels, endpoint=endpoint) == 1,
                         WITHIN_S, "canary and probe pass before the firewall")
        prom: Prometheus = await asyncio.to_thread(make_prometheus, exporter_port=r.port)
        await asyncio.to_thread(prom.wait_for_targets)

        canary_cp.refuse(endpoint, "drop")  # the control plane's route to this backend only, as a firewall would
        try:
            await eventually(lambda: r.value("admission_webhook_canary_success", **labels) == 0, WITHIN_S,
                             "the canary sees the broken path")
            assert r.value("admission_webhook_probe_success", **labels, endpoint=endpoint) == 1  # direct path
            result = r.canary.status().results[WebhookKey(**labels)]  # type: ignore[arg-type]
            assert result.reason == "timeout", result
            assert r.value("admission_webhook_canary_failure_info", **labels, reason="timeout") == 1
            # The apiserver's exact text: what a user creating an object there is told.
            with pytest.raises(ApiException) as user:
                await r.kube.call(r.kube.core.create_namespaced_config_map, r.namespace,
                                  {"metadata": {"generateName": "user-"}})
            assert message(user.value) == result.detail, (message(user.value), result.detail)
            assert result.detail.startswith(f'Internal error occurred: failed calling webhook "{name}": failed to '
                                            f'call webhook: Post "https://{endpoint}/validate?timeout=2s"')

            def firing() -> list[dict[str, Any]]:
                return [a for a in prom.alerts() if a["labels"]["alertname"] == "AdmissionWebhookCanaryFailing"
                        and a["labels"].get("name") == name and a["state"] == "firing"]

            [alert] = await asyncio.to_thread(prom.wait_for, firing, timeout_s=WITHIN_S,
                                              what="AdmissionWebhookCanaryFailing firing")
            assert alert["labels"]["severity"] == "critical" and alert["labels"]["configuration"] == conf
            assert "timeout" in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"].endswith("/AdmissionWebhookCanaryFailing.md")
        finally:
            canary_cp.unrefuse(endpoint)
        await eventually(lambda: r.value("admission_webhook_canary_success", **labels) == 1, WITHIN_S,
                         "the canary passes again once the route is back")
        assert r.value("admission_webhook_canary_failure_info", **labels, reason="timeout") is None

        def cleared() -> bool:
            return not [a for a in prom.alerts() if a["labels"].get("name") == name]

        await asyncio.to_thread(prom.wait_for, cleared, timeout_s=WITHIN_S, what="the alert resolved")
        refused = [e for e in canary_cp.egress_log() if e.get("target") == endpoint and e["result"] == "dropped"]
        assert refused, "the proxy never dropped a CONNECT: the failure came from elsewhere"


async def test_webhooks_the_canary_cannot_reach_say_why(canary_cp: ControlPlane, servers: Servers,
                                                        tmp_path: Path) -> None:
    async with rig(canary_cp, tmp_path) as r:
        backend = await servers.backend(r.ca.issue(["127.0.0.1"]))
        unsatisfiable = {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]},
                                              {"key": "a", "operator": "NotIn", "values": ["x"]}]}
        # sideEffects Some: the v1 API refuses it now, v1beta1 admitted it and clusters still hold such objects,
        # so it goes into etcd the way an old apiserver stored it.
        legacy = f"canary-legacy-{uid()}"
        canary_cp.etcd_put_object(f"/registry/validatingwebhookconfigurations/{legacy}", f.configuration(
            legacy, r.hook("side-effects.canary.example.com", backend.port, side_effects="Some",
                           objectSelector={"matchLabels": {"route": "some"}})))
        r.configurations.append(legacy)
        conf = await r.install(
            r.hook("unsatisfiable.canary.example.com", backend.port, objectSelector=unsatisfiable),
            r.hook("elsewhere.canary.example.com", backend.port,
                   namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "somewhere-else"}}),
            r.hook("fail-open.canary.example.com", backend.port, policy="Ignore",
                   objectSelector={"matchLabels": {"route": "ignore"}}))
        expected = {(legacy, "side-effects.canary.example.com"): "side_effects",
                    (conf, "unsatisfiable.canary.example.com"): "object_not_selected",
                    (conf, "elsewhere.canary.example.com"): "namespace_not_selected",
                    (conf, "fail-open.canary.example.com"): "failure_policy_ignore"}
        await eventually(lambda: all(r.value("admission_webhook_not_canaried_info", **_key(c, n), reason=why) == 1
                                     for (c, n), why in expected.items()), WITHIN_S, "every webhook has its reason")
        await asyncio.sleep(3 * INTERVAL_S)  # rounds in which a wrongly planned canary would have been sent
        for c, n in expected:
            assert r.value("admission_webhook_canary_success", **_key(c, n)) is None, n
            assert r.value("admission_webhook_probe_success", **_key(c, n),
                           endpoint=f"127.0.0.1:{backend.port}") == 1, n  # the probes go on regardless
        assert not [c for c in backend.calls if c.name.startswith("awe-canary-")]
        assert not r.canary.targets


async def test_without_the_role_the_canary_says_forbidden_and_never_writes(
        canary_cp: ControlPlane, servers: Servers, tmp_path: Path) -> None:
    from kubernetes import client

    async with rig(canary_cp, tmp_path) as r:
        backend = await servers.backend(r.ca.issue(["127.0.0.1"]))
        name = "rbac.canary.example.com"
        conf = await r.install(r.hook(name, backend.port))
        labels, endpoint = _key(conf, name), f"127.0.0.1:{backend.port}"
        await eventually(lambda: r.value("admission_webhook_canary_success", **labels) == 1, WITHIN_S,
                         "canaried with the chart's Role")
        rbac = client.RbacAuthorizationV1Api(r.kube.api)
        await r.kube.call(rbac.delete_namespaced_role, r.role["metadata"]["name"], r.namespace)
        await eventually(lambda: r.value("admission_webhook_canary_inconclusive_info", **labels,
                                         reason="forbidden") == 1, WITHIN_S, "the canary reports RBAC")
        result = r.canary.status().results[WebhookKey(**labels)]  # type: ignore[arg-type]
        assert result.status == 403 and "cannot create resource" in result.detail, result
        assert r.value("admission_webhook_canary_success", **labels) is None  # not a webhook failure
        assert r.value("admission_webhook_canary_failure_info", **labels, reason="forbidden") is None
        started = time.monotonic()
        await eventually(lambda: (r.value("admission_webhook_probe_timestamp_seconds", **labels, endpoint=endpoint)
                                  or 0) > time.time() - 1, WITHIN_S, "probes go on")
        assert r.value("admission_webhook_probe_success", **labels, endpoint=endpoint) == 1
        assert time.monotonic() - started < WITHIN_S

    # What the exporter sent, as the apiserver recorded it (this test's requests and the earlier tests' alike).
    mine = [e for e in canary_cp.audit_events() if e["user"]["username"] == USER]
    verbs = {e["verb"] for e in mine}
    assert verbs <= {"list", "watch", "create"}, verbs  # no get, update, patch, delete
    creates = [e for e in mine if e["verb"] == "create"]
    assert creates and all("dryRun=All" in e["requestURI"] for e in creates), [
        e["requestURI"] for e in creates if "dryRun=All" not in e["requestURI"]]
    resources = {(e["objectRef"]["resource"], e["objectRef"].get("namespace", "")) for e in creates}
    assert ("configmaps", r.namespace) in resources
    assert resources <= {("selfsubjectreviews", "")} | {("configmaps", e["objectRef"].get("namespace", ""))
                                                        for e in creates if e["objectRef"]["resource"] == "configmaps"}
    codes = [e["responseStatus"]["code"] for e in creates if e["objectRef"].get("namespace") == r.namespace]
    assert 201 in codes and 403 in codes, codes
