"""The closed set of probe failure reasons, each named after what the kube-apiserver prints, and the one table
of those words: how Go and the apiserver word each failure, and the pattern that recognises the words.

One module owns the list so the collector can pre-create every counter at 0, the docs can be checked against
it, and alerts can match on exact values. The probe writes its failure details with the table's words, and
`explain` recognises a pasted apiserver error with the table's patterns, so both land on the same `reason`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    NO_ENDPOINTS = "no_endpoints"
    SERVICE_NOT_FOUND = "service_not_found"
    CONNECTION_REFUSED = "connection_refused"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    DNS = "dns"
    TLS_HANDSHAKE = "tls_handshake"
    X509_UNKNOWN_AUTHORITY = "x509_unknown_authority"
    X509_EXPIRED = "x509_expired"
    X509_NOT_YET_VALID = "x509_not_yet_valid"
    X509_HOSTNAME_MISMATCH = "x509_hostname_mismatch"
    HTTP_ERROR = "http_error"
    INVALID_CONFIG = "invalid_config"


@dataclass(frozen=True)
class Wording:
    """One way a failure is worded, and how to recognise it in an error text.

    `says` is the text with `{field}`s where it varies (`format` fills them, `example` shows them as `...`).
    `pattern` is searched in an error text; the first row of `WORDINGS` that matches decides. `diagnosis` is
    `explain`'s key: finer than the reason where the advice differs (a dial timeout is a firewall, a context
    timeout a slow webhook; a tunnel's broken pipe is not the backend's fault). `go` is False for the probe's
    own words about an HTTP exchange, which the apiserver words its own way.
    """

    reason: Reason
    diagnosis: str
    says: str
    pattern: str
    go: bool = True

    def format(self, **fields: object) -> str:
        return self.says.format(**fields)

    @property
    def example(self) -> str:
        return re.sub(r"\{[a-z_]+\}", "...", self.says)


def _w(reason: Reason, diagnosis: str, says: str, pattern: str, *, go: bool = True) -> Wording:
    return Wording(reason, diagnosis, says, pattern, go)


NO_ENDPOINTS = _w(Reason.NO_ENDPOINTS, "no_endpoints", 'no endpoints available for service "{service}"',
                  r"no endpoints available for service")
SERVICE_NOT_FOUND = _w(Reason.SERVICE_NOT_FOUND, "service_not_found", 'service "{service}" not found',
                       r'service "[^"]*" not found')
# An egress proxy or Konnectivity between the apiserver and the network: its words come before the dial's.
PROXY_ERROR = _w(Reason.UNREACHABLE, "tunnel",
                 "proxy error from {proxy} while dialing {address}, code {code}: {status}",
                 r"proxy error")  # the egress dialer's words for any status but 200 (a 503: the route is unknown)
BROKEN_PIPE = _w(Reason.UNREACHABLE, "tunnel", "write tcp {local}->{remote}: write: broken pipe", r"write: broken pipe")
CONNECTION_LOST = _w(Reason.UNREACHABLE, "tunnel", "http2: client connection lost", r"http2: client connection lost")
TUNNEL = _w(Reason.UNREACHABLE, "tunnel", "... konnectivity ... / ... egress ...", r"konnectivity|egress")
REFUSED = _w(Reason.CONNECTION_REFUSED, "connection_refused", "dial tcp {address}: connect: connection refused",
             r"connect: connection refused")
NO_ROUTE = _w(Reason.UNREACHABLE, "unreachable", "dial tcp {address}: connect: no route to host", r"no route to host")
NETWORK_UNREACHABLE = _w(Reason.UNREACHABLE, "unreachable", "dial tcp {address}: connect: network is unreachable",
                         r"network is unreachable")
ADDRESS_UNAVAILABLE = _w(Reason.UNREACHABLE, "unreachable",
                         "dial tcp {address}: connect: cannot assign requested address",
                         r"connect: cannot assign requested address")
# The peer closed the connection with a reset: during the handshake it is the backend (or what stands in front
# of it) refusing TLS, as the probe reports it.
RESET = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "read: connection reset by peer", r"connection reset by peer")
DIAL_TIMEOUT = _w(Reason.TIMEOUT, "dial_timeout", "dial tcp {address}: i/o timeout", r"dial tcp [^ ]+: i/o timeout")
DEADLINE = _w(Reason.TIMEOUT, "timeout", "context deadline exceeded", r"context deadline exceeded")
CLIENT_TIMEOUT = _w(Reason.TIMEOUT, "timeout",
                    "net/http: request canceled (Client.Timeout exceeded while awaiting headers)",
                    r"Client\.Timeout exceeded")
IO_TIMEOUT = _w(Reason.TIMEOUT, "timeout", "read tcp {local}->{remote}: i/o timeout", r"i/o timeout")
AWAITING_HEADERS = _w(Reason.TIMEOUT, "timeout", "net/http: timeout awaiting response headers", r"timeout awaiting")
NO_SUCH_HOST = _w(Reason.DNS, "dns", "dial tcp: lookup {host}: no such host", r"lookup [^ ]+.*no such host")
MISBEHAVING = _w(Reason.DNS, "dns", "dial tcp: lookup {host} on {server}: server misbehaving",
                 r"lookup [^ ]+.*server misbehaving")
LOOKUP = _w(Reason.DNS, "dns", "dial tcp: lookup {host}: {error}", r"dial tcp: lookup [^ ]+")
UNKNOWN_AUTHORITY = _w(Reason.X509_UNKNOWN_AUTHORITY, "x509_unknown_authority",
                       "x509: certificate signed by unknown authority",
                       r"x509: certificate signed by unknown authority")
NOT_YET_VALID = _w(Reason.X509_NOT_YET_VALID, "x509_not_yet_valid",
                   "x509: certificate has expired or is not yet valid: current time {now} is before {bound}",
                   r"x509: certificate has expired or is not yet valid: .* is before")
EXPIRED = _w(Reason.X509_EXPIRED, "x509_expired",
             "x509: certificate has expired or is not yet valid: current time {now} is after {bound}",
             r"x509: certificate has expired or is not yet valid")
NOT_VALID_FOR = _w(Reason.X509_HOSTNAME_MISMATCH, "x509_hostname_mismatch",
                   "x509: certificate is valid for {names}, not {host}",
                   r"x509: certificate is valid for")
NO_IP_SANS = _w(Reason.X509_HOSTNAME_MISMATCH, "x509_hostname_mismatch",
                "x509: cannot validate certificate for {host} because it doesn't contain any IP SANs",
                r"x509: cannot validate certificate for")
NO_NAMES = _w(Reason.X509_HOSTNAME_MISMATCH, "x509_hostname_mismatch",
              "x509: certificate is not valid for any names, but wanted to match {host}",
              r"x509: certificate is not valid for any names")
LEGACY_COMMON_NAME = _w(Reason.X509_HOSTNAME_MISMATCH, "x509_hostname_mismatch",
                        "x509: certificate relies on legacy Common Name field, use SANs instead", r"legacy Common Name")
FIRST_RECORD = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "tls: first record does not look like a TLS handshake",
                  r"first record does not look like a TLS handshake")
REMOTE_ERROR = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "remote error: tls: {alert}", r"remote error: tls:")
TLS_ERROR = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "tls: {error}", r"tls:")
HANDSHAKE_EOF = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "EOF", r"EOF")  # the peer hung up mid-handshake
# The answer was not a valid AdmissionReview: the apiserver's (client-go's) words, then the probe's own.
NOT_FOUND = _w(Reason.HTTP_ERROR, "http_error", "the server could not find the requested resource",
               r"the server could not find the requested resource")
SERVER_ERROR = _w(Reason.HTTP_ERROR, "http_error", 'an error on the server ("{body}") has prevented the request from '
                  "succeeding", r"an error on the server")
WRONG_UID = _w(Reason.HTTP_ERROR, "http_error", "expected response.uid={expected}, got {got}",
               r"expected response\.uid")
INVALID_RESPONSE = _w(Reason.HTTP_ERROR, "http_error", "received invalid webhook response: {error}",
                      r"received invalid webhook response")
STATUS_CODE = _w(Reason.HTTP_ERROR, "http_error",
                 "the server responded with the status code {status} but did not return more information",
                 r"status code")
INTERNAL_SERVER_ERROR = _w(Reason.HTTP_ERROR, "http_error", "Internal Server Error", r"Internal Server Error")
UNEXPECTED = _w(Reason.HTTP_ERROR, "http_error", "unexpected end of JSON input", r"unexpected")
STATUS = _w(Reason.HTTP_ERROR, "http_error", "the server responded with status {status}: {body}",
            r"the server responded with status \d+", go=False)
NOT_JSON = _w(Reason.HTTP_ERROR, "http_error", "response is not JSON: {error}", r"response is not JSON", go=False)
NOT_A_REVIEW = _w(Reason.HTTP_ERROR, "http_error", "response is not an AdmissionReview",
                  r"response is not an AdmissionReview", go=False)
CLOSED_EARLY = _w(Reason.HTTP_ERROR, "http_error", "connection closed before a full response: {error}",
                  r"connection closed before a full response", go=False)
BODY_TOO_LARGE = _w(Reason.HTTP_ERROR, "http_error", "response body larger than {limit} bytes",
                    r"response body (larger than|of \d+ bytes, larger than)", go=False)
HEADERS_TOO_LARGE = _w(Reason.HTTP_ERROR, "http_error", "response headers larger than {limit} bytes",
                       r"response headers larger than", go=False)
MALFORMED = _w(Reason.HTTP_ERROR, "http_error", "malformed HTTP response: {line}", r"malformed HTTP response", go=False)

# First match wins, so the order matters: a tunnel before the dial it wraps, a dial timeout before any timeout,
# each x509 wording before the `tls:` prefix Go puts in front of it, and any other failed lookup last.
WORDINGS: tuple[Wording, ...] = (
    NO_ENDPOINTS, SERVICE_NOT_FOUND, PROXY_ERROR, BROKEN_PIPE, CONNECTION_LOST, TUNNEL, REFUSED, NO_ROUTE,
    NETWORK_UNREACHABLE, ADDRESS_UNAVAILABLE, RESET, DIAL_TIMEOUT, DEADLINE, CLIENT_TIMEOUT, IO_TIMEOUT,
    AWAITING_HEADERS, NO_SUCH_HOST, MISBEHAVING, UNKNOWN_AUTHORITY, NOT_YET_VALID, EXPIRED, NOT_VALID_FOR, NO_IP_SANS,
    NO_NAMES, LEGACY_COMMON_NAME, FIRST_RECORD, REMOTE_ERROR, TLS_ERROR, HANDSHAKE_EOF, NOT_FOUND, SERVER_ERROR,
    WRONG_UID, INVALID_RESPONSE, STATUS_CODE, INTERNAL_SERVER_ERROR, UNEXPECTED, STATUS, NOT_JSON, NOT_A_REVIEW,
    CLOSED_EARLY, BODY_TOO_LARGE, HEADERS_TOO_LARGE, MALFORMED, LOOKUP,
)
_COMPILED = tuple((re.compile(w.pattern), w) for w in WORDINGS)


def recognise(text: str) -> Wording | None:
    """The first wording whose pattern occurs in `text`, or None when none does."""
    return next((w for pattern, w in _COMPILED if pattern.search(text)), None)


def examples(reason: Reason) -> tuple[str, ...]:
    """What the apiserver prints for `reason`, `...` where it varies (none for `invalid_config`)."""
    return tuple(w.example for w in WORDINGS if w.reason is reason and w.go)
