"""One probe of one endpoint, the way the apiserver would call it.

Connect, TLS handshake verified against the webhook's caBundle (OpenSSL builds the chain; the leaf's
validity and the server name are judged in Go's order by `exporter.certs`), then, for side-effect-free
webhooks only, a dry-run AdmissionReview POST on the same connection. The whole probe runs under one
deadline, the webhook's `timeoutSeconds`, as the apiserver's call does. A probe returns a verdict and never
raises: every failure is one `Reason`.

A backend may authenticate the apiserver with a client certificate. With `credentials` (the apiserver's
kubeConfigFile, `exporter.clientauth`) the probe presents the same one; without, a backend that requires one
is `client_auth_required`, not down: OpenSSL's message callback shows whether the server asked for a
certificate, because a TLS 1.3 server says no before the client reads anything, and often by a reset that
loses its `certificate required` alert.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import certs, reasons, resources
from .clientauth import ClientAuthError, ClientIdentity, WebhookClientConfig
from .kubeconfig import load_chain
from .reasons import Reason
from .targets import ReviewSpec, Target, format_endpoint

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # an AdmissionReview response is a few KiB; anything near this is broken
USER_AGENT = "admission-webhook-exporter"
# How long a second connection waits for a non-TLS answer to say whether it starts with `HTTP/`.
PEEK_SECONDS = 1.0
# How long a probe waits for the verdict of a TLS 1.3 server that asked for a client certificate (before it
# writes its request, or instead of one): the server judges the certificate (or its absence) on the client's
# Finished and answers within a round trip; one that accepts waits for a request, and the wait ends. Short, as
# it adds to the probe's duration.
CLIENT_AUTH_VERDICT_SECONDS = 0.25


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    reason: Reason | None
    detail: str  # the error as an operator would read it; "" on success
    duration_seconds: float
    finished_at: float  # Unix time
    cert_not_after: float | None = None
    http_status: int | None = None


class ProbeFailure(Exception):
    """A verdict reached mid-probe; carries the served certificate's expiry when it was already read."""

    def __init__(self, reason: Reason, detail: str, cert_not_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.cert_not_after = cert_not_after


@dataclass
class Handshake:
    """What the server did in one probe's handshakes, from OpenSSL's message callback."""

    certificate_requested: bool = False
    leaf_der: bytes | None = None  # the served leaf, also when the handshake then fails (TLS 1.2 alerts)


# Set by each probe before it connects: the socket's read callbacks (where OpenSSL calls back) run in a copy of
# the context the connection was made in, so each probe's callbacks find its own record.
_HANDSHAKE: ContextVar[Handshake | None] = ContextVar("awe_handshake", default=None)
# TLS record and handshake message types (RFC 8446 B.1, B.3).
_HANDSHAKE_RECORD, _CERTIFICATE, _CERTIFICATE_REQUEST = 22, 11, 13


def _observe(conn: object, direction: str, version: int, content_type: int, msg_type: int, data: bytes) -> None:
    seen = _HANDSHAKE.get()
    if seen is None or direction != "read" or content_type != _HANDSHAKE_RECORD:
        return
    if msg_type == _CERTIFICATE_REQUEST:
        seen.certificate_requested = True
    elif msg_type == _CERTIFICATE and seen.leaf_der is None:
        seen.leaf_der = first_certificate(data, tls13=version == ssl.TLSVersion.TLSv1_3)


def first_certificate(message: bytes, *, tls13: bool) -> bytes | None:
    """The first (leaf) DER certificate of a Certificate handshake message (RFC 5246 7.4.2, RFC 8446 4.4.2)."""
    at = 4  # type, 3-byte length
    if tls13:
        at += 1 + (message[at] if len(message) > at else 0)  # certificate_request_context
    at += 3  # certificate_list length
    if len(message) < at + 3:
        return None
    length = int.from_bytes(message[at:at + 3], "big")
    der = message[at + 3:at + 3 + length]
    return der if len(der) == length and length else None


@functools.lru_cache(maxsize=4096)
def verifying_context(ca_pem: bytes | None, cert_pem: bytes | None = None,
                      key_pem: bytes | None = None) -> ssl.SSLContext:
    """A client context trusting exactly the caBundle (system roots when there is none), like the apiserver,
    presenting the client certificate the apiserver presents to that webhook, if any.

    Cached per bundle and certificate: loading roots is the expensive part of a context, and both rarely change.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # judged by certs.hostname_failure, with Go's rules and wording
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Go treats every certificate in the roots pool as an anchor, intermediates included.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if ca_pem is None:
        ctx.load_default_certs()
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
    ctx.set_alpn_protocols(["http/1.1"])
    if cert_pem is not None and key_pem is not None:  # checked when the file was loaded
        load_chain("webhook client config", ctx, cert_pem, key_pem)
    if hasattr(ctx, "_msg_callback"):  # CPython's hook for OpenSSL's message callback (3.8+; absent: alerts only)
        setattr(ctx, "_msg_callback", _observe)  # noqa: B010  (not in the typeshed stubs)
    return ctx


@functools.lru_cache(maxsize=1)
def inspecting_context() -> ssl.SSLContext:
    """Accepts any chain: used only to read a certificate that failed verification, to report its expiry."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# Go's resolver says "no such host" for a name that does not exist; glibc says "Name or service not known".
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_UNREACHABLE = {errno.EHOSTUNREACH: reasons.NO_ROUTE, errno.ENETUNREACH: reasons.NETWORK_UNREACHABLE,
                errno.EADDRNOTAVAIL: reasons.ADDRESS_UNAVAILABLE}


def _go_error_text(err: OSError) -> str:
    """An errno in Go's words: the C library's, lower-cased ("no route to host", not "No route to host")."""
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def _classify_os_error(err: OSError, host: str, port: int) -> ProbeFailure:
    address = format_endpoint(host, port)  # Go's net.JoinHostPort: [::1]:443
    if isinstance(err, socket.gaierror):
        if err.errno in _NO_SUCH_HOST:
            return ProbeFailure(Reason.DNS, reasons.NO_SUCH_HOST.format(host=host))
        return ProbeFailure(Reason.DNS, reasons.LOOKUP.format(host=host, error=_go_error_text(err)))
    if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
        return ProbeFailure(Reason.CONNECTION_REFUSED, reasons.REFUSED.format(address=address))
    if (unreachable := _UNREACHABLE.get(err.errno or 0)) is not None:
        return ProbeFailure(Reason.UNREACHABLE, unreachable.format(address=address))
    return ProbeFailure(Reason.CONNECTION_REFUSED if err.errno is None else Reason.UNREACHABLE,
                        f"dial tcp {address}: connect: {_go_error_text(err)}")


async def _connect(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(target.host, target.port, limit=MAX_HEADER_BYTES)
    except OSError as err:
        raise _classify_os_error(err, target.host, target.port) from err


def _server_hostname(target: Target) -> str | None:
    return target.server_name or None


async def _read_leaf(target: Target) -> bytes | None:
    """A second, non-verifying handshake to read the leaf that failed verification."""
    _, writer = await _connect(target)
    try:
        await writer.start_tls(inspecting_context(), server_hostname=_server_hostname(target))
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object else None
    finally:
        writer.transport.abort()


def _judge_leaf(leaf_der: bytes | None, target: Target, now: float) -> tuple[float | None, ProbeFailure | None]:
    """The served leaf's expiry, and the first failure Go would report for the leaf itself."""
    if not leaf_der:
        return None, None
    try:
        leaf = certs.leaf_facts(leaf_der, target.server_name)
    except certs.CertificateError as err:
        return None, ProbeFailure(Reason.TLS_HANDSHAKE, str(err))
    expiry = leaf.not_after
    validity = leaf.validity_failure(now)
    if validity is not None:
        words = reasons.EXPIRED if validity is Reason.X509_EXPIRED else reasons.NOT_YET_VALID
        bound = expiry if validity is Reason.X509_EXPIRED else leaf.not_before
        return expiry, ProbeFailure(
            validity, words.format(now=certs.utc_text(now), bound=certs.utc_text(bound)), expiry,
        )
    mismatch = leaf.hostname_failure
    if mismatch is not None:
        return expiry, ProbeFailure(Reason.X509_HOSTNAME_MISMATCH, mismatch, expiry)
    return expiry, None


async def _handshake(target: Target, writer: asyncio.StreamWriter, identity: ClientIdentity | None,
                     seen: Handshake) -> tuple[float | None, asyncio.StreamWriter]:
    cert, key = (identity.cert_pem, identity.key_pem) if identity is not None else (None, None)
    try:
        await writer.start_tls(verifying_context(target.ca_pem, cert, key), server_hostname=_server_hostname(target))
    except ssl.SSLCertVerificationError as err:
        writer.transport.abort()
        chain_reason = certs.reason_for_openssl_code(err.verify_code)
        try:
            leaf = seen.leaf_der or await _read_leaf(target)
        except (OSError, ssl.SSLError, ProbeFailure):
            leaf = None
        expiry, leaf_failure = _judge_leaf(leaf, target, time.time())
        if leaf_failure is not None:
            raise leaf_failure from err
        raise ProbeFailure(chain_reason, _chain_wording(chain_reason, err), expiry) from err
    except ssl.SSLError as err:
        # The served leaf was judged before the server's alert (TLS 1.2 asks for a client certificate after
        # sending its own): a chain problem stays the verdict.
        expiry, leaf_failure = _judge_leaf(seen.leaf_der, target, time.time())
        if leaf_failure is not None:
            raise leaf_failure from err
        if err.reason == "WRONG_VERSION_NUMBER" and await _answers_plain_http(target):
            raise ProbeFailure(Reason.TLS_HANDSHAKE, reasons.PLAIN_HTTP.says) from err
        raise _tls_failure(tls_wording(err), seen, identity, expiry) from err
    except ConnectionResetError as err:
        raise _tls_failure(reasons.RESET.says, seen, identity, None, alert=False) from err
    except (ConnectionError, asyncio.IncompleteReadError, EOFError) as err:
        raise _tls_failure(reasons.HANDSHAKE_EOF.says, seen, identity, None, alert=False) from err
    ssl_object = writer.get_extra_info("ssl_object")
    leaf = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    expiry, failure = _judge_leaf(leaf, target, time.time())
    if failure is not None:
        raise failure
    return expiry, writer


def _without_certificate(seen: Handshake, identity: ClientIdentity | None) -> bool:
    """The server asked for a client certificate and the probe had none to give."""
    return seen.certificate_requested and (identity is None or identity.cert_pem is None)


def _tls_failure(words: str, seen: Handshake, identity: ClientIdentity | None, expiry: float | None, *,
                 alert: bool = True) -> ProbeFailure:
    """A TLS failure (an alert, a reset, an EOF), or, when it answers a missing client certificate, the
    non-paging `client_auth_required` in the words that say so."""
    if words == reasons.CERTIFICATE_REQUIRED.says:
        return ProbeFailure(Reason.CLIENT_AUTH_REQUIRED, f"{words}: {_NO_CERTIFICATE}", expiry)
    if _without_certificate(seen, identity):
        return ProbeFailure(Reason.CLIENT_AUTH_REQUIRED, reasons.CLIENT_CERT_ASKED.format(error=words), expiry)
    if identity is not None and identity.cert_pem is not None and alert:
        words += f" (the client certificate of user {identity.user!r} was refused)"
    return ProbeFailure(Reason.TLS_HANDSHAKE, words, expiry)


_NO_CERTIFICATE = ("the backend requires a TLS client certificate and none is configured for it (give the "
                   "exporter the apiserver's AdmissionConfiguration kubeConfigFile: --webhook-client-config)")


async def _answers_plain_http(target: Target) -> bool:
    """What Go's client checks when the first record is not TLS: does the answer to a ClientHello start with
    `HTTP/`? (`http: server gave HTTP response to HTTPS client`). A second connection, bounded by PEEK_SECONDS."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = inspecting_context().wrap_bio(incoming, outgoing, server_hostname=_server_hostname(target))
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:
        pass  # the ClientHello is written; the answer is what we want to see
    try:
        reader, writer = await _connect(target)
    except ProbeFailure:
        return False
    try:  # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow the probe's own cancellation
        writer.write(outgoing.read())
        async with asyncio.timeout(PEEK_SECONDS):
            return await reader.readexactly(5) == b"HTTP/"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.transport.abort()


async def _client_auth_verdict(reader: asyncio.StreamReader) -> None:
    """A handshake-only probe of a server that asked for a client certificate: TLS 1.3 completes the client's
    handshake before the server judges the certificate it got (or did not), so wait briefly for that judgement.
    An alert raises ssl.SSLError, a hang-up returns b"" (EOF): both are failures; silence is acceptance."""
    try:  # asyncio.timeout, not wait_for, which can swallow the probe's cancellation in 3.11
        async with asyncio.timeout(CLIENT_AUTH_VERDICT_SECONDS):
            answer = await reader.read(1)
    except TimeoutError:
        return  # it waits for a request: the certificate (or its absence) was accepted
    if answer == b"":
        raise asyncio.IncompleteReadError(b"", 1)


def tls_wording(err: ssl.SSLError) -> str:
    """A handshake error in the words Go's crypto/tls (so the apiserver) uses, where OpenSSL's differ."""
    reason = err.reason or ""
    if reason == "WRONG_VERSION_NUMBER":  # the peer answered with something that is not TLS
        return reasons.FIRST_RECORD.says
    if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):  # an alert the peer sent
        alert = reason.split("_ALERT_", 1)[1].lower().replace("_", " ")
        return reasons.REMOTE_ERROR.format(alert=alert)
    return reasons.TLS_ERROR.format(error=reason or err)


def _chain_wording(reason: Reason, err: ssl.SSLCertVerificationError) -> str:
    if reason is Reason.X509_UNKNOWN_AUTHORITY:
        return f"{reasons.UNKNOWN_AUTHORITY.says} ({err.verify_message})"
    if reason is Reason.X509_EXPIRED:
        return f"x509: certificate has expired or is not yet valid: {err.verify_message} (in the chain)"
    return f"x509: {err.verify_message}"


def admission_review(spec: ReviewSpec, uid: str) -> dict[str, Any]:
    """A dry-run AdmissionReview for a throw-away object: nothing is stored, and side effects are off."""
    kind = resources.kind_of(spec.resource)
    api_version = f"{spec.group}/{spec.api_version}" if spec.group else spec.api_version
    namespace = "default" if spec.namespaced else ""
    metadata: dict[str, Any] = {"name": "admission-webhook-exporter-probe",
                                "labels": {"app.kubernetes.io/name": "admission-webhook-exporter-probe"}}
    if namespace:
        metadata["namespace"] = namespace
    obj = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    gvk = {"group": spec.group, "version": spec.api_version, "kind": kind}
    gvr = {"group": spec.group, "version": spec.api_version, "resource": spec.resource}
    request: dict[str, Any] = {
        "uid": uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": metadata["name"],
        "operation": spec.operation,
        "userInfo": {"username": "system:serviceaccount:monitoring:admission-webhook-exporter",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": None if spec.operation == "DELETE" else obj,
        "oldObject": obj if spec.operation in ("UPDATE", "DELETE") else None,
        "dryRun": True,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{spec.operation.title()}Options",
                    "dryRun": ["All"]},
    }
    if spec.sub_resource:
        request["subResource"] = spec.sub_resource
        request["requestSubResource"] = spec.sub_resource
    if namespace:
        request["namespace"] = namespace
    return {"apiVersion": f"admission.k8s.io/{spec.version}", "kind": "AdmissionReview", "request": request}


# Stands for the uid in the serialised review; the same length as every uuid4 text.
_UID_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


@functools.lru_cache(maxsize=256)
def _review_halves(spec: ReviewSpec) -> tuple[bytes, bytes]:
    body = json.dumps(admission_review(spec, _UID_PLACEHOLDER), separators=(",", ":")).encode()
    before, _, after = body.partition(_UID_PLACEHOLDER.encode())
    return before, after


def review_body(spec: ReviewSpec, uid: str) -> bytes:
    """`admission_review(spec, uid)` as JSON bytes, serialised once per spec (few distinct ones: a rule's
    resource and operation): only the uid, a uuid's text that needs no escaping, changes between probes."""
    before, after = _review_halves(spec)
    return before + uid.encode() + after


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise ProbeFailure(Reason.HTTP_ERROR, reasons.BODY_TOO_LARGE.format(limit=MAX_BODY_BYTES))
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise ProbeFailure(Reason.HTTP_ERROR, f"response body of {length} bytes, larger than {MAX_BODY_BYTES}")
        return await reader.readexactly(length)
    data = await reader.read(MAX_BODY_BYTES + 1)
    while data and len(data) <= MAX_BODY_BYTES:
        more = await reader.read(MAX_BODY_BYTES + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > MAX_BODY_BYTES:
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.BODY_TOO_LARGE.format(limit=MAX_BODY_BYTES))
    return data


def host_header(target: Target) -> str:
    """The Host the apiserver sends: the host[:port] it calls (an IPv6 address in brackets, as in a URL)."""
    if target.authority:
        return target.authority
    if target.port != 443:
        return format_endpoint(target.server_name, target.port)
    return f"[{target.server_name}]" if ":" in target.server_name else target.server_name


async def _post_review(target: Target, spec: ReviewSpec, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, identity: ClientIdentity | None) -> int:
    uid = str(uuid.uuid4())
    body = review_body(spec, uid)
    authorization = f"Authorization: {identity.authorization}\r\n" if identity and identity.authorization else ""
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host_header(target)}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{authorization}Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    try:
        raw_head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as err:
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.HEADERS_TOO_LARGE.format(limit=MAX_HEADER_BYTES)) from err
    lines = raw_head.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/") or not status_parts[1].isdigit():
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.MALFORMED.format(line=repr(lines[0][:80])))
    status = int(status_parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    payload = await _read_body(reader, headers)
    if not 200 <= status < 300:
        snippet = payload[:200].decode("utf-8", errors="replace")
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.STATUS.format(status=status, body=snippet))
    try:
        review = json.loads(payload)
    except ValueError as err:
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.NOT_JSON.format(error=err)) from err
    response = review.get("response") if isinstance(review, dict) else None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview" or not isinstance(response, dict):
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.NOT_A_REVIEW.says)
    if response.get("uid") != uid:
        got = repr(response.get("uid"))
        raise ProbeFailure(Reason.HTTP_ERROR, reasons.WRONG_UID.format(expected=repr(uid), got=got))
    return status


