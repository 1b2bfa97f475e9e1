"""Real servers on 127.0.0.1 for the prober to meet: exporter.backend's one loopback server, with the
misbehaving handlers the probe tests plug into it, and a way to run any of them for synchronous tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from typing import Generic, TypeVar

from exporter.backend import HEALTHY, Handler, LoopbackServer, read_request, review_answer

# The name the tests have always used for a loopback server with a handler of their own.
RawServer = LoopbackServer
__all__ = ["BlockingTLSServer", "Handler", "RawServer", "Threaded", "fixed_response", "free_port", "never_speak",
           "plain_http", "read_request_then_hang"]

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


class BlockingTLSServer:
    """A TLS server built on Python's blocking `ssl` sockets (OpenSSL's server side), each connection on a thread.

    Unlike asyncio's TLS server, which hangs up without a word, it sends the TLS alert a real server sends when
    it requires a client certificate and gets none (TLS 1.3: `certificate required`, alert 116; TLS 1.2:
    `handshake failure`). An authenticated request gets an allowed AdmissionReview; `clients` records, per
    request, the client certificate's subject CN and the Authorization header.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.clients: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._accept, name="awe-blocking-tls", daemon=True)

    def start(self) -> BlockingTLSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which then fails
        self._listener.close()
        self._thread.join(10)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
                while len(body) < int(headers.get("Content-Length", "0")):
                    body += tls.recv(65536)
                peer = tls.getpeercert() or {}
                cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
                self.clients.append((str(cn), headers.get("Authorization", "")))
                answer = json.dumps(review_answer(json.loads(body), HEALTHY)).encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                            + str(len(answer)).encode() + b"\r\nConnection: close\r\n\r\n" + answer)
        except (OSError, ValueError):
            pass  # the handshake refused the client (the alert is sent), or the client went away
        finally:
            conn.close()
