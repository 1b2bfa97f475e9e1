"""Certificate logic as small pure functions: decode a caBundle, read validity, match names as Go does.

The apiserver is a Go client, so a served certificate is judged in the order of Go's
`x509.Certificate.Verify`: the leaf's validity period first, then the server name (SANs only: Go stopped
falling back to the Common Name in 1.15), then the chain to the caBundle roots.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from .reasons import Reason

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class CertificateError(ValueError):
    """A certificate or bundle that cannot be parsed; the message says how it is malformed."""


def decode_ca_bundle(ca_bundle: str) -> bytes:
    """The PEM bytes of a caBundle as written in a webhook configuration (base64 of PEM)."""
    try:
        pem = base64.b64decode(ca_bundle.strip(), validate=False)
    except (binascii.Error, ValueError) as err:
        raise CertificateError(f"caBundle is not base64: {err}") from err
    if PEM_BEGIN not in pem:
        raise CertificateError("caBundle holds no PEM CERTIFICATE block")
    return pem


def load_pem_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise CertificateError(f"caBundle PEM does not parse: {err}") from err
    return tuple(certs)


def load_der_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise CertificateError(f"served certificate does not parse: {err}") from err


def not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def earliest_not_after(certs: tuple[x509.Certificate, ...]) -> float | None:
    return min((not_after(c) for c in certs), default=None)


def validity_failure(cert: x509.Certificate, now: float) -> Reason | None:
    if now > not_after(cert):
        return Reason.X509_EXPIRED
    if now < cert.not_valid_before_utc.timestamp():
        return Reason.X509_NOT_YET_VALID
    return None


def _dns_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern == host:
        return True
    # Go accepts a wildcard only as the whole left-most label, matching exactly one label.
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:]
    return False


def subject_names(cert: x509.Certificate) -> list[str]:
    """DNS and IP SANs, as the apiserver lists them in `x509: certificate is valid for ...`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def hostname_failure(cert: x509.Certificate, server_name: str) -> str | None:
    """None when the certificate is valid for `server_name`, else the apiserver's sentence for why not."""
    try:
        ip = ipaddress.ip_address(server_name.strip("[]"))
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if ip is not None:
            if ip in san.get_values_for_type(x509.IPAddress):
                return None
        elif any(_dns_matches(p, server_name) for p in san.get_values_for_type(x509.DNSName)):
            return None
    names = subject_names(cert)
    if not names:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cns:
            return "x509: certificate relies on legacy Common Name field, use SANs instead"
        return "x509: certificate is not valid for any names"
    return f"x509: certificate is valid for {', '.join(names)}, not {server_name}"


# OpenSSL X509_V_ERR_* codes met when a chain fails against the caBundle roots.
_OPENSSL_EXPIRED = {10, 12}  # CERT_HAS_EXPIRED, CRL_HAS_EXPIRED
_OPENSSL_NOT_YET_VALID = {9, 11}
_OPENSSL_HOSTNAME = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH


def reason_for_openssl_code(code: int) -> Reason:
    """Map OpenSSL's verify code for the chain (not the leaf, judged separately) to a reason."""
    if code in _OPENSSL_EXPIRED:
        return Reason.X509_EXPIRED
    if code in _OPENSSL_NOT_YET_VALID:
        return Reason.X509_NOT_YET_VALID
    if code in _OPENSSL_HOSTNAME:
        return Reason.X509_HOSTNAME_MISMATCH
    return Reason.X509_UNKNOWN_AUTHORITY


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
