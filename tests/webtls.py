"""What the --web.config.file tests share: their certificates, the files a configuration names, the exporter
serving with it on 127.0.0.1, and a client that connects afresh for every request (so each one is a new TLS
handshake, judged by the configuration in force then).

Certificates come from exporter/pki.py: the exporter's serving certificate (for 127.0.0.1 and localhost) from
one CA, Prometheus' client certificate from a second CA (the client CA the exporter trusts), and an intruder's
client certificate from a third CA that nobody trusts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
from cryptography import x509

from exporter.app import Exporter
from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.webconfig import WebSecurity

TOKEN = "prometheus-scrape-token-0123456789abcdef"
PASSWORD = "correct horse battery staple"
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pki:
    server_ca: CertificateAuthority
    server: ServingCertificate
    client_ca: CertificateAuthority
    client: ServingCertificate  # Prometheus, SAN prometheus.monitoring.svc
    intruder_ca: CertificateAuthority
    intruder: ServingCertificate  # the same SAN, from a CA the exporter does not trust

    @classmethod
    def create(cls) -> Pki:
        server_ca = CertificateAuthority.create("exporter serving CA")
        client_ca = CertificateAuthority.create("scraper client CA")
        intruder_ca = CertificateAuthority.create("intruder CA")
        return cls(server_ca=server_ca, server=server_ca.issue(["127.0.0.1", "localhost"]),
                   client_ca=client_ca, client=client_ca.issue(["prometheus.monitoring.svc"], client=True),
                   intruder_ca=intruder_ca,
                   intruder=intruder_ca.issue(["prometheus.monitoring.svc"], client=True))


def write_pem(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def files(folder: Path, pki: Pki) -> Path:
    """The files a configuration names, as a Secret volume would hold them; returns the folder."""
    write_pem(folder, "tls.crt", pki.server.cert_pem)
    write_pem(folder, "tls.key", pki.server.key_pem)
    write_pem(folder, "client-ca.crt", pki.client_ca.cert_pem)
    (folder / "token").write_text(TOKEN + "\n")  # as `kubectl create secret --from-file` of an echo'd file
    return folder


def bcrypt_hash(password: str = PASSWORD, cost: int = 4) -> str:
    """A bcrypt hash as htpasswd -B writes it ($2y$); cost 4, the lowest, keeps the tests fast."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$", 1)


def write_config(folder: Path, text: str, name: str = "web-config.yml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def client_context(pki: Pki, cert: ServingCertificate | None = None, *, tmp: Path,
                   trust: CertificateAuthority | None = None) -> ssl.SSLContext:
    """What a scraper verifies the exporter with (its serving CA), presenting `cert` when given."""
    context = ssl.create_default_context(cadata=(trust or pki.server_ca).cert_pem.decode())
    if cert is not None:
        pem = tmp / f"client-{id(cert)}.pem"
        pem.write_bytes(cert.cert_pem + cert.key_pem)
        context.load_cert_chain(pem)
    return context


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: str
    peer: bytes | None = None  # the exporter's certificate (DER), over TLS
    version: str | None = None  # TLSv1.2, TLSv1.3
    cipher: str | None = None

    @property
    def peer_serial(self) -> int | None:
        return x509.load_der_x509_certificate(self.peer).serial_number if self.peer else None


async def get(url: str, *, tls: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
              server_name: str | None = None) -> Answer:
    """One HTTP/1.1 request on a fresh connection (a new TLS handshake each time), read to the end; raises what
    the connection or the handshake was refused with. A plain client on purpose: it can tell which certificate,
    version and cipher the handshake ended with."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0

    async def exchange() -> Answer:
        server_hostname = (server_name or host) if tls is not None else None
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=server_hostname)
        try:
            lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                     *(f"{k}: {v}" for k, v in (headers or {}).items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            raw = await reader.read()
            tls_object = writer.get_extra_info("ssl_object")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        if not raw:
            raise ConnectionResetError("the server closed the connection without an answer")
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        collected: dict[str, list[str]] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            collected.setdefault(name.strip().lower(), []).append(value.strip())
        answer = Answer(int(status_line.split()[1]), collected, body.decode("utf-8", "replace"))
        if tls_object is None:
            return answer
        return dataclasses.replace(answer, peer=tls_object.getpeercert(True), version=tls_object.version(),
                                   cipher=tls_object.cipher()[0])

    return await asyncio.wait_for(exchange(), REQUEST_TIMEOUT_S)


async def refused(url: str, **kwargs: Any) -> BaseException | None:
    """The error a request ends in, or None when it was answered (whatever the status)."""
    try:
        await get(url, **kwargs)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, IndexError, ValueError) as err:
        return err
    return None


@dataclass
class Served:
    exporter: Exporter
    security: WebSecurity
    port: int
    health_port: int | None

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sample(self, name: str) -> float | None:
        return self.exporter.registry.get_sample_value(name)


@asynccontextmanager
async def serving(config: Path, *, health: bool = False, recheck_s: float = 0.0,
                  clock: Callable[[], float] | None = None, **kwargs: Any) -> AsyncIterator[Served]:
    """An exporter (no inventory: its own families are enough to scrape) serving with the configuration in
    `config` on 127.0.0.1; recheck_s=0 re-reads the files on every connection and request."""
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    security = WebSecurity(config, recheck_s=recheck_s, **extra, **kwargs)
    exporter = Exporter()
    try:
        port = await exporter.serve("127.0.0.1", 0, security=security, health_host="127.0.0.1",
                                    health_port=0 if health else None)
        assert exporter.server is not None
        yield Served(exporter, security, port, exporter.server.health_port)
    finally:
        await exporter.close()
