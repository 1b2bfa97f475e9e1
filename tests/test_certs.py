"""`exporter.certs` as tables: names matched and refused as Go's crypto/x509 does (wildcards, IP SANs, the
Common Name), validity at its edges, caBundle decoding, OpenSSL's verify codes. Certificates are real, issued
by the module's CA."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter import certs
from exporter.pki import CertificateAuthority
from exporter.reasons import Reason

# SANs (IPs become IP SANs, the rest DNS SANs), the Common Name (None: the first SAN; no SAN ext when no SANs),
# the name dialled, and the apiserver's sentence (None: valid for that name).
HOSTNAMES: dict[str, tuple[list[str], str | None, str, str | None]] = {
    "exact name": (["hook.ns.svc"], None, "hook.ns.svc", None),
    "ASCII case does not matter": (["Hook.NS.svc"], None, "hook.ns.SVC", None),
    "the host's trailing dot is dropped": (["hook.ns.svc"], None, "hook.ns.svc.", None),
    "a SAN's trailing dot matches only exactly": (["hook.ns.svc."], None, "hook.ns.svc",
                                                  "x509: certificate is valid for hook.ns.svc., not hook.ns.svc"),
    "a SAN with a trailing dot, dialled as written": (["hook.ns.svc."], None, "hook.ns.svc.", None),
    "underscores are tolerated": (["hook_1.ns.svc"], None, "hook_1.ns.svc", None),
    "wildcard: one left-most label": (["*.example.com"], None, "a.example.com", None),
    "wildcard: any case": (["*.example.com"], None, "A.EXAMPLE.COM", None),
    "wildcard: not the bare domain": (["*.example.com"], None, "example.com",
                                      "x509: certificate is valid for *.example.com, not example.com"),
    "wildcard: not two labels": (["*.example.com"], None, "a.b.example.com",
                                 "x509: certificate is valid for *.example.com, not a.b.example.com"),
    "wildcard: only as the left-most label": (["a.*.example.com"], None, "a.b.example.com",
                                              "x509: certificate is valid for a.*.example.com, not a.b.example.com"),
    "wildcard: never part of a label": (["f*.example.com"], None, "foo.example.com",
                                        "x509: certificate is valid for f*.example.com, not foo.example.com"),
    "wildcard: a bare * matches nothing": (["*"], None, "localhost", "x509: certificate is valid for *, not localhost"),
    "IPv4 SAN": (["127.0.0.1"], None, "127.0.0.1", None),
    "IPv6 SAN": (["::1"], None, "::1", None),
    "IPv6 SAN, bracketed host": (["::1"], None, "[::1]", None),
    "IPv6 SAN, another spelling": (["0:0:0:0:0:0:0:1"], None, "::1", None),
    "IP not among the IP SANs": (["10.0.0.1", "10.0.0.2"], None, "10.0.0.3",
                                 "x509: certificate is valid for 10.0.0.1, 10.0.0.2, not 10.0.0.3"),
    "an IP is never matched against DNS SANs": (
        ["hook.ns.svc"], None, "127.0.0.1",
        "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"),
    "a bracketed IP is named without brackets": (
        ["hook.ns.svc"], None, "[::1]",
        "x509: cannot validate certificate for ::1 because it doesn't contain any IP SANs"),
    "a name lists the DNS SANs only": (["hook.ns.svc", "10.0.0.1"], None, "other.ns.svc",
                                       "x509: certificate is valid for hook.ns.svc, not other.ns.svc"),
    "a name, only IP SANs": (["10.0.0.1"], None, "hook.ns.svc",
                             "x509: certificate is not valid for any names, but wanted to match hook.ns.svc"),
    "Common Name only, matching": ([], "hook.ns.svc", "hook.ns.svc",
                                   "x509: certificate relies on legacy Common Name field, use SANs instead"),
    "Common Name only, not matching": ([], "other.ns.svc", "hook.ns.svc",
                                       "x509: certificate is not valid for any names, but wanted to match hook.ns.svc"),
    "Common Name only, an IP": ([], "127.0.0.1", "127.0.0.1",
                                "x509: certificate relies on legacy Common Name field, use SANs instead"),
    "a matching Common Name is ignored beside SANs": (["other.ns.svc"], "hook.ns.svc", "hook.ns.svc",
                                                      "x509: certificate is valid for other.ns.svc, not hook.ns.svc"),
}


@pytest.mark.parametrize("case", list(HOSTNAMES))
def test_hostname_is_judged_as_go_judges_it(case: str, ca: CertificateAuthority) -> None:
    sans, common_name, server_name, expected = HOSTNAMES[case]
    cert = ca.issue(sans, common_name=common_name).cert
    assert certs.hostname_failure(cert, server_name) == expected


NOT_BEFORE = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2030, 4, 1, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)

# Go: invalid when now is before NotBefore or after NotAfter; both bounds themselves are valid.
VALIDITY: dict[str, tuple[dt.datetime, Reason | None]] = {
    "a second before notBefore": (NOT_BEFORE - SECOND, Reason.X509_NOT_YET_VALID),
    "at notBefore": (NOT_BEFORE, None),
    "in between": (NOT_BEFORE + dt.timedelta(days=30), None),
    "at notAfter": (NOT_AFTER, None),
    "a microsecond after notAfter": (NOT_AFTER + dt.timedelta(microseconds=1), Reason.X509_EXPIRED),
    "years after": (NOT_AFTER + dt.timedelta(days=3650), Reason.X509_EXPIRED),
}


@pytest.mark.parametrize("case", list(VALIDITY))
def test_validity_at_its_edges(case: str, ca: CertificateAuthority) -> None:
    now, expected = VALIDITY[case]
    cert = ca.issue(["hook.ns.svc"], valid_from=NOT_BEFORE, valid_until=NOT_AFTER).cert
    assert certs.validity_failure(cert, now.timestamp()) is expected
    assert certs.not_after(cert) == NOT_AFTER.timestamp()


def test_leaf_facts_read_once_say_what_the_certificate_says(ca: CertificateAuthority,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cert = ca.issue(["hook.ns.svc"], valid_from=NOT_BEFORE, valid_until=NOT_AFTER).cert
    der = cert.public_bytes(serialization.Encoding.DER)
    parsed = []
    monkeypatch.setattr(certs, "_leaf_cache", {})
    monkeypatch.setattr(certs, "load_der_certificate", lambda d: parsed.append(d) or x509.load_der_x509_certificate(d))
    facts = certs.leaf_facts(der, "hook.ns.svc")
    assert (facts.not_before, facts.not_after, facts.hostname_failure) == (
        NOT_BEFORE.timestamp(), NOT_AFTER.timestamp(), None)
    for case, (now, expected) in VALIDITY.items():
        assert facts.validity_failure(now.timestamp()) is expected, case
    assert certs.leaf_facts(bytes(der), "hook.ns.svc") is facts, "the same certificate again: not parsed again"
    other = certs.leaf_facts(der, "other.ns.svc")
    assert other.hostname_failure == certs.hostname_failure(cert, "other.ns.svc") is not None
    assert len(parsed) == 2, "once per certificate and server name"


def test_leaf_facts_are_bounded(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "_leaf_cache", {})
    monkeypatch.setattr(certs, "LEAF_CACHE_SIZE", 2)
    der = ca.issue(["hook.ns.svc"]).cert.public_bytes(serialization.Encoding.DER)
    for name in ("a.ns.svc", "b.ns.svc", "c.ns.svc"):
        certs.leaf_facts(der, name)
    assert [name for _, name in certs._leaf_cache] == ["b.ns.svc", "c.ns.svc"], "the oldest left first"


def test_a_leaf_that_does_not_parse_is_an_error_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "_leaf_cache", {})
    for _ in range(2):
        with pytest.raises(certs.CertificateError, match=r"^served certificate does not parse: "):
            certs.leaf_facts(b"\x30\x03\x02\x01\x01", "hook.ns.svc")
    assert certs._leaf_cache == {}


def test_utc_text_is_gos_rfc3339() -> None:
    assert certs.utc_text(NOT_AFTER.timestamp()) == "2030-04-01T00:00:00Z"
    assert certs.utc_text((NOT_AFTER + dt.timedelta(microseconds=999_999)).timestamp()) == "2030-04-01T00:00:00Z"


def test_ca_bundle_decodes_to_every_certificate_and_the_earliest_expiry() -> None:
    first = CertificateAuthority.create("first", valid_until=NOT_AFTER)
    second = CertificateAuthority.create("second", valid_until=NOT_AFTER + dt.timedelta(days=1))
    bundle = base64.b64encode(second.cert_pem + first.cert_pem).decode()
    loaded = certs.load_pem_certificates(certs.decode_ca_bundle(f"  {bundle}\n"))
    assert [c.subject.rfc4514_string() for c in loaded] == ["CN=second", "CN=first"]
    assert certs.earliest_not_after(loaded) == NOT_AFTER.timestamp()
    assert certs.earliest_not_after(()) is None


BAD_BUNDLES: dict[str, tuple[str, str]] = {
    "not base64": ("abc", "^caBundle is not base64: Incorrect padding$"),
    "base64, not PEM": (base64.b64encode(b"hello").decode(), "^caBundle holds no PEM CERTIFICATE block$"),
    "PEM, not a certificate": (
        base64.b64encode(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").decode(),
        "^caBundle PEM does not parse: "),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_a_bad_ca_bundle_says_how_it_is_malformed(case: str) -> None:
    bundle, message = BAD_BUNDLES[case]
    with pytest.raises(certs.CertificateError, match=message):
        certs.load_pem_certificates(certs.decode_ca_bundle(bundle))


def test_a_served_certificate_that_does_not_parse() -> None:
    with pytest.raises(certs.CertificateError, match=r"^served certificate does not parse: "):
        certs.load_der_certificate(b"\x30\x03\x02\x01\x01")


@pytest.mark.parametrize(("code", "reason"), [
    (9, Reason.X509_NOT_YET_VALID),  # CERT_NOT_YET_VALID
    (10, Reason.X509_EXPIRED),  # CERT_HAS_EXPIRED
    (11, Reason.X509_NOT_YET_VALID),  # CRL_NOT_YET_VALID
    (12, Reason.X509_EXPIRED),  # CRL_HAS_EXPIRED
    (62, Reason.X509_HOSTNAME_MISMATCH),  # HOSTNAME_MISMATCH
    (64, Reason.X509_HOSTNAME_MISMATCH),  # IP_ADDRESS_MISMATCH
    (18, Reason.X509_UNKNOWN_AUTHORITY),  # DEPTH_ZERO_SELF_SIGNED_CERT
    (19, Reason.X509_UNKNOWN_AUTHORITY),  # SELF_SIGNED_CERT_IN_CHAIN
    (20, Reason.X509_UNKNOWN_AUTHORITY),  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
])
def test_openssl_verify_codes_map_to_reasons(code: int, reason: Reason) -> None:
    assert certs.reason_for_openssl_code(code) is reason
