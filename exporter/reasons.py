"""The closed set of probe failure reasons, each named after what the kube-apiserver prints, and the one table
of those words: how Go and the apiserver word each failure, and the pattern that recognises the words.

One module owns the list so the collector can pre-create every counter at 0, the docs can be checked against
it, and alerts can match on exact values. The probe writes its failure details with the table's words, and
`explain` recognises a pasted apiserver error with the table's patterns, so both land on the same `reason`.
"""

from __future__ import annotations

import functools
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
    # Not an outage: the backend wants a TLS client certificate (the apiserver's, from its AdmissionConfiguration
    # kubeConfigFile) and the probe had none for it. The served chain was verified; the alerts do not page on it.
    CLIENT_AUTH_REQUIRED = "client_auth_required"


@dataclass(frozen=True)
class Wording:
    """One way a failure is worded, and how to recognise it in an error text.

    `says` is the text with `{field}`s where it varies (`format` fills them, `example` shows them as `...`).
    `pattern` is searched in an error text; the first row of `WORDINGS` that matches decides. `diagnosis` is
    `explain`'s key: finer than the reason where the advice differs (a dial timeout is a firewall, a context
    timeout a slow webhook; a tunnel's broken pipe is not the backend's fault). `go` is False for the probe's
    own words about an HTTP exchange, which the apiserver words its own way. `reason` is None for the words of a
    failure that is no probe's (the apiserver's own ServiceIP allocator, which a webhook can starve).
    """

    reason: Reason | None
    diagnosis: str
    says: str
    pattern: str
    go: bool = True

    def format(self, **fields: object) -> str:
        return self.says.format(**fields)

    @property
    def example(self) -> str:
        return re.sub(r"\{[a-z_]+\}", "...", self.says)


def _w(reason: Reason | None, diagnosis: str, says: str, pattern: str, *, go: bool = True) -> Wording:
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
# The peer closed the connection with a reset: the backend (or what stands in front of it) hung up, which is not
# a missing network path. The probe sees it during the handshake, hence its reason.
RESET = _w(Reason.TLS_HANDSHAKE, "connection_reset", "read: connection reset by peer", r"connection reset by peer")
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
# Go's net/http, when the first record of the answer starts with `HTTP/`: the port speaks plain HTTP.
PLAIN_HTTP = _w(Reason.TLS_HANDSHAKE, "plain_http", "http: server gave HTTP response to HTTPS client",
                r"server gave HTTP response to HTTPS client")
FIRST_RECORD = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "tls: first record does not look like a TLS handshake",
                  r"first record does not look like a TLS handshake")
# A TLS 1.3 server that requires a client certificate and got none sends this alert (Go's and OpenSSL's servers).
CERTIFICATE_REQUIRED = _w(Reason.CLIENT_AUTH_REQUIRED, "client_auth_required",
                          "remote error: tls: certificate required", r"remote error: tls: certificate required")
# The probe's words when the server asked for a certificate, got none, and hung up without that alert.
CLIENT_CERT_ASKED = _w(Reason.CLIENT_AUTH_REQUIRED, "client_auth_required",
                       "the backend asked for a TLS client certificate and closed the connection when none was sent "
                       "({error})", r"asked for a TLS client certificate", go=False)
REMOTE_ERROR = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "remote error: tls: {alert}", r"remote error: tls:")
TLS_ERROR = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "tls: {error}", r"tls:")
HANDSHAKE_EOF = _w(Reason.TLS_HANDSHAKE, "tls_handshake", "EOF", r"EOF")  # the peer hung up mid-handshake
# The answer was not a valid AdmissionReview: the apiserver's (client-go's) words, then the probe's own.
NOT_FOUND = _w(Reason.HTTP_ERROR, "http_error", "the server could not find the requested resource",
               r"the server could not find the requested resource")
SERVER_ERROR = _w(Reason.HTTP_ERROR, "http_error", 'an error on the server ("{body}") has prevented the request from '
                  "succeeding", r"an error on the server")
# The apiserver's checks of the AdmissionReview it got back (VerifyAdmissionResponse), each its own words.
WRONG_UID = _w(Reason.HTTP_ERROR, "review_mismatch", "expected response.uid={expected}, got {got}",
               r"expected response\.uid")
