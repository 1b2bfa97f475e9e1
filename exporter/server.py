"""The HTTP face: /metrics, /healthz, /readyz. Starts, stops, and tells its bound port (tests use port 0).

With a web configuration (`security`, exporter/webconfig.py) the listener serves TLS and judges every request
by it. The kubelet's probes cannot present a client certificate or credentials, so `health_port` adds a
listener of /healthz and /readyz alone, plain HTTP and open: they say only whether the process is ready.

The listeners run on a thread of their own, with its own event loop: while the exporter's loop runs back-to-back
TLS handshakes, one turn of it takes a hundred milliseconds or more, and a scrape served there waited several
turns (300-700 ms at 2,000 endpoints; bench/memory_cost.py) for a response that takes 2-4 ms to render. Here a
scrape waits only for the GIL. It still renders on a worker thread of that loop, so that /healthz answers while
a large registry renders; the collector reads only memory, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
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
                 security: WebSecurity | None = None, health_host: str = "", health_port: int | None = None,
                 text: Callable[[bool], bytes] | None = None):
        """`text(openmetrics)` renders the registry in the text format or OpenMetrics faster than rendering its
        families (the exporter keeps its text ready); without it the registry's families are rendered."""
        self._registry = registry
        self._text = text
        self._ready = ready
        self._host = host
        self._port = port
        self._security = security
        self._health = (health_host, health_port)
        self._runners: list[web.AppRunner] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the listeners' own, on `_thread`
        self._thread: threading.Thread | None = None
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
            render = partial(self._text, False) if self._text else partial(exposition.render, self._registry.collect())
            content_type = exposition.CONTENT_TYPE
        elif content_type.startswith(exposition.OPENMETRICS_CONTENT_TYPE) and self._text is not None:
            render = partial(self._text, True)  # what Prometheus asks for first; the type as negotiated
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
        """Listen (on the server's own thread and loop); the bound port once listening, or the bind's error."""
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="metrics-server", daemon=True)
        self._thread.start()
        return await asyncio.wrap_future(started)

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        try:
            try:
                port = loop.run_until_complete(self._listen_all())
            except BaseException as err:  # a port in use: the caller says so
                started.set_exception(err)
                return
            self._loop = loop
            started.set_result(port)
            loop.run_forever()  # until stop()
        finally:
            self._loop = None
            loop.run_until_complete(self._cleanup())
            loop.close()

    async def _listen_all(self) -> int:
        tls = self._security.ssl_context if self._security is not None else None
        self.port = await self._listen(self._app(), self._host, self._port, tls)
        if self._health[1] is not None:
            self.health_port = await self._listen(self._health_app(), self._health[0], self._health[1], None)
        return self.port

    async def _cleanup(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)


def parse_listen_address(value: str, flag: str = "--listen-address") -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` to (host, port); host "" means every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} {value!r}: expected [host]:port")
    return host.strip("[]"), int(port)
