"""Live discovery against a real kube-apiserver + etcd (tests/controlplane): list, watch, follow, recover.

The exporter runs in-process (its own Exporter and Discovery, talking HTTPS to the test apiserver with a
kubeconfig); the kubernetes client calls are run in a thread so the backends served by this event loop can
answer the apiserver's webhook calls meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.conftest import Servers
from tests.controlplane.fixtures import EXPORTER_GROUP, EXPORTER_USER, api_client_for
from tests.controlplane.harness import ControlPlane
from tests.helpers import eventually, uid
from tests.kube import Kube, exporter_role

pytestmark = pytest.mark.controlplane
REPO = Path(__file__).parent.parent
CHANGE_DEADLINE = 2.0  # the issue's promise: a change reaches /metrics within 2 s


def ns_scoped(namespace: str) -> dict[str, Any]:
    """Scope a test webhook to its own namespace, so a Fail webhook cannot wedge other tests."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


async def test_webhook_add_edit_delete_follow_within_two_seconds(kube: Kube, control_plane: ControlPlane,
                                                                 live_exporters, servers: Servers) -> None:
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    running = await live_exporters(control_plane.kubeconfig_path)
    await asyncio.wait_for(running.discovery.wait_synced(), 10)
    name = f"follow-{uid()}"
    hook = f.webhook("follow.example.com", f.url_client(backend.port, ca.ca_bundle), policy="Ignore",
                     **ns_scoped("nowhere"))
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(name, hook))
    labels = {"configuration": name, "name": "follow.example.com", "type": "validating"}
    endpoint = {**labels, "endpoint": f"127.0.0.1:{backend.port}"}
    try:
        added = await eventually(lambda: running.value("admission_webhook_probe_success", **endpoint) == 1,
                                 CHANGE_DEADLINE, what="new webhook probed")
        hook["timeoutSeconds"] = 7
        await kube.call(kube.admission.replace_validating_webhook_configuration, name,
                        {**f.configuration(name, hook), "metadata": {"name": name, "resourceVersion": (
                            await kube.call(kube.admission.read_validating_webhook_configuration, name)
                        ).metadata.resource_version}})
        edited = await eventually(lambda: running.value("admission_webhook_timeout_seconds", **labels) == 7,
                                  CHANGE_DEADLINE, what="edit visible")
    finally:
        await kube.call(kube.admission.delete_validating_webhook_configuration, name)
    deleted = await eventually(lambda: running.value("admission_webhook_info", **labels, failure_policy="Ignore",
                                                     side_effects="None", match_policy="Equivalent", backend="url",
                                                     service_namespace="", service_name="",
                                                     url=f"https://127.0.0.1:{backend.port}/validate") is None
                               and running.value("admission_webhook_probe_success", **endpoint) is None,
                               CHANGE_DEADLINE, what="deleted webhook's series gone")
    print(f"add->probed {added:.3f}s, edit->metrics {edited:.3f}s, delete->gone {deleted:.3f}s")


async def test_service_endpoints_scaled_to_zero_and_back(kube: Kube, control_plane: ControlPlane, live_exporters,
                                                         netns_host: Any) -> None:
    namespace = f"svc-{uid()}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    ca = CertificateAuthority.create()
    serving = ca.issue([f"hook-svc.{namespace}.svc"])
    tmp = Path(control_plane.data_dir or "/tmp") / f"netns-backend-{namespace}"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tls.crt").write_bytes(serving.cert_pem)
    (tmp / "tls.key").write_bytes(serving.key_pem)
    address = netns_host.address
    proc = netns_host.popen([*_python(), "-m", "tests.netns_backend", "--host", address, "--port", "8443",
                             "--cert", str(tmp / "tls.crt"), "--key", str(tmp / "tls.key"), "--seconds", "120"],
                            cwd=str(REPO))
    assert proc is not None
    await kube.call(kube.core.create_namespaced_service, namespace, f.service(
        namespace, "hook-svc", [{"name": "https", "port": 443, "targetPort": "webhook"}]))
    slice_name = "hook-svc-1"

    def eps(ready: bool) -> dict[str, Any]:
        return f.endpoint_slice(namespace, "hook-svc", [{"name": "https", "port": 8443, "protocol": "TCP"}],
                                [(address, ready)], name=slice_name)

    await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace, eps(True))
    # An unrelated slice in the same namespace must not be followed.
    await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace,
                    f.endpoint_slice(namespace, "unrelated", [{"name": "x", "port": 1}], [("10.213.7.99", True)]))
    name = f"svc-hook-{uid()}"
    hook = f.webhook("svc.example.com", f.service_client(namespace, "hook-svc", ca.ca_bundle), policy="Ignore",
                     **ns_scoped("nowhere"))
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(name, hook))
    running = await live_exporters(control_plane.kubeconfig_path)
    labels = {"configuration": name, "name": "svc.example.com", "type": "validating"}
    try:
        await eventually(lambda: running.value("admission_webhook_endpoints_ready", **labels) == 1, within=10,
                         what="service resolved to its endpoint")
        await eventually(lambda: running.value("admission_webhook_probe_success", **labels,
                                               endpoint=f"{address}:8443") == 1, within=10,
                         what="endpoint in the network namespace answers")
        assert len(running.discovery.inventory.endpoint_slices) == 1  # 'unrelated' is not followed

        await kube.call(kube.discovery.replace_namespaced_endpoint_slice, slice_name, namespace, {
            **eps(False), "metadata": {**eps(False)["metadata"], "resourceVersion": (await kube.call(
                kube.discovery.read_namespaced_endpoint_slice, slice_name, namespace)).metadata.resource_version}})
        lost = await eventually(lambda: running.value("admission_webhook_endpoints_ready", **labels) == 0
                                and running.value("admission_webhook_probe_failure_info", **labels, endpoint="",
                                                  reason="no_endpoints") == 1, CHANGE_DEADLINE, what="no_endpoints")
        assert running.value("admission_webhook_probe_success", **labels, endpoint=f"{address}:8443") is None
        await kube.call(kube.discovery.delete_namespaced_endpoint_slice, slice_name, namespace)
        await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace, eps(True))
        back = await eventually(lambda: running.value("admission_webhook_probe_success", **labels,
                                                      endpoint=f"{address}:8443") == 1, CHANGE_DEADLINE,
                                what="endpoint back")
        print(f"endpoint lost -> metrics {lost:.3f}s, back -> probed {back:.3f}s")
    finally:
        await kube.call(kube.admission.delete_validating_webhook_configuration, name)
        proc.kill()


