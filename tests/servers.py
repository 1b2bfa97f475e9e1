"""Real servers on 127.0.0.1 for the prober to meet: well-behaved webhook backends and hostile ones."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from exporter.backend import server_context
from exporter.pki import ServingCertificate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP (optionally TLS) server on a loopback port whose connection handler the test writes."""

    def __init__(self, handler: Handler, *, serving: ServingCertificate | None = None) -> None:
        self._handler = handler
        self._ctx: ssl.SSLContext | None = server_context(serving) if serving else None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0

    async def _wrapped(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._wrapped, "127.0.0.1", 0, ssl=self._ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


async def never_speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept the connection and say nothing, ever (a wedged process still holding its socket)."""
    await asyncio.sleep(3600)


async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speak plain HTTP on the TLS port (a backend that lost its TLS configuration)."""
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def read_request_then_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Complete TLS, read the request, never answer."""
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(3600)


def fixed_response(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()

    return handler


async def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
