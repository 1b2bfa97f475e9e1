"""Every failure reason, met for real: TLS servers on 127.0.0.1 with certificates made by `cryptography`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

import pytest

from exporter.backend import Behaviour
from exporter.pki import CertificateAuthority
from exporter.probe import MAX_BODY_BYTES, admission_review, probe, review_body
from exporter.reasons import Reason, recognise
from exporter.targets import ReviewSpec
from tests import factories as f
from tests.conftest import Servers
from tests.helpers import only_plan
from tests.servers import fixed_response, free_port, never_speak, plain_http, read_request_then_hang

NOW = dt.datetime.now(dt.UTC)


def url_hook(port: int, ca_bundle: str, *, timeout: int = 2, side_effects: str = "None",
             host: str = "127.0.0.1", kind: str = "ValidatingWebhookConfiguration") -> dict[str, object]:
    return f.configuration("cfg", f.webhook("hook.example.com", f.url_client(port, ca_bundle, host=host),
                                            timeout=timeout, side_effects=side_effects), kind=kind)


async def probe_config(config: dict[str, object]):  # type: ignore[no-untyped-def]
    (target,) = only_plan(config).targets
    result = await probe(target)
    if result.reason is not None:  # in words the one wording table recognises as that reason, as explain does
        wording = recognise(result.detail)
        assert wording is not None and wording.reason is result.reason, result.detail
    return result


async def test_healthy_validating_webhook(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert (result.success, result.reason, result.detail, result.http_status) == (True, None, "", 200)
    assert result.cert_not_after == pytest.approx(loopback_cert.cert.not_valid_after_utc.timestamp())
    assert backend.requests == 1


async def test_healthy_mutating_webhook(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert)
    config = url_hook(backend.port, ca.ca_bundle, kind="MutatingWebhookConfiguration")
    plan = only_plan(config)
    assert plan.key.type == "admit"
    result = await probe(plan.targets[0])
    assert result.success and backend.requests == 1


async def test_side_effects_webhook_gets_no_request(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle, side_effects="Some"))
    assert result.success and result.http_status is None
    assert backend.requests == 0  # stopped after the handshake


async def test_connection_refused(ca: CertificateAuthority) -> None:
    port = await free_port()
    result = await probe_config(url_hook(port, ca.ca_bundle))
    assert result.reason is Reason.CONNECTION_REFUSED
    assert result.detail == f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    assert result.cert_not_after is None


async def test_accepts_tcp_never_speaks_tls_is_timeout(servers: Servers, ca: CertificateAuthority) -> None:
    server = await servers.raw(never_speak)
    started = time.monotonic()
    result = await probe_config(url_hook(server.port, ca.ca_bundle, timeout=1))
    assert result.reason is Reason.TIMEOUT
    assert result.detail == "context deadline exceeded (no answer within 1s)"
    assert 1.0 <= time.monotonic() - started < 3  # bounded by timeoutSeconds, not by the server


async def test_tls_complete_never_answers_is_timeout_with_expiry(servers: Servers, ca: CertificateAuthority,
                                                                 loopback_cert) -> None:
    server = await servers.raw(read_request_then_hang, serving=loopback_cert)
    result = await probe_config(url_hook(server.port, ca.ca_bundle, timeout=1))
    assert result.reason is Reason.TIMEOUT
    assert result.cert_not_after == pytest.approx(loopback_cert.cert.not_valid_after_utc.timestamp())


async def test_slower_than_timeout(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert, Behaviour(delay_seconds=3))
    result = await probe_config(url_hook(backend.port, ca.ca_bundle, timeout=1))
    assert result.reason is Reason.TIMEOUT
    assert 1.0 <= result.duration_seconds < 2.0


async def test_plain_http_on_tls_port_is_said_as_go_says_it(servers: Servers, ca: CertificateAuthority) -> None:
    """Go's net/http words a first record starting with `HTTP/` its own way; the probe used to say first-record."""
    server = await servers.raw(plain_http)
    result = await probe_config(url_hook(server.port, ca.ca_bundle))
    assert result.reason is Reason.TLS_HANDSHAKE
    assert result.detail == "http: server gave HTTP response to HTTPS client"


async def test_another_protocol_on_tls_port_is_first_record(servers: Servers, ca: CertificateAuthority) -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        await writer.drain()
        await reader.read(1024)

    server = await servers.raw(ssh)
    result = await probe_config(url_hook(server.port, ca.ca_bundle))
    assert (result.reason, result.detail) == (Reason.TLS_HANDSHAKE, "tls: first record does not look like a TLS "
                                                                    "handshake")