async def test_backends_watched_cluster_wide_above_the_threshold_keep_the_same_inventory(
        kube: Kube, control_plane: ControlPlane, live_exporters, netns_host: Any) -> None:
    """Two exporters on one cluster: one watching backends per namespace, one cluster-wide (its threshold 1). They
    keep the same Services and slices (the referenced ones only: not a Service of the same name in a namespace no
    webhook names, nor another Service's slice) and follow the same change. The endpoints are in a network
    namespace of this test, and nothing listens there: probes are refused, never sent elsewhere."""
    suffix = uid()
    spaces = [f"wide-{suffix}-{i}" for i in range(3)]  # the third is named by no webhook
    address = netns_host.address
    ports = [{"name": "https", "port": 8443, "protocol": "TCP"}]
    for namespace in spaces:
        await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
        await kube.call(kube.core.create_namespaced_service, namespace, f.service(
            namespace, "hook-svc", [{"name": "https", "port": 443, "targetPort": "webhook"}]))
        await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace,
                        f.endpoint_slice(namespace, "hook-svc", ports, [(address, True)], name="hook-svc-1"))
        await kube.call(kube.discovery.create_namespaced_endpoint_slice, namespace,
                        f.endpoint_slice(namespace, "other", ports, [(address, True)], name="other-1"))
    name = f"wide-{suffix}"
    hooks = [f.webhook(f"w{i}.example.com", f.service_client(spaces[i], "hook-svc", ""), policy="Ignore",
                       **ns_scoped("nowhere")) for i in range(2)]
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(name, *hooks))
    per_namespace = await live_exporters(control_plane.kubeconfig_path)
    cluster_wide = await live_exporters(control_plane.kubeconfig_path, cluster_wide_above=1)

    def ready(running: Any, i: int) -> float | None:
        return running.value("admission_webhook_endpoints_ready", configuration=name, name=f"w{i}.example.com",
                             type="validating")

    def backends(running: Any) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        inventory = running.discovery.inventory
        return ({k for k in inventory.services if k[0] in spaces}, {k for k in inventory.endpoint_slices
                                                                    if k[0] in spaces})

    try:
        for running in (per_namespace, cluster_wide):
            await eventually(lambda r=running: ready(r, 0) == 1 and ready(r, 1) == 1, 10, "both resolved")
            assert backends(running) == ({(spaces[0], "hook-svc"), (spaces[1], "hook-svc")},) * 2
        watches = set(cluster_wide.discovery.health.up)
        assert {"services/*", "endpointslices/*"} <= watches
        assert not {w for w in watches if w.startswith(("services/", "endpointslices/")) and not w.endswith("/*")}
        assert {f"services/{spaces[0]}", f"endpointslices/{spaces[1]}"} <= set(per_namespace.discovery.health.up)

        slice_name, namespace = "hook-svc-1", spaces[1]
        current = await kube.call(kube.discovery.read_namespaced_endpoint_slice, slice_name, namespace)
        lost = f.endpoint_slice(namespace, "hook-svc", ports, [(address, False)], name=slice_name)
        lost["metadata"]["resourceVersion"] = current.metadata.resource_version
        await kube.call(kube.discovery.replace_namespaced_endpoint_slice, slice_name, namespace, lost)
        for running in (per_namespace, cluster_wide):
            await eventually(lambda r=running: ready(r, 1) == 0, CHANGE_DEADLINE, "lost endpoint seen")
            assert ready(running, 0) == 1
    finally:
        await kube.call(kube.admission.delete_validating_webhook_configuration, name)
        for namespace in spaces:
            await kube.call(kube.core.delete_namespace, namespace)


