"""What the control-plane tests share: the few Kubernetes API calls they make (through the official client,
off the event loop, because the backends a test serves on that loop must answer the apiserver's webhook calls
while a create is in flight), and an in-process live exporter with readers for its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.exposition import generate_latest

from exporter.app import Exporter
from exporter.discovery import Discovery
from exporter.kubeapi import VALIDATING_CONFIGS, Credentials, KubeApi, load_credentials
from tests import factories as f
from tests import hostile


class Kube:
    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.api = api  # the caller closes it
        self.admission = client.AdmissionregistrationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create_hook(self, configuration: str, name: str, client: dict[str, Any]) -> None:
        """One Ignore webhook, 2 s timeout, scoped to no namespace: it cannot wedge another test."""
        hook = f.webhook(name, client, policy="Ignore", timeout=2,
                         namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}})
        await self.call(self.admission.create_validating_webhook_configuration, f.configuration(configuration, hook))

    async def delete_hook(self, configuration: str) -> None:
        """Delete a validating configuration; already gone is fine."""
        from kubernetes.client.exceptions import ApiException

        try:
            await self.call(self.admission.delete_validating_webhook_configuration, configuration)
        except ApiException as err:
            if err.status != 404:
                raise


class LiveExporter:
    """An exporter in this event loop following a (real or fake) apiserver, and readers of its metrics."""

    def __init__(self, exporter: Exporter) -> None:
        assert exporter.discovery is not None
        self.exporter = exporter
        self.discovery = exporter.discovery

    @classmethod
    async def start(cls, source: Path | Credentials, *, interval: float = 2.0, server_timeout: int = 290,
                    idle_timeout: float = 330) -> LiveExporter:
        """Following the API of a kubeconfig file or of `Credentials` (the caller closes `exporter`)."""
        credentials = load_credentials(str(source)) if isinstance(source, Path) else source
        discovery = Discovery(KubeApi(credentials), server_timeout=server_timeout, idle_timeout=idle_timeout)
        exporter = Exporter(interval=interval, discovery=discovery)
        await exporter.start()
        return cls(exporter)

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


CLUSTERROLE = Path(__file__).parent.parent / "deploy" / "rbac" / "clusterrole.yaml"


@contextlib.asynccontextmanager
async def exporter_role(kube: Kube, name: str, group: str) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
    """deploy/rbac/clusterrole.yaml under `name`, bound to `group`; both deleted afterwards (gone is fine)."""
    from kubernetes.client.exceptions import ApiException

    role = yaml.safe_load(CLUSTERROLE.read_text())
    role["metadata"] = {"name": name}
    binding = {"metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}]}
    await kube.call(kube.rbac.create_cluster_role, role)
    await kube.call(kube.rbac.create_cluster_role_binding, binding)
    try:
        yield role, binding
    finally:
        for delete in (kube.rbac.delete_cluster_role_binding, kube.rbac.delete_cluster_role):
            try:
                await kube.call(delete, name)
            except ApiException as err:
                if err.status != 404:
                    raise
