"""The one PKI (exporter/pki.py): roots, intermediates, server and client leaves, extra extensions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from exporter.pki import CertificateAuthority


def chain_of(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def test_leaf_under_intermediates_carries_the_chain_in_order() -> None:
    root = CertificateAuthority.create("root")
    middle = root.intermediate("middle")
    lower = middle.intermediate("lower")
    leaf = lower.issue(["hook.ns.svc"])
    chain = chain_of(leaf.cert_pem)
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=hook.ns.svc", "CN=lower", "CN=middle"]
    for child, parent in zip(chain, [*chain[1:], root.cert], strict=True):
        child.verify_directly_issued_by(parent)  # raises when the signature or the names do not chain
    assert root.chain_pem == b"" and chain_of(lower.chain_pem) == chain[1:]


@pytest.mark.parametrize(("server", "client", "usages"), [
    (True, False, [ExtendedKeyUsageOID.SERVER_AUTH]),
    (False, True, [ExtendedKeyUsageOID.CLIENT_AUTH]),
    (True, True, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
])
def test_extended_key_usages(server: bool, client: bool, usages: list[x509.ObjectIdentifier]) -> None:
    leaf = CertificateAuthority.create().issue(["a"], server=server, client=client).cert
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages


def test_key_usage_of_a_ca_an_ecdsa_leaf_and_an_rsa_leaf() -> None:
    ca = CertificateAuthority.create()
    ca_usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage)
    ec_usage = ca.issue(["a"]).cert.extensions.get_extension_for_class(x509.KeyUsage)
    rsa_usage = ca.issue(["a"], key_type="rsa").cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_usage.critical and ca_usage.value.key_cert_sign and ca_usage.value.crl_sign
    assert ec_usage.value.digital_signature and not ec_usage.value.key_cert_sign
    assert not ec_usage.value.key_encipherment and rsa_usage.value.key_encipherment


def test_names_become_ip_or_dns_sans_and_extra_extensions_are_kept() -> None:
    private = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1"), b"\x04\x01x")
    leaf = CertificateAuthority.create().issue(["127.0.0.1", "hook.ns.svc"], extensions=[private]).cert
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["hook.ns.svc"]
    assert leaf.extensions.get_extension_for_oid(private.oid).value == private


def test_write_keeps_the_key_private(tmp_path: Path) -> None:
    crt, key = CertificateAuthority.create().issue(["a"]).write(tmp_path / "pki", "hook")
    assert (crt.name, key.name) == ("hook.crt", "hook.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"CERTIFICATE" in crt.read_bytes()
