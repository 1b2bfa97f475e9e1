"""The HTTP face: /metrics, /healthz, /readyz. Starts, stops, and tells its bound port (tests use port 0).

With a web configuration (`security`, exporter/webconfig.py) the listener serves TLS and judges every request
by it. The kubelet's probes cannot present a client certificate or credentials, so `health_port` adds a
listener of /healthz and /readyz alone, plain HTTP and open: they say only whether the process is ready.

A scrape renders the registry on a worker thread: formatting 100k series takes long enough that doing it
on the event loop would delay probes; the collector reads only memory, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import exposition
from .webconfig import WebSecurity

LANDING = """<html><head><title>admission-webhook-exporter</title></head><body>
<h1>admission-webhook-exporter</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
</body></html>"""


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, *, ready: Callable[[], bool], host: str = "", port: int = 0,
                 security: WebSecurity | None = None, health_host: str = "", health_port: int | None = None):
        self._registry = registry
        self._ready = ready
        self._host = host
        self._port = port
        self._security = security
        self._health = (health_host, health_port)
        self._runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.health_port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._landing)
        if self._security is not None:
            self._security.install(app)
        return app

    def _health_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
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

    async def _listen(self, app: web.Application, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host or None, port, ssl_context=tls).start()
        bound: int = runner.addresses[0][1]  # (host, port, ...) of the first bound socket
        return bound

    async def start(self) -> int:
        tls = self._security.ssl_context if self._security is not None else None
        self.port = await self._listen(self._app(), self._host, self._port, tls)
        if self._health[1] is not None:
            self.health_port = await self._listen(self._health_app(), self._health[0], self._health[1], None)
        return self.port

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()


def parse_listen_address(value: str, flag: str = "--listen-address") -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` to (host, port); host "" means every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} {value!r}: expected [host]:port")
    return host.strip("[]"), int(port)