async def test_reset_during_handshake_is_tls_handshake(servers: Servers, ca: CertificateAuthority) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # part of the ClientHello, then slam the door

    server = await servers.raw(reset)
    result = await probe_config(url_hook(server.port, ca.ca_bundle))
    assert result.reason is Reason.TLS_HANDSHAKE


async def test_foreign_ca_is_unknown_authority_with_expiry(servers: Servers, ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("rotated CA")
    serving = other.issue(["127.0.0.1"])
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_UNKNOWN_AUTHORITY
    assert result.detail.startswith("x509: certificate signed by unknown authority")
    assert result.cert_not_after == pytest.approx(serving.cert.not_valid_after_utc.timestamp())
    assert backend.requests == 0


async def test_expired_leaf(servers: Servers, ca: CertificateAuthority) -> None:
    serving = ca.issue(["127.0.0.1"], valid_from=NOW - dt.timedelta(days=30), valid_until=NOW - dt.timedelta(days=1))
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_EXPIRED
    assert "x509: certificate has expired or is not yet valid: current time" in result.detail
    assert " is after " in result.detail
    assert result.cert_not_after == pytest.approx(serving.cert.not_valid_after_utc.timestamp())


async def test_expired_and_foreign_reports_expired_first_as_go_does(servers: Servers, ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("rotated CA")
    serving = other.issue(["127.0.0.1"], valid_from=NOW - dt.timedelta(days=30),
                          valid_until=NOW - dt.timedelta(days=1))
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_EXPIRED


async def test_not_yet_valid_leaf(servers: Servers, ca: CertificateAuthority) -> None:
    serving = ca.issue(["127.0.0.1"], valid_from=NOW + dt.timedelta(days=1), valid_until=NOW + dt.timedelta(days=90))
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_NOT_YET_VALID
    assert " is before " in result.detail


async def test_hostname_mismatch(servers: Servers, ca: CertificateAuthority) -> None:
    serving = ca.issue(["webhook.other.svc"])
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_HOSTNAME_MISMATCH
    # An IP is matched against IP SANs only, and Go says so (tests/test_certs.py has the whole table).
    assert result.detail == "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"


async def test_common_name_only_is_rejected_like_go(servers: Servers, ca: CertificateAuthority) -> None:
    serving = ca.issue([], common_name="127.0.0.1")
    backend = await servers.backend(serving)
    result = await probe_config(url_hook(backend.port, ca.ca_bundle))
    assert result.reason is Reason.X509_HOSTNAME_MISMATCH
    assert result.detail == "x509: certificate relies on legacy Common Name field, use SANs instead"


async def test_dns_failure(ca: CertificateAuthority) -> None:
    # .invalid never resolves (RFC 6761), so the resolver answers without dialling anything.
    result = await probe_config(url_hook(443, ca.ca_bundle, host="webhook.does-not-exist.invalid"))
    assert result.reason is Reason.DNS
    assert result.detail.startswith("dial tcp: lookup webhook.does-not-exist.invalid")


@pytest.mark.parametrize(
    ("raw", "detail_start"),
    [
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
         "the server responded with status 500: oops"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "response is not an AdmissionReview"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "response is not JSON"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 57\r\n\r\n{"kind":"AdmissionReview","response":{"uid":"not-yours"}}',
         "expected response.uid="),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "connection closed before a full response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), "response body of"),
        (b"garbage\r\n\r\n", "malformed HTTP response"),
    ],
)
async def test_http_errors(servers: Servers, ca: CertificateAuthority, loopback_cert, raw: bytes,
                           detail_start: str) -> None:
    server = await servers.raw(fixed_response(raw), serving=loopback_cert)
    result = await probe_config(url_hook(server.port, ca.ca_bundle))
    assert result.reason is Reason.HTTP_ERROR
    assert result.detail.startswith(detail_start), result.detail
    assert result.cert_not_after is not None


async def test_chunked_admission_review_is_accepted(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import json

        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
        length = int(lengths[0])
        review = json.loads(await reader.readexactly(length))
        body = json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                           "response": {"uid": review["request"]["uid"], "allowed": False}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()

    server = await servers.raw(chunked, serving=loopback_cert)
    result = await probe_config(url_hook(server.port, ca.ca_bundle))
    assert result.success, result.detail  # a denial is a working webhook


async def test_invalid_ca_bundle_is_invalid_config_without_dialling() -> None:
    plan = only_plan(url_hook(1, "bm90IGEgY2VydGlmaWNhdGU="))  # base64 of "not a certificate"
    assert plan.targets == ()
    assert plan.verdict is not None
    assert plan.verdict.reason is Reason.INVALID_CONFIG
    assert plan.verdict.detail == "caBundle holds no PEM CERTIFICATE block"


async def test_system_roots_when_no_ca_bundle(servers: Servers, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert)
    result = await probe_config(url_hook(backend.port, ""))
    assert result.reason is Reason.X509_UNKNOWN_AUTHORITY  # our test CA is in no system store


def test_admission_review_is_dry_run_for_the_first_rule() -> None:
    spec = ReviewSpec(version="v1", group="apps", api_version="v1", resource="deployments", sub_resource="",
                      operation="UPDATE", namespaced=True)
    review = admission_review(spec, "uid-1")
    request = review["request"]
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert request["dryRun"] is True
    assert request["options"]["dryRun"] == ["All"]
    assert request["kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert request["operation"] == "UPDATE"
    assert request["oldObject"] == request["object"]
    assert request["object"]["metadata"]["namespace"] == "default"


@pytest.mark.parametrize("spec", [
    ReviewSpec(version="v1", group="apps", api_version="v1", resource="deployments", sub_resource="",
               operation="UPDATE", namespaced=True),
    ReviewSpec(version="v1beta1", group="", api_version="v1", resource="pods", sub_resource="exec",
               operation="CONNECT", namespaced=True),
    ReviewSpec(version="v1", group="", api_version="v1", resource="namespaces", sub_resource="",
               operation="DELETE", namespaced=False),
], ids=["update", "subresource", "delete-cluster-scoped"])
def test_the_review_body_is_serialised_once_and_only_the_uid_changes(spec: ReviewSpec) -> None:
    for uid in (str(uuid.uuid4()), str(uuid.uuid4())):
        assert review_body(spec, uid) == json.dumps(admission_review(spec, uid), separators=(",", ":")).encode()


def test_tls_errors_read_as_go_prints_them() -> None:
    import ssl

    from exporter.probe import tls_wording

    def err(reason: str) -> ssl.SSLError:
        e = ssl.SSLError(1, reason)
        e.reason = reason
        return e

    assert tls_wording(err("WRONG_VERSION_NUMBER")) == "tls: first record does not look like a TLS handshake"
    assert tls_wording(err("TLSV1_ALERT_PROTOCOL_VERSION")) == "remote error: tls: protocol version"
    assert tls_wording(err("SSLV3_ALERT_HANDSHAKE_FAILURE")) == "remote error: tls: handshake failure"
    assert tls_wording(err("EXCESSIVE_MESSAGE_SIZE")) == "tls: EXCESSIVE_MESSAGE_SIZE"


# -- IPv6: addresses in the words Go uses for them ------------------------------------------------------------
async def test_ipv6_dial_errors_bracket_the_address(ca: CertificateAuthority) -> None:
    """Go's net.JoinHostPort: `dial tcp [::1]:port`; the probe used to print `dial tcp ::1:port`."""
    import socket

    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    result = await probe_config(url_hook(port, ca.ca_bundle, host="[::1]"))
    assert (result.reason, result.detail) == (Reason.CONNECTION_REFUSED,
                                              f"dial tcp [::1]:{port}: connect: connection refused")


async def test_ipv6_host_header_is_bracketed(ca: CertificateAuthority) -> None:
    """The Host header of a url webhook on an IPv6 address: `[::1]:port`, as in the URL (it used to be `::1:port`)."""
    from exporter.backend import LoopbackServer, read_request, respond

    serving = ca.issue(["::1"])
    hosts: list[str] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        hosts.append(request.headers["host"])
        await respond(writer, 500, b"recorded")

    server = await LoopbackServer(record, serving=serving, host="::1").start()
    try:
        result = await probe_config(url_hook(server.port, ca.ca_bundle, host="[::1]"))
    finally:
        await server.stop()
    assert result.reason is Reason.HTTP_ERROR  # it answered 500: the request with its headers got there
    assert hosts == [f"[::1]:{server.port}"]


def test_host_header_is_what_the_apiserver_sends() -> None:
    from exporter.probe import host_header

    svc = f.webhook("s.example.com", f.service_client("team", "hook", "", port=8443))
    plan = only_plan(f.configuration("c", svc), f.service("team", "hook", [{"port": 8443, "targetPort": 9443}]),
                     f.endpoint_slice("team", "hook", [{"port": 9443}], [("fd00::7", True)]))
    (target,) = plan.targets
    assert (target.key.endpoint, host_header(target)) == ("[fd00::7]:9443", "hook.team.svc:8443")
