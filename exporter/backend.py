"""Real servers on loopback: one TCP (or TLS) server whose connection handler is pluggable, and the
AdmissionReview handler that makes it a webhook backend.

`demo` runs a handful of webhook backends with different faults. The tests use the same server: as webhook
backends for the prober and for a real kube-apiserver (also inside a network namespace, `tests/netns_backend.py`),
and with hostile handlers of their own (`tests/servers.py`, `tests/hostile.py`). `Behaviour` picks a webhook
backend's fault: answer, answer late, answer with an HTTP error, deny.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from .pki import CertificateAuthority, ServingCertificate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MAX_BODY_BYTES = 1 << 20  # an AdmissionReview request is a few KiB; the apiserver caps objects at 3 MiB
IO_SECONDS = 30  # a client silent this long mid-request is gone


def server_context(serving: ServingCertificate, *, client_ca: CertificateAuthority | None = None) -> ssl.SSLContext:
    """A TLS server context serving `serving`; with `client_ca`, a client certificate it signed is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain wants files; a private temp dir keeps the key off shared paths.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = serving.write(Path(tmp), "tls")
        ctx.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.cert_pem.decode())
    return ctx


class LoopbackServer:
    """A server on `host` (loopback by default), port 0 unless given: `port` is known after `start()`.

    Each connection runs `handler`; whatever way it ends (done, the peer gone, `stop()`), the connection is
    closed. `stop()` also cuts the connections still open, as a dead process's would be.
    """

    def __init__(self, handler: Handler, *, serving: ServingCertificate | None = None,
                 client_ca: CertificateAuthority | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._ctx = server_context(serving, client_ca=client_ca) if serving is not None else None
        self.host = host
        self.port = port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._ctx,
                                                  ssl_handshake_timeout=10 if self._ctx else None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                ssl.SSLError, asyncio.CancelledError):
            pass  # a client that went away, or stop(): either way this connection is done
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


# -- HTTP, as little of it as a webhook backend needs ------------------------------------------------------
@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # the path and query, as sent
    headers: Mapping[str, str]  # names lower-cased
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """One HTTP/1.1 request with its Content-Length body; None when the client closed between requests."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_SECONDS)
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length") or 0), MAX_BODY_BYTES)
    body = await asyncio.wait_for(reader.readexactly(length), IO_SECONDS)
    return HttpRequest(method, rest.rpartition(" ")[0], headers, body)


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes, *, content_type: str = "application/json",
                  keep_alive: bool = False) -> None:
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


# -- The AdmissionReview backend -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    delay_seconds: float = 0.0
    status: int = 200  # anything else is answered with a plain-text body, as a crashed handler would
    allowed: bool = True
    message: str = "denied by test backend"  # the denial's status.message, which the apiserver prints


HEALTHY = Behaviour()


@dataclass(frozen=True)
class ReviewCall:
    """One AdmissionReview the backend received: what the caller asked about."""

    path: str
    query: str  # the apiserver puts the webhook's timeoutSeconds here (`timeout=10s`)
    uid: str
    kind: str
    operation: str
    namespace: str
    name: str
    api_version: str


def review_answer(review: Mapping[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    """The AdmissionReview response to `review`: allowed, or denied with a 403 and the behaviour's message."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": behaviour.allowed}
    if not behaviour.allowed:
        response["status"] = {"code": 403, "message": behaviour.message}
    return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}


class WebhookBackend(LoopbackServer):
    """An HTTPS server answering every AdmissionReview POST (any path), kept-alive connections included.

    `calls` records each review received (and `calls_file` gets it as a JSON line, for a backend in another
    process); `behaviour` is read per request, so a test may change it while the backend runs.
    """

    def __init__(self, serving: ServingCertificate, *, behaviour: Behaviour = HEALTHY, host: str = "127.0.0.1",
                 port: int = 0, calls_file: Path | None = None) -> None:
        super().__init__(self._connection, serving=serving, host=host, port=port)
        self.behaviour = behaviour
        self.calls: list[ReviewCall] = []
        self._calls_file = calls_file

    @property
    def requests(self) -> int:
        return len(self.calls)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            await self._answer(request, writer)
            if not request.keep_alive:
                return

    async def _answer(self, request: HttpRequest, writer: asyncio.StreamWriter) -> None:
        try:
            review = json.loads(request.body)
            self._record(request.target, review["request"], review.get("apiVersion", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            await respond(writer, 400, b"bad AdmissionReview", content_type="text/plain",
                          keep_alive=request.keep_alive)
            return
        behaviour = self.behaviour
        if behaviour.delay_seconds:
            await asyncio.sleep(behaviour.delay_seconds)
        if behaviour.status != 200:
            await respond(writer, behaviour.status, f"backend told to answer {behaviour.status}".encode(),
                          content_type="text/plain", keep_alive=request.keep_alive)
            return
        await respond(writer, 200, json.dumps(review_answer(review, behaviour)).encode(),
                      keep_alive=request.keep_alive)

    def _record(self, target: str, request: Mapping[str, Any], api_version: str) -> None:
        path, _, query = target.partition("?")
        call = ReviewCall(path=path, query=query, uid=str(request.get("uid", "")),
                          kind=str((request.get("kind") or {}).get("kind", "")),
                          operation=str(request.get("operation", "")), namespace=str(request.get("namespace", "")),
                          name=str(request.get("name", "")), api_version=api_version)
        self.calls.append(call)
        if self._calls_file is not None:
            with open(self._calls_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(call)) + "\n")
