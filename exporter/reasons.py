"""The closed set of probe failure reasons, each named after what the kube-apiserver prints.

One module owns the list so the collector can pre-create every counter at 0, the docs can be checked
against it, and alerts can match on exact values.
"""

from __future__ import annotations

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


# What the apiserver (and so `kubectl`) prints for each reason: shown by `check` and in the docs.
APISERVER_WORDING: dict[Reason, str] = {
    Reason.NO_ENDPOINTS: 'no endpoints available for service "..."',
    Reason.SERVICE_NOT_FOUND: 'service "..." not found',
    Reason.CONNECTION_REFUSED: "dial tcp ...: connect: connection refused",
    Reason.UNREACHABLE: "dial tcp ...: connect: no route to host",
    Reason.TIMEOUT: "context deadline exceeded",
    Reason.DNS: "dial tcp: lookup ...: no such host",
    Reason.TLS_HANDSHAKE: "tls: first record does not look like a TLS handshake / remote error: tls: ...",
    Reason.X509_UNKNOWN_AUTHORITY: "x509: certificate signed by unknown authority",
    Reason.X509_EXPIRED: "x509: certificate has expired or is not yet valid: current time ... is after ...",
    Reason.X509_NOT_YET_VALID: "x509: certificate has expired or is not yet valid: current time ... is before ...",
    Reason.X509_HOSTNAME_MISMATCH: "x509: certificate is valid for ..., not ...",
    Reason.HTTP_ERROR: "the server responded with a non-2xx status or a body that is not an AdmissionReview",
    Reason.INVALID_CONFIG: "the webhook cannot be called as configured",
}
