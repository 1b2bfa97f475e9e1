"""The one loopback server (exporter/backend.py): the AdmissionReview backend as the apiserver meets it (kept-alive
connections, denials, errors, calls recorded), pluggable handlers, a client certificate required, and the same
server run in a thread for synchronous tests. Real TLS on 127.0.0.1, certificates from exporter.pki."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from exporter.backend import Behaviour, LoopbackServer, ReviewCall, WebhookBackend, read_request, respond
from exporter.pki import CertificateAuthority, ServingCertificate
from tests.conftest import Servers
from tests.servers import Threaded


def review(uid: str, *, kind: str = "ConfigMap", name: str = "cm") -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": kind}, "operation": "CREATE",
        "namespace": "team", "name": name}}).encode()


def client_context(ca: CertificateAuthority, client: ServingCertificate | None = None,
                   tmp: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None and tmp is not None:
        ctx.load_cert_chain(*client.write(tmp, "client"))
    return ctx


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes, *,
               close: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = (await reader.readline()).decode()
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode().strip()):
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split()[1]), headers, await reader.readexactly(int(headers["content-length"]))


def blocking_get(port: int, context: ssl.SSLContext) -> bytes:
    """A plain blocking TLS client: the request, then the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return tls.recv(1024)


async def test_reviews_on_one_kept_alive_connection_are_answered_and_recorded(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    backend = await servers.backend(loopback_cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", backend.port, ssl=client_context(ca))
    try:
        first = await post(reader, writer, "/validate?timeout=10s", review("u1"))
        second = await post(reader, writer, "/mutate", review("u2", kind="Pod", name="p"), close=True)
        assert await reader.read() == b""  # closed after the request that asked for it
    finally:
        writer.close()
    assert [(s, h["connection"]) for s, h, _ in (first, second)] == [(200, "keep-alive"), (200, "close")]
    assert json.loads(first[2])["response"] == {"uid": "u1", "allowed": True}
    assert backend.calls == [ReviewCall("/validate", "timeout=10s", "u1", "ConfigMap", "CREATE", "team", "cm",
                                        "admission.k8s.io/v1"),
                             ReviewCall("/mutate", "", "u2", "Pod", "CREATE", "team", "p", "admission.k8s.io/v1")]
    assert (backend.connections, backend.requests) == (1, 2)


@pytest.mark.parametrize(("behaviour", "status", "answer"), [
    (Behaviour(allowed=False, message="no latest tags"), 200,
     {"uid": "u", "allowed": False, "status": {"code": 403, "message": "no latest tags"}}),
    (Behaviour(status=503), 503, "backend told to answer 503"),
])
async def test_denials_and_errors(servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate,
                                  behaviour: Behaviour, status: int, answer: Any) -> None:
    backend = await servers.backend(loopback_cert, behaviour)
    reader, writer = await asyncio.open_connection("127.0.0.1", backend.port, ssl=client_context(ca))
    try:
        got, _, body = await post(reader, writer, "/", review("u"), close=True)
    finally:
        writer.close()
    assert got == status
    assert (json.loads(body)["response"] if status == 200 else body.decode()) == answer
    assert backend.requests == 1


async def test_not_an_admission_review_is_a_400_and_not_recorded(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    backend = await servers.backend(loopback_cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", backend.port, ssl=client_context(ca))
    try:
        assert (await post(reader, writer, "/", b"{}"))[::2] == (400, b"bad AdmissionReview")
        assert (await post(reader, writer, "/", b"not json", close=True))[0] == 400
    finally:
        writer.close()
    assert backend.calls == []


async def test_calls_file_gets_one_json_line_per_review(ca: CertificateAuthority, loopback_cert: ServingCertificate,
                                                        tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    backend = await WebhookBackend(loopback_cert, calls_file=calls).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port, ssl=client_context(ca))
        await post(reader, writer, "/v", review("a"))
        await post(reader, writer, "/v", review("b"), close=True)
        writer.close()
    finally:
        await backend.stop()
    assert [json.loads(line)["uid"] for line in calls.read_text().splitlines()] == ["a", "b"]


async def test_stop_cuts_open_connections_and_refuses_new_ones(
        ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    backend = await WebhookBackend(loopback_cert).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", backend.port, ssl=client_context(ca))
    try:
        await post(reader, writer, "/", review("u"))  # a kept-alive connection, idle now
        await backend.stop()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", backend.port)


async def test_a_handler_of_its_own_behind_an_intermediate_with_a_client_certificate_required(
        servers: Servers, tmp_path: Path) -> None:
    root = CertificateAuthority.create("root")
    serving = root.intermediate("issuing").issue(["127.0.0.1"])
    clients = CertificateAuthority.create("apiserver clients")

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        await respond(writer, 200, f"hello {request.target}".encode(), content_type="text/plain")

    server = LoopbackServer(hello, serving=serving, client_ca=clients)
    await server.start()
    try:
        apiserver = clients.issue(["kube-apiserver"], server=False, client=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                       ssl=client_context(root, apiserver, tmp_path))
        try:
            status, _, body = await post(reader, writer, "/x", b"", close=True)
        finally:
            writer.close()
        assert (status, body) == (200, b"hello /x")  # the served chain verified against the root alone
        # Without one the handshake fails on the server, which closes the connection: the handler never runs.
        # (asyncio's TLS server closes without flushing its `certificate required` alert, so the client reads
        # EOF; a server that sends the alert makes this raise SSLError instead.)
        assert await asyncio.to_thread(blocking_get, server.port, client_context(root)) == b""
        assert server.connections == 1
    finally:
        await server.stop()


def test_threaded_backend_serves_a_synchronous_client(ca: CertificateAuthority,
                                                      loopback_cert: ServingCertificate) -> None:
    backend = Threaded(WebhookBackend(loopback_cert)).start()
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", backend.server.port, context=client_context(ca), timeout=10)
        conn.request("POST", "/validate", review("sync"), {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        backend.stop()
        backend.stop()  # idempotent: a test may stop its backend before the fixture does
    assert answer["response"] == {"uid": "sync", "allowed": True}
    assert [c.uid for c in backend.server.calls] == ["sync"]
