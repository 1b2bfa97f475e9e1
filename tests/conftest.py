from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.backend import HEALTHY, Behaviour, WebhookBackend
from exporter.kubeapi import Credentials
from exporter.pki import CertificateAuthority, ServingCertificate
from tests.controlplane.fixtures import *  # noqa: F403  (control_plane, kube_api, netns_host, ...)
from tests.kube import Kube, LiveExporter
from tests.node.fixtures import *  # noqa: F403  (node_cluster, node_image)
from tests.servers import BlockingTLSServer, Handler, RawServer


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """One CA per test module: the caBundle every well-behaved backend chains to."""
    return CertificateAuthority.create("tests CA")


@pytest.fixture(scope="module")
def loopback_cert(ca: CertificateAuthority) -> ServingCertificate:
    return ca.issue(["127.0.0.1", "localhost"])


class Servers:
    """Starts real servers for one test and stops every one of them at teardown."""

    def __init__(self) -> None:
        self._stoppers: list[WebhookBackend | RawServer] = []

    async def backend(self, serving: ServingCertificate, behaviour: Behaviour = HEALTHY) -> WebhookBackend:
        b = await WebhookBackend(serving, behaviour=behaviour).start()
        self._stoppers.append(b)
        return b

    async def raw(self, handler: Handler, serving: ServingCertificate | None = None) -> RawServer:
        s = await RawServer(handler, serving=serving).start()
        self._stoppers.append(s)
        return s

    async def close(self) -> None:
        for s in self._stoppers:
            await s.stop()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    await s.close()


StartBlockingTLS = Callable[[ssl.SSLContext], BlockingTLSServer]


@pytest.fixture
def blocking_tls() -> Iterator[StartBlockingTLS]:
    """Starts `BlockingTLSServer`s (OpenSSL's server side) with a given context; stops each at teardown."""
    started: list[BlockingTLSServer] = []

    def start(context: ssl.SSLContext) -> BlockingTLSServer:
        server = BlockingTLSServer(context).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def kube(kube_api: Any) -> Kube:
    """The shared control plane's API as admin, through the official client."""
    return Kube(kube_api)


StartExporter = Callable[..., Awaitable[LiveExporter]]


@pytest.fixture
async def live_exporters() -> AsyncIterator[StartExporter]:
    """Starts in-process exporters following an apiserver (`LiveExporter.start`); closes each at teardown."""
    started: list[LiveExporter] = []

    async def start(source: Path | Credentials, **kwargs: Any) -> LiveExporter:
        running = await LiveExporter.start(source, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.exporter.close()


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """A test that leaves a task running fails. Added to every async test by the hook below."""
    yield
    await asyncio.sleep(0)  # let just-cancelled tasks finish
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not pending, f"tasks left running: {pending}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "no_leftover_tasks")