async def test_synced_only_once_the_backends_listed_too(kube: Kube, control_plane: ControlPlane) -> None:
    """/readyz reads `synced` from the HTTP server's thread, at any point of a rebuild on the event loop. When
    the configurations have listed and a rebuild is about to start their backends' watches, the inventory does
    not reflect the cluster yet: `synced` must say no there (it said yes, and /readyz was ready with 0 targets)."""
    from exporter.discovery import Discovery
    from exporter.kubeapi import KubeApi, load_credentials

    suffix = uid()
    namespace, name = f"synced-{suffix}", f"synced-{suffix}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    await kube.call(kube.core.create_namespaced_service, namespace,
                    f.service(namespace, "hook", [{"name": "https", "port": 443}]))
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(
        name, f.webhook(f"w.{name}.example.com", f.service_client(namespace, "hook", ""), policy="Ignore",
                        **ns_scoped("nowhere"))))
    seen: list[tuple[bool, bool]] = []  # (synced, its backends watched) as each rebuild starts them

    class Recording(Discovery):
        def _reconcile_backends(self, wanted: Any) -> None:
            seen.append((self.synced, namespace in wanted and namespace in self._backends))
            super()._reconcile_backends(wanted)

    discovery = Recording(KubeApi(load_credentials(str(control_plane.kubeconfig_path))))
    try:
        await discovery.start()
        await asyncio.wait_for(discovery.wait_synced(), 10)
        assert discovery.synced and (namespace, "hook") in discovery.inventory.services
        first = next(i for i, (_, watched) in enumerate(seen) if not watched)  # the rebuild that starts them
        assert not seen[first][0]
    finally:
        await discovery.close()
        await kube.call(kube.admission.delete_validating_webhook_configuration, name)
        await kube.call(kube.core.delete_namespace, namespace)


def _python() -> list[str]:
    import sys

    return [sys.executable]


async def test_apiserver_calls_the_webhook_and_labels_join(kube: Kube, control_plane: ControlPlane, live_exporters,
                                                          servers: Servers) -> None:
    namespace = f"join-{uid()}"
    await kube.call(kube.core.create_namespace, {"metadata": {"name": namespace}})
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    name = f"join-{uid()}"
    webhook_name = f"{name}.join.example.com"
    hook = f.webhook(webhook_name, f.url_client(backend.port, ca.ca_bundle), policy="Fail", timeout=3,
                     **ns_scoped(namespace))
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(name, hook))
    running = await live_exporters(control_plane.kubeconfig_path)
    labels = {"configuration": name, "name": webhook_name, "type": "validating"}
    endpoint = {**labels, "endpoint": f"127.0.0.1:{backend.port}"}
    try:
        await eventually(lambda: running.value("admission_webhook_probe_success", **endpoint) == 1, within=10)
        before = backend.requests
        cm = {"metadata": {"name": "allowed"}, "data": {"a": "b"}}
        for _ in range(50):  # the apiserver's webhook cache may lag the create by a moment
            try:
                await kube.call(kube.core.create_namespaced_config_map, namespace, cm)
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert backend.requests > before, "the apiserver never called the webhook"

        await backend.stop()
        from kubernetes.client.exceptions import ApiException

        with pytest.raises(ApiException) as refused:
            await kube.call(kube.core.create_namespaced_config_map, namespace,
                            {"metadata": {"name": "refused"}, "data": {}})
        message = json.loads(refused.value.body)["message"]
        assert f'failed calling webhook "{webhook_name}"' in message
        assert message.endswith("connect: connection refused")
        await eventually(lambda: running.value("admission_webhook_probe_failure_info", **endpoint,
                                               reason="connection_refused") == 1, within=5)

        apiserver = await asyncio.to_thread(control_plane.metrics_text)
        from prometheus_client.parser import text_string_to_metric_families

        families = list(text_string_to_metric_families(apiserver))
        seen = {(s.labels.get("name"), s.labels.get("type"))
                for fam in families if fam.name.startswith("apiserver_admission_webhook")
                for s in fam.samples if s.labels.get("name") == webhook_name}
        assert seen == {(webhook_name, "validating")}, seen
        rejections = [s for fam in families
                      if fam.name == "apiserver_admission_webhook_rejection_count" for s in fam.samples
                      if s.labels.get("name") == webhook_name]
        assert any(s.labels["error_type"] == "calling_webhook_error" and s.value >= 1 for s in rejections)
    finally:
        await kube.call(kube.admission.delete_validating_webhook_configuration, name)