async def probe(target: Target, *, credentials: WebhookClientConfig | None = None) -> ProbeResult:
    """Probe one endpoint under its deadline; never raises (cancellation aside)."""
    started = time.monotonic()
    expiry: float | None = None
    status: int | None = None
    writer: asyncio.StreamWriter | None = None
    seen = Handshake()
    _HANDSHAKE.set(seen)  # this task's context: the connection below inherits it
    identity: ClientIdentity | None = None
    try:
        async with asyncio.timeout(target.timeout_seconds):
            identity = credentials.identity(target.authority) if credentials is not None else None
            reader, writer = await _connect(target)
            expiry, writer = await _handshake(target, writer, identity, seen)
            # The server judges the client's certificate after the client's handshake is done: wait for that
            # verdict where nothing else would read it, or where the request written at once would make the
            # server reset the connection and lose its `certificate required` alert.
            if seen.certificate_requested and (target.review is None or _without_certificate(seen, identity)):
                await _client_auth_verdict(reader)
            if target.review is not None:
                status = await _post_review(target, target.review, reader, writer, identity)
    except ProbeFailure as failure:
        return _result(False, failure.reason, failure.detail, started, failure.cert_not_after or expiry, status)
    except ClientAuthError as err:  # a credentials file that changed under us since it was loaded
        return _result(False, Reason.INVALID_CONFIG, str(err), started, expiry, status)
    except TimeoutError:
        return _result(False, Reason.TIMEOUT,
                       f"{reasons.DEADLINE.says} (no answer within {target.timeout_seconds:g}s)",
                       started, expiry, status)
    except ssl.SSLError as err:  # an alert after the handshake: TLS 1.3 servers judge the client's certificate then
        refused = _tls_failure(tls_wording(err), seen, identity, expiry)
        return _result(False, refused.reason, refused.detail, started, expiry, status)
    except (asyncio.IncompleteReadError, ConnectionError, EOFError) as err:
        if _without_certificate(seen, identity) and status is None:
            words = reasons.RESET.says if isinstance(err, ConnectionResetError) else reasons.HANDSHAKE_EOF.says
            detail = reasons.CLIENT_CERT_ASKED.format(error=words)
            return _result(False, Reason.CLIENT_AUTH_REQUIRED, detail, started, expiry, status)
        return _result(False, Reason.HTTP_ERROR, reasons.CLOSED_EARLY.format(error=err),
                       started, expiry, status)
    except (OSError, ValueError, UnicodeError) as err:
        return _result(False, Reason.HTTP_ERROR, f"{type(err).__name__}: {err}", started, expiry, status)
    finally:
        if writer is not None:
            writer.transport.abort()  # no TLS close_notify dance: a hung peer must not outlive the deadline
    return _result(True, None, "", started, expiry, status)


def prober(credentials: WebhookClientConfig | None) -> Callable[[Target], Awaitable[ProbeResult]]:
    """The probe function the scheduler calls, presenting `credentials`' client certificates (when given)."""
    return probe if credentials is None else functools.partial(probe, credentials=credentials)


def _result(success: bool, reason: Reason | None, detail: str, started: float, expiry: float | None,
            status: int | None) -> ProbeResult:
    return ProbeResult(success=success, reason=reason, detail=detail,
                       duration_seconds=time.monotonic() - started, finished_at=time.time(),
                       cert_not_after=expiry, http_status=status)
