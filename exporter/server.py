"""The HTTP face: /metrics, /healthz, /readyz. Starts, stops, and tells its bound port (tests use port 0).

A scrape renders the registry on a worker thread: formatting 100k series takes long enough that doing it
on the event loop would delay probes; the collector reads only memory, so it needs no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import exposition

LANDING = """<html><head><title>admission-webhook-exporter</title></head><body>
<h1>admission-webhook-exporter</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
</body></html>"""


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, *, ready: Callable[[], bool], host: str = "", port: int = 0):
        self._registry = registry
        self._ready = ready
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._landing)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        render: Callable[[], bytes] = partial(encoder, self._registry)
        if content_type.startswith("text/plain"):  # the classic format: our fast renderer
            render, content_type = partial(exposition.render, self._registry.collect()), exposition.CONTENT_TYPE
        body = await asyncio.get_running_loop().run_in_executor(None, render)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="first probe round not finished\n")

    async def _landing(self, _: web.Request) -> web.Response:
        return web.Response(text=LANDING, content_type="text/html")

    async def start(self) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host or None, self._port).start()
        port: int = self._runner.addresses[0][1]  # (host, port, ...) of the first bound socket
        self.port = port
        return port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def parse_listen_address(value: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` to (host, port); host "" means every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen-address {value!r}: expected [host]:port")
    return host.strip("[]"), int(port)
