"""The few Kubernetes API calls the control-plane tests make, through the official client, off the event loop.

Off the loop because the backends a test serves on that loop must answer the apiserver's webhook calls
while a create is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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
    exporter = Exporter(interval=interval)
    discovery = Discovery(KubeApi(credentials), exporter.state.adopt, server_timeout=server_timeout,
                          idle_timeout=idle_timeout)
    exporter.attach(discovery)
    await discovery.start()
    return exporter, discovery
