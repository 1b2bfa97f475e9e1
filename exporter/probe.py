"""One probe of one endpoint, the way the apiserver would call it.

Connect, TLS handshake verified against the webhook's caBundle (OpenSSL builds the chain; the leaf's
validity and the server name are judged in Go's order by `exporter.certs`), then, for side-effect-free
webhooks only, a dry-run AdmissionReview POST on the same connection. The whole probe runs under one
deadline, the webhook's `timeoutSeconds`, as the apiserver's call does. A probe returns a verdict and never
raises: every failure is one `Reason`.
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
from dataclasses import dataclass
from typing import Any

from . import certs, reasons, resources
from .reasons import Reason
from .targets import ReviewSpec, Target

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # an AdmissionReview response is a few KiB; anything near this is broken
USER_AGENT = "admission-webhook-exporter"


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


@functools.lru_cache(maxsize=4096)
def verifying_context(ca_pem: bytes | None) -> ssl.SSLContext:
    """A client context trusting exactly the caBundle (system roots when there is none), like the apiserver.

    Cached per bundle: loading roots is the expensive part of a context, and bundles rarely change.
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
    address = f"{host}:{port}"
    if isinstance(err, socket.gaierror):
        if err.errno in _NO_SUCH_HOST:
            return ProbeFailure(Reason.DNS, reasons.NO_SUCH_HOST.format(host=host))
        return ProbeFailure(Reason.DNS, reasons.LOOKUP.format(host=host, error=_go_error_text(err)))
    if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
        return ProbeFailure(Reason.CONNECTION_REFUSED, reasons.REFUSED.format(address=address))
    if (unreachable := _UNREACHABLE.get(err.errno or 0)) is not None:
        return ProbeFailure(unreachable.reason, unreachable.format(address=address))
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


async def _handshake(target: Target, writer: asyncio.StreamWriter) -> tuple[float | None, asyncio.StreamWriter]:
    try:
        await writer.start_tls(verifying_context(target.ca_pem), server_hostname=_server_hostname(target))
    except ssl.SSLCertVerificationError as err:
        writer.transport.abort()
        chain_reason = certs.reason_for_openssl_code(err.verify_code)
        try:
            leaf = await _read_leaf(target)
        except (OSError, ssl.SSLError, ProbeFailure):
            leaf = None
        expiry, leaf_failure = _judge_leaf(leaf, target, time.time())
        if leaf_failure is not None:
            raise leaf_failure from err
        raise ProbeFailure(chain_reason, _chain_wording(chain_reason, err), expiry) from err
    except ssl.SSLError as err:
        raise ProbeFailure(Reason.TLS_HANDSHAKE, tls_wording(err)) from err
    except ConnectionResetError as err:
        raise ProbeFailure(Reason.TLS_HANDSHAKE, reasons.RESET.says) from err
    except (ConnectionError, asyncio.IncompleteReadError, EOFError) as err:
        raise ProbeFailure(Reason.TLS_HANDSHAKE, reasons.HANDSHAKE_EOF.says) from err
    ssl_object = writer.get_extra_info("ssl_object")
    leaf = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    expiry, failure = _judge_leaf(leaf, target, time.time())
    if failure is not None:
        raise failure
    return expiry, writer


def tls_wording(err: ssl.SSLError) -> str:
    """A handshake error in the words Go's crypto/tls (so the apiserver) uses, where OpenSSL's differ."""
    reason = err.reason or ""
    if reason == "WRONG_VERSION_NUMBER":  # the peer answered with something that is not TLS
        return reasons.FIRST_RECORD.says
    if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_")):  # an alert the peer sent
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


async def _post_review(
    target: Target, spec: ReviewSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> int:
    uid = str(uuid.uuid4())
    body = review_body(spec, uid)
    host = target.server_name if target.port == 443 else f"{target.server_name}:{target.port}"
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
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


async def probe(target: Target) -> ProbeResult:
    """Probe one endpoint under its deadline; never raises (cancellation aside)."""
    started = time.monotonic()
    expiry: float | None = None
    status: int | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(target.timeout_seconds):
            reader, writer = await _connect(target)
            expiry, writer = await _handshake(target, writer)
            if target.review is not None:
                status = await _post_review(target, target.review, reader, writer)
    except ProbeFailure as failure:
        return _result(False, failure.reason, failure.detail, started, failure.cert_not_after or expiry, status)
    except TimeoutError:
        return _result(False, Reason.TIMEOUT,
                       f"{reasons.DEADLINE.says} (no answer within {target.timeout_seconds:g}s)",
                       started, expiry, status)
    except (asyncio.IncompleteReadError, ConnectionError, EOFError) as err:
        return _result(False, Reason.HTTP_ERROR, reasons.CLOSED_EARLY.format(error=err),
                       started, expiry, status)
    except (OSError, ssl.SSLError, ValueError, UnicodeError) as err:
        return _result(False, Reason.HTTP_ERROR, f"{type(err).__name__}: {err}", started, expiry, status)
    finally:
        if writer is not None:
            writer.transport.abort()  # no TLS close_notify dance: a hung peer must not outlive the deadline
    return _result(True, None, "", started, expiry, status)


def _result(success: bool, reason: Reason | None, detail: str, started: float, expiry: float | None,
            status: int | None) -> ProbeResult:
    return ProbeResult(success=success, reason=reason, detail=detail,
                       duration_seconds=time.monotonic() - started, finished_at=time.time(),
                       cert_not_after=expiry, http_status=status)