WRONG_REVIEW = _w(Reason.HTTP_ERROR, "review_mismatch",
                  "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {got}",
                  r"expected webhook response of")
# An answer in another admission.k8s.io version than the request's: client-go cannot convert it (real v1.34 words).
REVIEW_CONVERSION = _w(Reason.HTTP_ERROR, "review_mismatch",
                       "converting (v1beta1.AdmissionReview) to (v1.AdmissionReview): unknown conversion",
                       r"converting \([\w.]*AdmissionReview\) to")
RESPONSE_ABSENT = _w(Reason.HTTP_ERROR, "http_error", "webhook response was absent", r"webhook response was absent")
BAD_PATCH = _w(Reason.HTTP_ERROR, "http_error", "webhook returned response.patch but not response.patchType",
               r"webhook returned (invalid )?response\.patch|validating webhook may not return response\.patch")
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
# The configuration itself, as the apiserver refuses to call it.
NO_KNOWN_VERSION = _w(Reason.INVALID_CONFIG, "invalid_config",
                      "webhook does not accept known AdmissionReview versions (v1, v1beta1)",
                      r"does not accept known AdmissionReview versions")
SIDE_EFFECTS_NIL = _w(Reason.INVALID_CONFIG, "invalid_config", "Webhook SideEffects is nil",
                      r"Webhook SideEffects is nil")
# Not a webhook call: the ServiceIP allocator (Kubernetes 1.33+ allocates through IPAddress objects) found no
# address it could create, which is what every Service gets while a Fail webhook on ipaddresses is down.
RANGE_FULL = _w(None, "ip_exhausted", "failed to allocate a serviceIP: range is full", r"range is full")

# First match wins, so the order matters: the probe's client-certificate words before the reset or EOF they
# quote, a tunnel before the dial it wraps, a dial timeout before any timeout, each x509 wording (and Go's words
# for plain HTTP) before the `tls:` prefix Go puts in front of it, and any other failed lookup last.
WORDINGS: tuple[Wording, ...] = (
    NO_ENDPOINTS, SERVICE_NOT_FOUND, CERTIFICATE_REQUIRED, CLIENT_CERT_ASKED, PROXY_ERROR, BROKEN_PIPE,
    CONNECTION_LOST, TUNNEL, REFUSED, NO_ROUTE, NETWORK_UNREACHABLE, ADDRESS_UNAVAILABLE, RESET, DIAL_TIMEOUT,
    DEADLINE, CLIENT_TIMEOUT, IO_TIMEOUT, AWAITING_HEADERS, NO_SUCH_HOST, MISBEHAVING, UNKNOWN_AUTHORITY,
    NOT_YET_VALID, EXPIRED, NOT_VALID_FOR, NO_IP_SANS, NO_NAMES, LEGACY_COMMON_NAME, PLAIN_HTTP, FIRST_RECORD,
    REMOTE_ERROR, TLS_ERROR, HANDSHAKE_EOF, NOT_FOUND, SERVER_ERROR, WRONG_UID, WRONG_REVIEW, REVIEW_CONVERSION,
    RESPONSE_ABSENT, BAD_PATCH, INVALID_RESPONSE, STATUS_CODE, INTERNAL_SERVER_ERROR, UNEXPECTED, STATUS, NOT_JSON,
    NOT_A_REVIEW, CLOSED_EARLY, BODY_TOO_LARGE, HEADERS_TOO_LARGE, MALFORMED, NO_KNOWN_VERSION, SIDE_EFFECTS_NIL,
    RANGE_FULL, LOOKUP,
)


@functools.cache
def _compiled() -> tuple[tuple[re.Pattern[str], Wording], ...]:
    # At the first `recognise` (explain), not at import: the prober, the audit and `--help` never use them.
    return tuple((re.compile(w.pattern), w) for w in WORDINGS)


def recognise(text: str) -> Wording | None:
    """The first wording whose pattern occurs in `text`, or None when none does."""
    return next((w for pattern, w in _compiled() if pattern.search(text)), None)


def examples(reason: Reason) -> tuple[str, ...]:
    """What the apiserver prints for `reason`, `...` where it varies (none for `invalid_config`)."""
    return tuple(w.example for w in WORDINGS if w.reason is reason and w.go)
