"""Real servers on 127.0.0.1 for the prober to meet: exporter.backend's one loopback server, with the
misbehaving handlers the probe tests plug into it, and a way to run any of them for synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, TypeVar

from exporter.backend import Handler, LoopbackServer, read_request

# The name the tests have always used for a loopback server with a handler of their own.
RawServer = LoopbackServer
__all__ = ["Handler", "RawServer", "Threaded", "fixed_response", "free_port", "never_speak", "plain_http",
           "read_request_then_hang"]

S = TypeVar("S", bound=LoopbackServer)


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
    await read_request(reader)
    await asyncio.sleep(3600)


def fixed_response(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
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


class Threaded(Generic[S]):
    """A loopback server on an event loop of its own, in a daemon thread: for synchronous tests (the real
    apiserver's), which block their own thread while the apiserver calls the backend."""

    def __init__(self, server: S) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="awe-loopback-server", daemon=True)

    def start(self) -> Threaded[S]:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop the server (new connections are refused, open ones cut), then the loop; idempotent."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
