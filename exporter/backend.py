"""A small real admission webhook backend: TLS on loopback, answers AdmissionReviews.

`demo` runs a handful of these with different faults, and the tests use them as the real servers the
prober is checked against. `behaviour` picks the fault: answer, answer late, answer with an HTTP error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import tempfile
from dataclasses import dataclass

from .pki import ServingCertificate


@dataclass(frozen=True)
class Behaviour:
    delay_seconds: float = 0.0
    status: int = 200
    allowed: bool = True


HEALTHY = Behaviour()


def server_context(serving: ServingCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain wants files; a private temp dir keeps the key off shared paths.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(cert_path, "wb") as f:
            f.write(serving.cert_pem)
        with open(key_path, "wb") as f:
            f.write(serving.key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class WebhookBackend:
    """An HTTPS AdmissionReview server on `host`, port 0 by default; `port` is known after `start()`."""

    def __init__(self, serving: ServingCertificate, *, behaviour: Behaviour = HEALTHY, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._ctx = server_context(serving)
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> WebhookBackend:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self._ctx,
                                                  ssl_handshake_timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await asyncio.wait_for(reader.readexactly(min(length, 1 << 20)), 30)
            self.requests += 1
            if self.behaviour.delay_seconds:
                await asyncio.sleep(self.behaviour.delay_seconds)
            review = json.loads(body or b"{}")
            request = review.get("request") or {}
            answer = {
                "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
                "kind": "AdmissionReview",
                "response": {"uid": request.get("uid", ""), "allowed": self.behaviour.allowed},
            }
            payload = json.dumps(answer).encode()
            status = self.behaviour.status
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
                         "\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                ssl.SSLError, asyncio.CancelledError):
            pass  # a client that went away, or stop(): either way this connection is done
        finally:
            writer.transport.abort()
            self._conns.discard(task)
