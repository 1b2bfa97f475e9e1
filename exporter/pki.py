"""Make certificate authorities and certificates with `cryptography`: the one PKI of the project.

Used by `demo` (local backends with healthy, expiring and drifted certificates), by the control-plane harness
(the apiserver's serving certificate, client certificates) and by the tests (intermediates, certificates with
odd extensions); never by the probe path. Every certificate is built by `_certificate`, so the extensions a
CA or a leaf carries are written once.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(key_type: KeyType = "ecdsa") -> PrivateKey:
    """ECDSA P-256 by default: fast to generate, accepted by Go and OpenSSL."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _window(valid_from: dt.datetime | None, valid_until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return valid_from or now - dt.timedelta(hours=1), valid_until or now + dt.timedelta(days=365)


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """IP SANs for what parses as an address, DNS SANs for the rest."""
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    return sans


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes, and an RSA leaf may also be sent a key
    (TLS 1.2 RSA key exchange), as cert-manager issues them."""
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, key_encipherment=rsa_key and not ca,
                         content_commitment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def _certificate(subject: str, key: PrivateKey, *, issuer: CertificateAuthority | None, ca: bool,
                 start: dt.datetime, end: dt.datetime, usages: Sequence[x509.ObjectIdentifier] = (),
                 names: Sequence[str] = (), extensions: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    """One certificate for `key`: self-signed when `issuer` is None, else signed by it."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(ca=ca, rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                        critical=False)
    if issuer is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                                        critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans := subject_alt_names(names):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class ServingCertificate:
    """A leaf (serving or client) with its key, as a TLS server or client loads them."""

    cert: x509.Certificate
    cert_pem: bytes  # the leaf, followed by any intermediates
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        return write_pair(directory, stem, self.cert_pem, self.key_pem)


def write_pair(directory: Path, stem: str, cert_pem: bytes, private_pem: bytes) -> tuple[Path, Path]:
    """Write `stem.crt` and `stem.key` (mode 0600 before the key is in it); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(private_pem)
    return crt, key


@dataclass(frozen=True)
class CertificateAuthority:
    """A root, or an intermediate below one (`intermediate()`): it issues leaves and further intermediates."""

    cert: x509.Certificate
    key: PrivateKey
    chain_pem: bytes = b""  # an intermediate's own certificate and those above it, served after each leaf

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def ca_bundle(self) -> str:
        """The caBundle field value: base64 of the PEM, as a webhook configuration holds it."""
        return base64.b64encode(self.cert_pem).decode()

    @classmethod
    def create(cls, common_name: str = "admission-webhook-exporter test CA", *, key_type: KeyType = "ecdsa",
               valid_from: dt.datetime | None = None, valid_until: dt.datetime | None = None) -> CertificateAuthority:
        key = new_key(key_type)
        start, end = _window(valid_from, valid_until)
        return cls(cert=_certificate(common_name, key, issuer=None, ca=True, start=start, end=end), key=key)

    def intermediate(self, common_name: str, *, key_type: KeyType = "ecdsa", valid_from: dt.datetime | None = None,
                     valid_until: dt.datetime | None = None) -> CertificateAuthority:
        """A CA signed by this one; the leaves it issues carry it (and this CA's own chain) after them."""
        key = new_key(key_type)
        start, end = _window(valid_from, valid_until)
        cert = _certificate(common_name, key, issuer=self, ca=True, start=start, end=end)
        return CertificateAuthority(cert=cert, key=key,
                                    chain_pem=cert.public_bytes(serialization.Encoding.PEM) + self.chain_pem)

    def issue(self, names: Sequence[str], *, key_type: KeyType = "ecdsa", valid_from: dt.datetime | None = None,
              valid_until: dt.datetime | None = None, common_name: str | None = None, server: bool = True,
              client: bool = False, extensions: Sequence[x509.ExtensionType] = ()) -> ServingCertificate:
        """A leaf for DNS names and IP addresses (as SANs), signed by this CA.

        `server`/`client` set the extended key usages (TLS server and client authentication); `extensions` are
        added as they are, non-critical (a test's private extension, for instance).
        """
        key = new_key(key_type)
        start, end = _window(valid_from, valid_until)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        cert = _certificate(common_name or (list(names) or ["x"])[0], key, issuer=self, ca=False, start=start,
                            end=end, usages=usages, names=names, extensions=extensions)
        return ServingCertificate(cert=cert, cert_pem=cert.public_bytes(serialization.Encoding.PEM) + self.chain_pem,
                                  key_pem=key_pem(key))
