"""Make certificate authorities and serving certificates with `cryptography`.

Used by `demo` (local backends with healthy, expiring and drifted certificates) and by the tests; never by
the probe path.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _window(valid_from: dt.datetime | None, valid_until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return valid_from or now - dt.timedelta(hours=1), valid_until or now + dt.timedelta(days=365)


def subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """IP SANs for what parses as an address, DNS SANs for the rest."""
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    return sans


@dataclass(frozen=True)
class ServingCertificate:
    cert: x509.Certificate
    cert_pem: bytes  # the leaf, followed by any intermediates
    key_pem: bytes


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_bundle(self) -> str:
        """The caBundle field value: base64 of the PEM, as a webhook configuration holds it."""
        return base64.b64encode(self.cert_pem).decode()

    @classmethod
    def create(cls, common_name: str = "admission-webhook-exporter test CA", *, key_type: KeyType = "ecdsa",
               valid_from: dt.datetime | None = None, valid_until: dt.datetime | None = None) -> CertificateAuthority:
        key = _new_key(key_type)
        start, end = _window(valid_from, valid_until)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    def issue(self, names: list[str], *, key_type: KeyType = "ecdsa", valid_from: dt.datetime | None = None,
              valid_until: dt.datetime | None = None, common_name: str | None = None,
              client: bool = False) -> ServingCertificate:
        """A serving certificate for DNS names and IP addresses (as SANs), signed by this CA; with `client`, a
        client certificate instead (extended key usage clientAuth, which a TLS server verifying it requires)."""
        key = _new_key(key_type)
        start, end = _window(valid_from, valid_until)
        sans = subject_alt_names(names)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or (names or ["x"])[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return ServingCertificate(cert=cert, cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                                  key_pem=_key_pem(key))
