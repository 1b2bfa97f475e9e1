"""Who may read /metrics: the web configuration file of `--web.config.file`, in exporter-toolkit's format.

The Go exporters share one file format for TLS and authentication (prometheus/exporter-toolkit,
docs/web-configuration.md); we read the same file, so an operator who secures node_exporter can secure us the
same way. docs/securing-metrics.md is the user's page; what differs from exporter-toolkit, and why:

* `client_auth_type: RequireAnyClientCert` (and its old name `RequireClientCert`) is refused: Go accepts any
  client certificate there without verifying it, and Python's `ssl` cannot accept a certificate it has not
  verified. `RequestClientCert` is served as `NoClientCert`: Go asks for a certificate and never looks at it,
  so the two let exactly the same clients in.
* `VerifyClientCertIfGiven`/`RequireAndVerifyClientCert` need `client_ca_file` (or `client_ca`): without one Go
  trusts the system roots, i.e. a client certificate from any public CA, which nobody means.
* `curve_preferences` takes one curve: Python's `ssl` can restrict the key exchange to one group, not order
  several. `cipher_suites` are Go's names of `tls.CipherSuites()`, mapped to OpenSSL's; TLS 1.3 suites are not
  configurable (in Go either). `http_server_config.http2` is accepted and has no effect: we serve HTTP/1.1,
  which is what Prometheus scrapes with.
* An extension, `bearer_token_files`: files each holding one token; a request whose `Authorization: Bearer`
  matches one (compared in constant time) is let in. It is what a ServiceMonitor's `authorization` sends from a
  Secret, and the same Secret mounted here makes the pair (docs/securing-metrics.md says why not TokenReview).
* Unknown keys, duplicate keys, TLS settings without a certificate, `client_allowed_sans: []` and a
  `min_version` above `max_version` are refused rather than ignored.

Reloading is exporter-toolkit's too: the file and every file it names are re-read while the exporter runs
(at most once per `recheck_s`, on a connection or a request), so a rotated certificate, client CA, password
hash or token takes effect without a restart. A change that does not load is logged once and shown in
`admission_webhook_exporter_web_config_last_reload_successful`, and the last good configuration stays in force.
At start-up the same failure is one line naming the file and the field, and exit 2.

Basic auth checks bcrypt hashes (the `bcrypt` package), one at a time on a worker thread, and remembers
successful checks (keyed by an HMAC of user, hash and password, never the password itself), so a scrape pays
one bcrypt when its credentials are first seen, not on every request. An unknown user is checked against a
decoy hash, so the answer takes as long as for a known one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .log import event

log = logging.getLogger("exporter.webconfig")

# client_auth_type -> how Python's ssl verifies the client; RequireAnyClientCert has no equivalent (see above).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,  # Go asks and ignores the answer: the same clients get in
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                     "RequireAndVerifyClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's tls.CipherSuites() by name -> OpenSSL's name; None: a TLS 1.3 suite, which neither Go nor Python configures.
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The response headers exporter-toolkit lets a file set, with their allowed values (empty: any value).
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_KEYS = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit", "bearer_token_files"},
    "tls_server_config": {"cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
                          "client_allowed_sans", "min_version", "max_version", "cipher_suites",
                          "prefer_server_cipher_suites", "curve_preferences"},
    "http_server_config": {"http2", "headers"},
    "rate_limit": {"interval", "burst"},
}
# What turns TLS on (exporter-toolkit's TLSConfig.IsEnabled); the other TLS keys only tune it.
_TLS_ON = ("cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file", "client_auth_type")
_BCRYPT = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
# A bcrypt hash (cost 10, like the hashes htpasswd -B makes) of a random password nobody knows: an unknown user
# is checked against it, so the answer takes as long as for a known user.
_DECOY = b"$2b$10$R7niplT8CCiDc35hAQEZa.xG9tiUztzzI7X9f9QIyZQWgC0UGNdbi"
_AUTH_CACHE_SIZE = 100  # exporter-toolkit's size: a few scrapers' credentials
_TOKEN_MIN = 16  # characters; `openssl rand -hex 32` gives 64
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # what an Authorization header can carry: printable ASCII, no space
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
RECHECK_S = 1.0  # how often, at most, the files are re-read: a rotation takes effect within a second


class WebConfigError(ValueError):
    """A web configuration that cannot be used, said in one line: the file, the field, what is wrong."""

    def __init__(self, path: Path, field: str, message: str) -> None:
        super().__init__(f"--web.config.file {path}: {f'{field}: ' if field else ''}{message}")
        self.path = path
        self.field = field


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: Path | None
    key_file: Path | None
    cert: str | None  # inline PEM, instead of cert_file
    key: str | None
    client_ca_file: Path | None
    client_ca: str | None
    client_auth_type: str
    client_allowed_sans: tuple[str, ...] | None
    min_version: str
    max_version: str
    cipher_suites: tuple[str, ...]
    prefer_server_cipher_suites: bool
    curve_preferences: tuple[str, ...]


@dataclass(frozen=True)
class RateLimit:
    interval_s: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """The file, parsed and checked; the files it names are not read yet (paths are absolute)."""

    path: Path
    tls: TLSServerConfig | None  # None: plain HTTP
    http2: bool
    headers: tuple[tuple[str, str], ...]
    basic_auth_users: Mapping[str, bytes]  # user -> bcrypt hash
    bearer_token_files: tuple[Path, ...]
    rate_limit: RateLimit | None

    def files(self) -> list[tuple[str, Path]]:
        """(field, path) of every file the configuration names, in the order they are read."""
        named: list[tuple[str, Path | None]] = []
        if self.tls is not None:
            named += [("tls_server_config.cert_file", self.tls.cert_file),
                      ("tls_server_config.key_file", self.tls.key_file),
                      ("tls_server_config.client_ca_file", self.tls.client_ca_file)]
        named += [(f"bearer_token_files[{i}]", p) for i, p in enumerate(self.bearer_token_files)]
        return [(name, p) for name, p in named if p is not None]

    @property
    def authenticates(self) -> bool:
        return bool(self.basic_auth_users or self.bearer_token_files)


# --------------------------------------------------------------------------------------------- #
# parsing: text -> WebConfig, every mistake a WebConfigError naming its field


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (Go's yaml.UnmarshalStrict does; PyYAML keeps the last)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def go_duration(text: str) -> float:
    """Seconds in a Go duration (`1m30s`, `100ms`, `0`), as exporter-toolkit's `rate_limit.interval` is written."""
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 1s, 100ms or 1m30s")
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, field: str, message: str) -> WebConfigError:
        return WebConfigError(self.path, field, message)

    def section(self, raw: Any, field: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(field, f"expected a mapping, got {type(raw).__name__}")
        for key in raw:
            if field in _KEYS and key not in _KEYS[field]:
                where = f"{field}.{key}" if field else str(key)
                raise self.error(where, f"unknown field; the fields here are {', '.join(sorted(_KEYS[field]))}")
        return raw

    def string(self, raw: Any, field: str) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.error(field, f"expected a string, got {raw!r}")
        return raw

    def strings(self, raw: Any, field: str) -> tuple[str, ...] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise self.error(field, "expected a list of strings")
        return tuple(raw)

    def boolean(self, raw: Any, field: str, default: bool) -> bool:
        if raw is None:
            return default
        if not isinstance(raw, bool):
            raise self.error(field, f"expected true or false, got {raw!r}")
        return raw

    def file(self, raw: Any, field: str) -> Path | None:
        """A path; a relative one is relative to the configuration file's folder, as in exporter-toolkit."""
        text = self.string(raw, field)
        if not text:
            return None
        return self.path.parent / text if not os.path.isabs(text) else Path(text)

    def one_of(self, raw: Any, field: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str | None:
        text = self.string(raw, field)
        if text is not None and text not in choices:
            raise self.error(field, f"unknown value {text!r}; expected one of {', '.join(choices)}")
        return text

    def tls(self, raw: Any) -> TLSServerConfig | None:
        f = "tls_server_config"
        section = self.section(raw, f)
        if not any(section.get(k) for k in _TLS_ON):
            tuned = sorted(k for k, v in section.items() if v is not None)
            if tuned:
                raise self.error(f"{f}.{tuned[0]}", "set, but TLS is off: give cert_file and key_file")
            return None
        cert_file = self.file(section.get("cert_file"), f"{f}.cert_file")
        cert = self.string(section.get("cert"), f"{f}.cert")
        key_file = self.file(section.get("key_file"), f"{f}.key_file")
        key = self.string(section.get("key"), f"{f}.key")
        ca_file = self.file(section.get("client_ca_file"), f"{f}.client_ca_file")
        ca = self.string(section.get("client_ca"), f"{f}.client_ca")
        for name, by_file, inline in (("cert", cert_file, cert), ("key", key_file, key), ("client_ca", ca_file, ca)):
            if by_file and inline:
                raise self.error(f"{f}.{name}", f"give {name} or {name}_file, not both")
        if not (cert_file or cert):
            raise self.error(f"{f}.cert_file", "missing: TLS needs cert_file (or cert) and key_file (or key)")
        if not (key_file or key):
            raise self.error(f"{f}.key_file", "missing: TLS needs cert_file (or cert) and key_file (or key)")
        auth = self.string(section.get("client_auth_type"), f"{f}.client_auth_type") or "NoClientCert"
        if auth == "RequireClientCert":  # exporter-toolkit's old name
            auth = "RequireAnyClientCert"
        if auth not in CLIENT_AUTH_TYPES:
            raise self.error(f"{f}.client_auth_type",
                             f"unknown value {auth!r}; expected one of {', '.join(CLIENT_AUTH_TYPES)}")
        if auth == "RequireAnyClientCert":
            raise self.error(f"{f}.client_auth_type",
                             "RequireAnyClientCert lets in any client certificate without verifying it, which "
                             "Python's ssl cannot do; use RequireAndVerifyClientCert with client_ca_file")
        has_ca = bool(ca_file or ca)
        if has_ca and auth == "NoClientCert":
            raise self.error(f"{f}.client_ca_file",
                             "a client CA is set but client_auth_type is NoClientCert: set client_auth_type to "
                             "RequireAndVerifyClientCert")
        if not has_ca and CLIENT_AUTH[auth] != ssl.CERT_NONE:
            raise self.error(f"{f}.client_ca_file",
                             f"missing: client_auth_type {auth} verifies client certificates against it")
        sans = self.strings(section.get("client_allowed_sans"), f"{f}.client_allowed_sans")
        if sans is not None:
            if auth != "RequireAndVerifyClientCert":
                raise self.error(f"{f}.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
            if not sans:
                raise self.error(f"{f}.client_allowed_sans", "empty: no client could connect")
        low = self.one_of(section.get("min_version"), f"{f}.min_version", TLS_VERSIONS) or "TLS12"
        high = self.one_of(section.get("max_version"), f"{f}.max_version", TLS_VERSIONS) or "TLS13"
        if TLS_VERSIONS[low] > TLS_VERSIONS[high]:
            raise self.error(f"{f}.min_version", f"{low} is above max_version {high}")
        suites = self.strings(section.get("cipher_suites"), f"{f}.cipher_suites") or ()
        for i, name in enumerate(suites):
            if name not in CIPHER_SUITES:
                raise self.error(f"{f}.cipher_suites[{i}]",
                                 f"unknown cipher suite {name!r}; the ones Go's tls.CipherSuites() lists are "
                                 f"{', '.join(CIPHER_SUITES)}")
        curves = self.strings(section.get("curve_preferences"), f"{f}.curve_preferences") or ()
        for i, name in enumerate(curves):
            if name not in CURVES:
                raise self.error(f"{f}.curve_preferences[{i}]",
                                 f"unknown curve {name!r}; expected one of {', '.join(CURVES)}")
        if len(curves) > 1:
            raise self.error(f"{f}.curve_preferences",
                             "Python's ssl can restrict the key exchange to one curve, not order several: give one")
        return TLSServerConfig(
            cert_file=cert_file, key_file=key_file, cert=cert, key=key, client_ca_file=ca_file, client_ca=ca,
            client_auth_type=auth, client_allowed_sans=sans, min_version=low, max_version=high,
            cipher_suites=suites,
            prefer_server_cipher_suites=self.boolean(section.get("prefer_server_cipher_suites"),
                                                     f"{f}.prefer_server_cipher_suites", True),
            curve_preferences=curves)

    def headers(self, raw: Any) -> tuple[tuple[str, str], ...]:
        f = "http_server_config.headers"
        section = self.section(raw, f)
        found = []
        for name, value in section.items():
            if name not in HEADERS:
                raise self.error(f"{f}.{name}",
                                 f"this header cannot be configured; the ones that can are {', '.join(HEADERS)}")
            text = self.string(value, f"{f}.{name}")
            allowed = HEADERS[name]
            if allowed and text not in allowed:
                raise self.error(f"{f}.{name}", f"expected one of {', '.join(allowed)}, got {text!r}")
            if text:  # blank: unset, as exporter-toolkit documents
                found.append((name, text))
        return tuple(found)

    def users(self, raw: Any) -> dict[str, bytes]:
        f = "basic_auth_users"
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(f, "expected a mapping of user names to bcrypt hashes")
        users = {}
        for name, hashed in raw.items():
            if not isinstance(name, str) or not name or ":" in name:
                raise self.error(f, f"user name {name!r}: expected a non-empty string without ':'")
            if not isinstance(hashed, str) or not (match := _BCRYPT.match(hashed)) or not 4 <= int(match[1]) <= 31:
                # The value is not printed: a password pasted by mistake must not reach the logs.
                raise self.error(f"{f}.{name}", "not a bcrypt hash: expected $2y$<cost>$ and 53 more characters, "
                                                "as `htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints")
            users[name] = hashed.encode()
        return users

    def rate_limit(self, raw: Any) -> RateLimit | None:
        f = "rate_limit"
        section = self.section(raw, f)
        if not section:
            return None
        interval = section.get("interval", 0)
        try:
            interval_s = float(interval) / 1e9 if isinstance(interval, int) else go_duration(str(interval))
        except ValueError as err:
            raise self.error(f"{f}.interval", str(err)) from None
        burst = section.get("burst", 0)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
            raise self.error(f"{f}.burst", f"expected a whole number >= 0, got {burst!r}")
        if interval_s <= 0:
            return None  # exporter-toolkit: an interval of 0 turns the limiter off
        if burst == 0:
            raise self.error(f"{f}.burst", "0 with a non-zero interval would refuse every request")
        return RateLimit(interval_s=interval_s, burst=burst)

    def parse(self, text: bytes) -> WebConfig:
        try:
            doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: plain data only
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise self.error("", f"not valid YAML: {err.problem}{where}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise self.error("", f"not valid YAML: {err}") from None
        top = self.section(doc, "")
        http = self.section(top.get("http_server_config"), "http_server_config")
        tokens = self.strings(top.get("bearer_token_files"), "bearer_token_files") or ()
        token_files = []
        for i, name in enumerate(tokens):
            path = self.file(name, f"bearer_token_files[{i}]")
            if path is None:
                raise self.error(f"bearer_token_files[{i}]", "empty path")
            token_files.append(path)
        return WebConfig(
            path=self.path, tls=self.tls(top.get("tls_server_config")),
            http2=self.boolean(http.get("http2"), "http_server_config.http2", True),
            headers=self.headers(http.get("headers")), basic_auth_users=self.users(top.get("basic_auth_users")),
            bearer_token_files=tuple(token_files), rate_limit=self.rate_limit(top.get("rate_limit")))


def parse(text: bytes, path: Path) -> WebConfig:
    """The configuration in `text` (the content of `path`); WebConfigError names the first field that is wrong."""
    return _Parser(path).parse(text)


# --------------------------------------------------------------------------------------------- #
# activation: WebConfig + the bytes of the files it names -> what requests are judged by


class _Bucket:
    """Token bucket (Go's rate.Limiter as exporter-toolkit uses it): `burst` requests at once, then one per
    interval. Only the event loop touches it."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._at = now

    def allow(self, now: float) -> bool:
        self._tokens = min(float(self._limit.burst), self._tokens + (now - self._at) / self._limit.interval_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Active:
    """A configuration with everything it names read and checked: what connections and requests are judged by."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    tokens: tuple[bytes, ...]  # SHA-256 of each bearer token
    limiter: _Bucket | None
    fingerprint: bytes  # of every byte read, to tell whether anything changed


@dataclass(frozen=True)
class _Inputs:
    fingerprint: bytes
    config: WebConfig | None
    contents: Mapping[Path, bytes]
    error: WebConfigError | None


def _gather(path: Path) -> _Inputs:
    """Read the file and every file it names; the fingerprint covers all of it, failures included."""
    digest = hashlib.sha256()

    def failed(error: WebConfigError) -> _Inputs:
        digest.update(str(error).encode())
        return _Inputs(digest.digest(), None, {}, error)

    try:
        text = path.read_bytes()
    except OSError as err:
        return failed(WebConfigError(path, "", f"cannot read it: {err.strerror or err}"))
    digest.update(len(text).to_bytes(8, "big") + text)
    try:
        config = parse(text, path)
    except WebConfigError as err:
        return failed(err)
    contents: dict[Path, bytes] = {}
    for field, file in config.files():
        try:
            data = file.read_bytes()
        except OSError as err:
            return failed(WebConfigError(path, field, f"cannot read {file}: {err.strerror or err}"))
        digest.update(str(file).encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        contents[file] = data
    return _Inputs(digest.digest(), config, contents, None)


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from bytes already read: one consistent pair even while a rotation swaps the files, and
    inline `cert`/`key` too. Python's ssl loads only from a path: an anonymous in-memory file where Linux has
    one, else a private temporary file removed at once."""
    data = cert_pem.rstrip(b"\n") + b"\n" + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("awe-web-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="awe-web-tls-") as folder:  # mode 0700
        chain = Path(folder) / "chain.pem"
        chain.write_bytes(data)
        context.load_cert_chain(str(chain))


def _server_context(config: WebConfig, contents: Mapping[Path, bytes]) -> ssl.SSLContext:
    tls = config.tls
    assert tls is not None
    f = "tls_server_config"
    cert_field = f"{f}.{'cert_file' if tls.cert_file else 'cert'}"
    key_field = f"{f}.{'key_file' if tls.key_file else 'key'}"
    cert_pem = contents[tls.cert_file] if tls.cert_file else (tls.cert or "").encode()
    key_pem = contents[tls.key_file] if tls.key_file else (tls.key or "").encode()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise WebConfigError(config.path, cert_field, "no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise WebConfigError(config.path, key_field, "not an unencrypted PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise WebConfigError(config.path, key_field, "does not match the certificate (the first one in "
                                                     f"{cert_field.rsplit('.', 1)[1]})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    suites = [s for s in (CIPHER_SUITES[name] for name in tls.cipher_suites) if s is not None]
    if suites:
        try:
            context.set_ciphers(":".join(suites))
        except ssl.SSLError as err:
            raise WebConfigError(config.path, f"{f}.cipher_suites", f"OpenSSL cannot use them: {err}") from None
    elif tls.cipher_suites:
        # Only TLS 1.3 suites listed: Go then has no suite for TLS 1.2 and below, so only TLS 1.3 can connect.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    if not tls.prefer_server_cipher_suites:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve_preferences:
        context.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
    try:
        _load_chain(context, cert_pem, key_pem)
    except ssl.SSLError as err:
        raise WebConfigError(config.path, cert_field, f"OpenSSL cannot use the certificate and key: {err}") from None
    ca_field = f"{f}.{'client_ca_file' if tls.client_ca_file else 'client_ca'}"
    ca_pem = contents[tls.client_ca_file] if tls.client_ca_file else (tls.client_ca or "").encode()
    if ca_pem:
        try:
            x509.load_pem_x509_certificates(ca_pem)
            context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (ValueError, ssl.SSLError):
            raise WebConfigError(config.path, ca_field, "no PEM certificate in it") from None
    context.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    context.set_alpn_protocols(["http/1.1"])  # HTTP/2 is not served (the module docstring says why that is fine)
    return context


def _token(config: WebConfig, index: int, data: bytes) -> bytes:
    field = f"bearer_token_files[{index}]"
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise WebConfigError(config.path, field, "the token is not ASCII") from None
    if not _TOKEN.match(token):
        raise WebConfigError(config.path, field, "empty, or the token has a space or a control character in it")
    if len(token) < _TOKEN_MIN:
        raise WebConfigError(config.path, field, f"the token has {len(token)} characters; use at least "
                                                 f"{_TOKEN_MIN} (for example `openssl rand -hex 32`)")
    return hashlib.sha256(token.encode()).digest()


def _activate(inputs: _Inputs, now: float) -> Active:
    if inputs.error is not None:
        raise inputs.error
    config = inputs.config
    assert config is not None
    context = _server_context(config, inputs.contents) if config.tls is not None else None
    tokens = tuple(_token(config, i, inputs.contents[p]) for i, p in enumerate(config.bearer_token_files))
    limiter = _Bucket(config.rate_limit, now) if config.rate_limit is not None else None
    return Active(config=config, ssl_context=context, tokens=tokens, limiter=limiter, fingerprint=inputs.fingerprint)


def load(path: Path, now: float = 0.0) -> Active:
    """Read and check the file and everything it names, as at start-up; WebConfigError when anything is wrong."""
    return _activate(_gather(path), now)


# --------------------------------------------------------------------------------------------- #
# the configuration in force: reloads, the TLS context, the request guard, the status /metrics shows


@dataclass(frozen=True)
class WebConfigStatus:
    """What /metrics says of the web configuration: did the last change load, and when the one in force did."""

    last_reload_successful: bool
    last_success_s: float


def _client_sans(der: bytes) -> set[str]:
    """Every SAN of a client certificate, written as Go's exporter-toolkit compares them."""
    try:
        extension = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return set()
    kinds = (x509.DNSName, x509.IPAddress, x509.RFC822Name, x509.UniformResourceIdentifier)
    return {str(name.value) for name in extension.value if isinstance(name, kinds)}  # IPs in Go's short form


def _allowed_san(allowed: tuple[str, ...], sans: set[str]) -> bool:
    for entry in allowed:
        try:
            entry = str(ipaddress.ip_address(entry))  # 2001:DB8::1 and 2001:db8::1 are one address
        except ValueError:
            pass
        if entry in sans:
            return True
    return False


class _CurrentTLS(ssl.SSLContext):
    """Given once to the listening socket; every new connection is wrapped by the context of the configuration
    in force at that moment (asyncio calls `wrap_bio` once per connection), so certificates, client CAs and
    every TLS setting change without a restart: exporter-toolkit's per-handshake GetConfigForClient, in Python."""

    security: WebSecurity

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        context = self.security.current().ssl_context
        assert context is not None  # TLS cannot be turned off by a reload
        return context.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
                                session=session)


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt refuses passwords over 72 bytes: no hash can match them
        return False


class WebSecurity:
    """The web configuration in force for one listener: reloads, the TLS context, the request guard, its status.

    Construct it at start-up: a bad file raises WebConfigError (the CLI prints it and exits 2). `install(app)`
    puts the guard on an aiohttp application; `ssl_context` is what its socket listens with (None: plain HTTP).
    """

    def __init__(self, path: Path, *, recheck_s: float = RECHECK_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, checkpw: Callable[[bytes, bytes], bool] = _checkpw) -> None:
        self.path = path
        self._clock, self._wall, self._recheck_s, self._checkpw = clock, wall, recheck_s, checkpw
        self._active = load(path, clock())
        self._attempted = self._active.fingerprint
        self._checked_at = clock()
        self.last_reload_successful = True
        self.last_success_s = wall()
        self._auth_cache: dict[bytes, None] = {}  # HMACs of credentials that passed, oldest first
        self._cache_key = secrets.token_bytes(32)
        self._bcrypt_lock = asyncio.Lock()  # one bcrypt at a time: each is ~50-100 ms of a core
        self.ssl_context: ssl.SSLContext | None = None
        if self._active.ssl_context is not None:
            current = _CurrentTLS(ssl.PROTOCOL_TLS_SERVER)
            current.security = self
            self.ssl_context = current
        event(log, logging.INFO, "web_config_loaded", file=path, **self._summary(self._active.config))

    @staticmethod
    def _summary(config: WebConfig) -> dict[str, Any]:
        return {"tls": config.tls is not None,
                "client_auth": config.tls.client_auth_type if config.tls else "none",
                "basic_auth_users": len(config.basic_auth_users), "bearer_tokens": len(config.bearer_token_files)}

    @property
    def config(self) -> WebConfig:
        return self._active.config

    def current(self) -> Active:
        """The configuration in force, after re-reading the files when `recheck_s` has passed since the last look."""
        now = self._clock()
        if now - self._checked_at >= self._recheck_s:
            self._checked_at = now
            self._reload(now)
        return self._active

    def _reload(self, now: float) -> None:
        inputs = _gather(self.path)
        if inputs.fingerprint == self._attempted:
            return
        self._attempted = inputs.fingerprint
        try:
            active = _activate(inputs, now)
            if (active.ssl_context is None) != (self.ssl_context is None):
                raise WebConfigError(self.path, "tls_server_config",
                                     "TLS cannot be turned on or off while the exporter runs: restart it")
        except WebConfigError as err:
            self.last_reload_successful = False
            event(log, logging.ERROR, "web_config_reload_failed", file=self.path, error=str(err),
                  kept="the last good configuration")
            return
        except Exception as err:  # a bug here must never stop serving: keep the last good configuration
            self.last_reload_successful = False
            event(log, logging.ERROR, "web_config_reload_failed", file=self.path, error=repr(err),
                  kept="the last good configuration")
            return
        self._active = active
        self.last_reload_successful = True
        self.last_success_s = self._wall()
        event(log, logging.INFO, "web_config_reloaded", file=self.path, **self._summary(active.config))

    # ---- the guard ----

    def install(self, app: web.Application) -> None:
        """Judge every request of `app` (rate limit, client certificate SANs, credentials) and add the
        configured response headers to every answer, refusals included."""

        @web.middleware
        async def guard(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            refusal = await self._refusal(request, self.current())
            return refusal if refusal is not None else await handler(request)

        app.middlewares.append(guard)
        app.on_response_prepare.append(self._add_headers)

    async def _add_headers(self, _: web.Request, response: web.StreamResponse) -> None:
        for name, value in self._active.config.headers:
            response.headers[name] = value

    async def _refusal(self, request: web.Request, active: Active) -> web.Response | None:
        config = active.config
        if active.limiter is not None and not active.limiter.allow(self._clock()):
            return web.Response(status=429, text="429 Too Many Requests\n")
        if config.tls is not None and config.tls.client_allowed_sans:
            ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der or not _allowed_san(config.tls.client_allowed_sans, _client_sans(der)):
                return web.Response(status=403, text="403 Forbidden: no allowed SAN in the client certificate\n")
        if not config.authenticates:
            return None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and active.tokens and self._token_ok(credentials, active.tokens):
            return None
        if scheme == "basic" and config.basic_auth_users and await self._basic_ok(credentials, config):
            return None
        refusal = web.Response(status=401, text="401 Unauthorized\n")
        if config.basic_auth_users:
            refusal.headers.add("WWW-Authenticate", 'Basic realm="admission-webhook-exporter"')
        if active.tokens:
            refusal.headers.add("WWW-Authenticate", 'Bearer realm="admission-webhook-exporter"')
        return refusal

    @staticmethod
    def _token_ok(token: str, known: tuple[bytes, ...]) -> bool:
        # Hashing first makes every comparison the same length; every known token is compared, match or not.
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        matched = False
        for candidate in known:
            matched |= hmac.compare_digest(digest, candidate)
        return matched

    async def _basic_ok(self, credentials: str, config: WebConfig) -> bool:
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        hashed = config.basic_auth_users.get(user.decode("utf-8", "replace"))
        known = hashed is not None
        hashed = hashed if hashed is not None else _DECOY
        key = hmac.new(self._cache_key, b"".join(len(p).to_bytes(4, "big") + p for p in (user, hashed, password)),
                       hashlib.sha256).digest()
        if key in self._auth_cache:
            return known
        async with self._bcrypt_lock:
            if key in self._auth_cache:  # checked by the request we waited behind
                return known
            matched = await asyncio.to_thread(self._checkpw, password, hashed)
        if not (matched and known):
            return False  # failures are not remembered: a flood of guesses cannot push a scraper's entry out
        self._auth_cache[key] = None
        while len(self._auth_cache) > _AUTH_CACHE_SIZE:
            del self._auth_cache[next(iter(self._auth_cache))]
        return True

    # ---- metrics (formatted by exporter.collector) ----

    def status(self) -> WebConfigStatus:
        return WebConfigStatus(self.last_reload_successful, self.last_success_s)
