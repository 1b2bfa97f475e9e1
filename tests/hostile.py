"""Hostile peers for the fault-injection suite: backends that misbehave, a network path that can be frozen,
and a fake Kubernetes API for the one case the real apiserver cannot serve (objects it refuses to store).

Everything listens on 127.0.0.1, port 0. The handlers plug into `exporter.backend.LoopbackServer`; the big ones
(a 100 MB body, a 1 MB certificate) are produced lazily or once, never held twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import tracemalloc
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509

from exporter.backend import Handler, read_request
from exporter.pki import CertificateAuthority, ServingCertificate

T = TypeVar("T")
MiB = 1024 * 1024


# -- backends --------------------------------------------------------------------------------------------
def trickle(interval: float = 1.0) -> Handler:
    """Complete TLS, read the request, then answer one byte per `interval`, forever (a slowloris reply)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        for i in range(10**6):
            writer.write(reply[i : i + 1] if i < len(reply) else b" ")
            await writer.drain()
            await asyncio.sleep(interval)

    return handler


def huge_body(framing: str, size: int = 100 * MiB) -> Handler:
    """Answer with a `size`-byte body, streamed 64 KiB at a time from one buffer (never `size` in memory).

    `framing`: "content-length" (declared up front), "chunked" (64 KiB chunks), or "close" (no length:
    the body ends when the connection does).
    """
    block = b"x" * (64 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if framing == "content-length":
            head += f"Content-Length: {size}\r\n"
        elif framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n"
        writer.write((head + "\r\n").encode())
        sent = 0
        while sent < size:
            if framing == "chunked":
                writer.write(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                writer.write(block)
            sent += len(block)
            await writer.drain()  # flow control: a client that stops reading stops us too
        if framing == "chunked":
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return handler


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN (SO_LINGER 0), as a crashing process or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_mid_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the ClientHello, send the first bytes of a ServerHello record, then reset the connection."""
    await reader.read(16 * 1024)
    writer.write(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03")  # handshake record, ServerHello, cut short
    await writer.drain()
    await asyncio.sleep(0.05)
    _reset(writer)


async def close_after_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Complete TLS, read the request, send a 200's headers announcing a body, then hang up."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()
    writer.close()


# -- certificates ----------------------------------------------------------------------------------------
def long_chain(root: CertificateAuthority, names: list[str], *, length: int = 50) -> ServingCertificate:
    """A leaf under `length - 1` intermediates below `root`; the server sends all `length` certificates."""
    issuer = root
    for depth in range(length - 1):
        issuer = issuer.intermediate(f"intermediate {depth + 1}")
    return issuer.issue(names)


def huge_certificate(ca: CertificateAuthority, names: list[str], *, size: int = MiB) -> ServingCertificate:
    """A leaf signed by `ca` that carries a `size`-byte private (non-critical) extension."""
    # The extension value is DER: an OCTET STRING with a long-form length, then the filler.
    filler = os.urandom(size)
    value = b"\x04\x83" + len(filler).to_bytes(3, "big") + filler
    return ca.issue(names, extensions=[x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1"),
                                                                 value)])


# -- measuring -------------------------------------------------------------------------------------------
def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class MemoryUse:
    peak_traced: int  # bytes: the Python heap's peak above its level at the start (tracemalloc)
    rss_growth: int  # bytes: resident set size after minus before (C buffers included: OpenSSL, sockets)


async def measure_memory(work: Awaitable[T]) -> tuple[T, MemoryUse]:
    """Run `work` with tracemalloc on; peak Python allocation and RSS growth around it."""
    rss0 = rss_bytes()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = await work
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, MemoryUse(peak_traced=peak - base, rss_growth=rss_bytes() - rss0)


# -- a network path that can be frozen -------------------------------------------------------------------
class FreezableProxy:
    """A loopback TCP relay (TLS passes through untouched) whose open connections can be frozen.

    `freeze()` black-holes every connection open at that moment: nothing more is relayed either way and
    no FIN or RST is sent, as when a NAT entry or a load balancer drops a long-lived connection silently.
    Connections made afterwards are relayed normally, so a client that notices can reconnect; unless
    `blackhole(True)`: then new connections are accepted and held silent too (the path is down) until
    `blackhole(False)`.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._frozen: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._live: dict[asyncio.Task[None], tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = {}
        self.connections = 0
        self._blackhole = False
        self._held: list[asyncio.StreamWriter] = []

    def blackhole(self, on: bool) -> None:
        self._blackhole = on

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        if self._blackhole:
            self._held.append(writer)  # accepted, then silence: the request goes nowhere
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._live[task] = (writer, up_writer)
        self._pipes.add(task)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            if self._live.pop(task, None) is not None:
                writer.transport.abort()
                up_writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    def freeze(self) -> int:
        """Stop relaying on every open connection, keeping the sockets open; returns how many."""
        frozen = 0
        for task, pair in list(self._live.items()):
            self._live.pop(task)
            self._frozen.append(pair)  # held open, silent: the peers see neither data nor a close
            task.cancel()
            frozen += 1
        return frozen

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for a, b in self._frozen:
            a.transport.abort()
            b.transport.abort()
        self._frozen.clear()
        for w in self._held:
            w.transport.abort()
        self._held.clear()
        await asyncio.sleep(0.01)  # abort() closes the sockets on the loop's next iterations
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None


# -- a fake Kubernetes API (only for objects the real apiserver refuses to store) --------------------------
Object = dict[str, Any]


class FakeKubeApi:
    """List + watch for a few resources over plain HTTP on 127.0.0.1, speaking the apiserver's JSON.

    Why a fake: the real kube-apiserver validates webhook configurations and refuses to store an invalid
    one, yet an exporter can still meet one (an older apiserver, a conversion bug, a manifest on disk).
    Lists carry `metadata.resourceVersion`; a watch streams `{"type": ..., "object": ...}` lines from the
    requested resourceVersion, sends a BOOKMARK now and then, and ends at `timeoutSeconds`.
    """

    def __init__(self) -> None:
        self._version = 100
        self._objects: dict[str, dict[str, Object]] = {}  # path -> name -> object
        self._events: list[tuple[int, str, str, Object]] = []  # (version, path, type, object)
        self._runner: web.AppRunner | None = None
        self.requests: list[tuple[str, str]] = []  # (verb, path)
        self.port = 0
        self._watches: set[asyncio.Task[Any]] = set()

    def put(self, path: str, obj: Object, *, event: str | None = None) -> None:
        """Store `obj` (ADDED or MODIFIED) at the collection `path`, e.g. /apis/.../validatingwebhookconfigurations."""
        self._version += 1
        obj = json.loads(json.dumps(obj))
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        name = obj["metadata"]["name"]
        store = self._objects.setdefault(path, {})
        kind = event or ("MODIFIED" if name in store else "ADDED")
        store[name] = obj
        self._events.append((self._version, path, kind, obj))

    async def start(self) -> FakeKubeApi:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in list(self._watches):
            task.cancel()  # aiohttp does not cancel a handler whose client went away
        await asyncio.gather(*self._watches, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.query.get("watch") in ("1", "true"):
            self.requests.append(("watch", path))
            return await self._watch(request, path, int(request.query.get("resourceVersion") or 0))
        self.requests.append(("list", path))
        items = list(self._objects.get(path, {}).values())
        return web.json_response({"kind": "List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self._version)}, "items": items})

    async def _watch(self, request: web.Request, path: str, since: int) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("timeoutSeconds") or 60)
        sent, quiet_since = since, loop.time()
        try:
            while loop.time() < deadline:
                for version, p, kind, obj in self._events:
                    if version > sent and p == path:
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                        quiet_since = loop.time()
                sent = self._version
                if loop.time() - quiet_since >= 1.0:  # the real apiserver bookmarks about once a minute
                    bookmark = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self._version)}}
                    await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
                    quiet_since = loop.time()
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response


def family_samples(text: str, name: str) -> list[tuple[Mapping[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name]
