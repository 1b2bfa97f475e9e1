"""Certificate logic as small pure functions: decode a caBundle, read validity, match names as Go does.

The apiserver is a Go client, so a served certificate is judged in the order of Go's
`x509.Certificate.Verify`: the leaf's validity period first, then the server name (SANs only: Go stopped
falling back to the Common Name in 1.15), then the chain to the caBundle roots.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from . import reasons
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


@dataclass(frozen=True)
class LeafFacts:
    """What a probe judges of a served leaf for one server name: its validity bounds and Go's hostname verdict."""

    not_before: float
    not_after: float
    hostname_failure: str | None  # None when valid for the server name, else the apiserver's sentence

    def validity_failure(self, now: float) -> Reason | None:
        if now > self.not_after:
            return Reason.X509_EXPIRED
        if now < self.not_before:
            return Reason.X509_NOT_YET_VALID
        return None


# A backend serves the same leaf probe after probe: parse it and match its names once, not on every probe (the
# parse and the SAN matching were ~3% of a probe's CPU). Keyed by the DER's digest (32 bytes, not the DER) and
# the server name; bounded, the oldest entry leaves first. 4,096 entries are well under a MiB.
LEAF_CACHE_SIZE = 4096
_leaf_cache: dict[tuple[bytes, str], LeafFacts] = {}


def leaf_facts(der: bytes, server_name: str) -> LeafFacts:
    """The facts of a served leaf (DER) for `server_name`, parsed once per distinct certificate and name.

    Raises CertificateError when it does not parse (not cached: a broken certificate is no hot path)."""
    key = (hashlib.sha256(der).digest(), server_name)
    facts = _leaf_cache.get(key)
    if facts is None:
        cert = load_der_certificate(der)
        facts = LeafFacts(cert.not_valid_before_utc.timestamp(), not_after(cert), hostname_failure(cert, server_name))
        if len(_leaf_cache) >= LEAF_CACHE_SIZE:
            del _leaf_cache[next(iter(_leaf_cache))]
        _leaf_cache[key] = facts
    return facts


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


def _valid_hostname(host: str, *, pattern: bool) -> bool:
    """Go's validHostname: labels of letters, digits, `-` (not first) and `_`; a pattern may start with `*.`."""
    if not pattern:
        host = host.removesuffix(".")
    if not host or host == "*":
        return False
    for i, label in enumerate(host.split(".")):
        if not label:
            return False
        if pattern and i == 0 and label == "*":
            continue
        if any(not (c.isascii() and (c.isalnum() or c == "_" or (c == "-" and j > 0))) for j, c in enumerate(label)):
            return False
    return True


def _matches(pattern: str, host: str) -> bool:
    """Go's matchHostnames: a `*` matches exactly one whole left-most label; the host's trailing dot is dropped."""
    pattern_labels = pattern.lower().split(".")
    host_labels = host.lower().removesuffix(".").split(".")
    if not pattern or host_labels == [""] or len(pattern_labels) != len(host_labels):
        return False
    pairs = enumerate(zip(pattern_labels, host_labels, strict=True))
    return all((i == 0 and p == "*") or p == h for i, (p, h) in pairs)


def _dns_names_match(names: list[str], host: str) -> bool:
    """Go's VerifyHostname for a name: wildcard rules between valid names, an exact match otherwise."""
    valid_host = _valid_hostname(host.lower(), pattern=False)
    for name in names:
        if valid_host and _valid_hostname(name, pattern=True):
            if _matches(name, host):
                return True
        elif name not in ("", ".") and host not in ("", ".") and name.lower() == host.lower():
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # Go's net.IP.Equal treats an IPv4-mapped IPv6 address as the IPv4 address.
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def hostname_failure(cert: x509.Certificate, server_name: str) -> str | None:
    """None when the certificate is valid for `server_name`, else the apiserver's sentence for why not.

    Go's `Certificate.VerifyHostname` and `HostnameError.Error`: an IP (bracketed or not) is matched against
    IP SANs only, a name against DNS SANs only, and the Common Name never (since Go 1.15).
    """
    try:
        san: x509.SubjectAlternativeName | None = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    dns = [str(n) for n in san.get_values_for_type(x509.DNSName)] if san else []
    ips = list(san.get_values_for_type(x509.IPAddress)) if san else []
    bare = server_name[1:-1] if len(server_name) >= 3 and server_name[0] == "[" and server_name[-1] == "]" else None
    ip = _ip(bare or server_name)
    host = (bare or server_name) if ip is not None else server_name
    if ip is not None and any(_ip(str(candidate)) == ip for candidate in ips):
        return None
    if ip is None and _dns_names_match(dns, server_name):
        return None
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if san is None and cns and _matches(cns[-1], host):
        return reasons.LEGACY_COMMON_NAME.format()
    if ip is not None and not ips:
        return reasons.NO_IP_SANS.format(host=host)
    valid = ", ".join(str(a) for a in ips) if ip is not None else ", ".join(dns)
    if not valid:
        return reasons.NO_NAMES.format(host=host)
    return reasons.NOT_VALID_FOR.format(names=valid, host=host)


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
