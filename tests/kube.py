"""The few Kubernetes API calls the control-plane tests make, through the official client, off the event loop.

Off the loop because the backends a test serves on that loop must answer the apiserver's webhook calls
while a create is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from exporter.app import Exporter
from exporter.discovery import Discovery
from exporter.kubeapi import Credentials, KubeApi


class Kube:
    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.admission = client.AdmissionregistrationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)


async def start_live_exporter(credentials: Credentials, *, interval: float = 2.0, server_timeout: int = 290,
                              idle_timeout: float = 330) -> tuple[Exporter, Discovery]:
    """An exporter in this event loop, following the API behind `credentials` (the caller closes it)."""
    discovery = Discovery(KubeApi(credentials), server_timeout=server_timeout, idle_timeout=idle_timeout)
    exporter = Exporter(interval=interval, discovery=discovery)
    await exporter.start()
    return exporter, discovery


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