async def test_restricted_clusterrole_is_enough_and_a_missing_permission_is_visible(
        kube: Kube, control_plane: ControlPlane, live_exporters, servers: Servers) -> None:
    role_name = f"awe-test-{uid()}"
    async with exporter_role(kube, role_name, EXPORTER_GROUP) as (role, _):
        ca = CertificateAuthority.create()
        backend = await servers.backend(ca.issue(["127.0.0.1"]))
        name = f"rbac-{uid()}"
        await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(
            name, f.webhook("rbac.example.com", f.url_client(backend.port, ca.ca_bundle), policy="Ignore",
                            **ns_scoped("nowhere")),
            f.webhook("rbac-svc.example.com", f.service_client("kube-system", "some-svc", ca.ca_bundle),
                      policy="Ignore", **ns_scoped("nowhere"))))
        try:
            running = await live_exporters(control_plane.kubeconfig_for(EXPORTER_USER))
            await asyncio.wait_for(running.discovery.wait_synced(), 10)
            for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations", "namespaces",
                             "services", "endpointslices"):
                assert running.value("admission_webhook_exporter_watch_up", resource=resource) == 1, resource
            await eventually(lambda: running.value("admission_webhook_probe_success", configuration=name,
                                                   name="rbac.example.com", type="validating",
                                                   endpoint=f"127.0.0.1:{backend.port}") == 1, within=5)

            role["rules"] = [r for r in role["rules"] if "endpointslices" not in r["resources"]]
            await kube.call(kube.rbac.replace_cluster_role, role_name, role)
            # A fresh exporter as the same user: the slices watch is refused and says so.
            denied = await live_exporters(control_plane.kubeconfig_for(EXPORTER_USER))
            await eventually(lambda: denied.value("admission_webhook_exporter_watch_up", resource="endpointslices")
                             == 0, within=10, what="watch_up 0 for endpointslices")
            restarts = denied.value("admission_webhook_exporter_watch_restarts_total", resource="endpointslices")
            assert (restarts or 0) >= 1
            assert "403" in denied.discovery.last_error and "forbidden" in denied.discovery.last_error
            await eventually(lambda: denied.value("admission_webhook_exporter_watch_up", resource="services") == 1,
                             within=10, what="the permitted services watch is unaffected")
        finally:
            await kube.call(kube.admission.delete_validating_webhook_configuration, name)


async def test_steady_state_makes_no_list_and_no_get(kube: Kube, control_plane: ControlPlane,
                                                     live_exporters) -> None:
    running = await live_exporters(control_plane.kubeconfig_path)
    await asyncio.wait_for(running.discovery.wait_synced(), 10)
    await asyncio.sleep(1)
    before = dict(running.discovery.api.requests)
    await asyncio.sleep(30)
    after = dict(running.discovery.api.requests)
    assert {k: v for k, v in after.items() if k[0] != "watch"} == \
        {k: v for k, v in before.items() if k[0] != "watch"}, (before, after)
    assert not any(verb == "get" for verb, _ in after)
    assert after == before  # not even a re-watch within 30 s of a 290 s watch


async def test_apiserver_restart_under_a_running_exporter(kube: Kube, control_plane: ControlPlane,
                                                          live_exporters, servers: Servers) -> None:
    running = await live_exporters(control_plane.kubeconfig_path)
    await asyncio.wait_for(running.discovery.wait_synced(), 10)
    await asyncio.to_thread(control_plane.restart_apiserver)
    await eventually(lambda: running.value("admission_webhook_exporter_watch_up",
                                           resource="validatingwebhookconfigurations") == 1, within=30)
    assert (running.value("admission_webhook_exporter_watch_restarts_total",
                          resource="validatingwebhookconfigurations") or 0) >= 1
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    name = f"after-restart-{uid()}"
    kube_after = Kube(api_client_for(control_plane))
    await kube_after.call(kube_after.admission.create_validating_webhook_configuration, f.configuration(
        name, f.webhook("after.example.com", f.url_client(backend.port, ca.ca_bundle), policy="Ignore",
                        **ns_scoped("nowhere"))))
    try:
        await eventually(lambda: running.value("admission_webhook_probe_success", configuration=name,
                                               name="after.example.com", type="validating",
                                               endpoint=f"127.0.0.1:{backend.port}") == 1, within=10,
                         what="a change after the restart is followed")
    finally:
        await kube_after.call(kube_after.admission.delete_validating_webhook_configuration, name)


def test_ca_bundle_round_trips_as_the_api_stores_it() -> None:
    ca = CertificateAuthority.create()
    assert base64.b64decode(ca.ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")
