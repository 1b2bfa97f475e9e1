"""The apiserver's webhook client credentials, read as the apiserver reads them, so the probe presents to each
webhook the client certificate (and token) the apiserver presents.

Some webhooks authenticate their caller: the apiserver then presents a client certificate configured in its
AdmissionConfiguration `kubeConfigFile` (https://kubernetes.io/docs/reference/access-authn-authz/extensible-
admission-controllers/#authenticate-apiservers). That file is a kubeconfig whose `users[].name` names the
webhook: `<service>.<namespace>.svc:<port>`, `*.<namespace>.svc`, a URL's `host:port`, `*`. `--webhook-client-
config` takes the same file. The lookup is k8s.io/apiserver's (`pkg/util/webhook/authentication.go`): the exact
name, then `*.`-prefixed suffixes, then (port 443 only) both again without the port, then `*`, then the user of
the current context, else none. Supported per user: client-certificate(-data) with client-key(-data), token,
tokenFile, username/password; exec and auth-provider are refused at load (the exporter does not run plugins).

Files are re-read when they change (a mounted Secret is rotated in place), so a renewed certificate is
presented without a restart; the file itself is read once, as the apiserver reads it.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class ClientAuthError(ValueError):
    """An unusable credentials file: one line naming the file (and the user) and the problem."""


@dataclass(frozen=True)
class ClientIdentity:
    """What the probe presents to one webhook: hashable, so a TLS context is built once per identity."""

    user: str  # the users[].name that matched
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    authorization: str | None = None  # the Authorization header: "Bearer ..." or "Basic ..."


@dataclass(frozen=True)
class _Value:
    """A credential given inline (`...-data`, `token`) or by file (read when it changes)."""

    data: bytes | None = None
    path: Path | None = None


@dataclass(frozen=True)
class _User:
    name: str
    cert: _Value | None
    key: _Value | None
    token: _Value | None
    basic: str | None


def lookup_key(authority: str) -> str:
    """The name the apiserver looks a webhook up by: `host:port`, with 443 added when the URL has no port (by
    Go's net.JoinHostPort, which brackets what already is: `[[::1]]:443`, as the apiserver does)."""
    try:
        has_port = urlsplit(f"//{authority}").port is not None
    except ValueError:
        has_port = False
    if has_port:
        return authority
    return f"[{authority}]:443" if ":" in authority else f"{authority}:443"


def _star_names(target: str) -> list[str]:
    steps = target.split(".")
    return ["*." + ".".join(steps[i:]) for i in range(1, len(steps))]


class WebhookClientConfig:
    """The users of one kubeConfigFile, and which one the apiserver would use for a webhook."""

    def __init__(self, source: Path, users: Mapping[str, _User], current_user: str | None) -> None:
        self.source = source
        self._users = dict(users)
        self._current_user = current_user
        self._files: dict[Path, tuple[int, int, bytes]] = {}

    @classmethod
    def load(cls, path: str | Path) -> WebhookClientConfig:
        source = Path(path).expanduser()
        where = f"webhook client config {source}"
        try:
            text = source.read_text()
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ClientAuthError(f"{where}: cannot read: {why}") from err
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ClientAuthError(f"{where}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from err
        if not isinstance(doc, dict):
            raise ClientAuthError(f"{where}: not a kubeconfig (expected a mapping with users)")
        entries = doc.get("users") or []
        if not isinstance(entries, list):
            raise ClientAuthError(f"{where}: users must be a list")
        users: dict[str, _User] = {}
        for i, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise ClientAuthError(f"{where}: users[{i}] has no name")
            body = entry.get("user") or {}
            if not isinstance(body, dict):
                raise ClientAuthError(f"{where}: user {name!r} must be a mapping")
            users.setdefault(name, _parse_user(f"{where}: user {name!r}", source, name, body))
        config = cls(source, users, _current_user(where, doc, users))
        for user in users.values():  # every certificate and key is usable now, not at the first probe
            config._identity(user)
        return config

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._users)

    def user_for(self, authority: str) -> str | None:
        """The users[].name the apiserver picks for a webhook it calls at `authority`, or None (anonymous)."""
        target = lookup_key(authority)
        candidates = [target, *_star_names(target)]
        host, sep, port = target.rpartition(":")
        if sep and port == "443":
            candidates += [host, *_star_names(host)]
        candidates.append("*")
        if self._current_user is not None:
            candidates.append(self._current_user)
        return next((c for c in candidates if c in self._users), None)

    def identity(self, authority: str) -> ClientIdentity | None:
        """What to present to the webhook at `authority`; None when the apiserver would call it anonymously."""
        name = self.user_for(authority)
        return None if name is None else self._identity(self._users[name])

    def _identity(self, user: _User) -> ClientIdentity:
        where = f"webhook client config {self.source}: user {user.name!r}"
        cert = self._read(where, "client certificate", user.cert)
        key = self._read(where, "client key", user.key)
        if cert is not None and key is not None:
            try:
                load_client_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
            except ssl.SSLError as err:
                raise ClientAuthError(f"{where}: unusable client certificate or key: {err.reason or err}") from err
        authorization = user.basic
        token = self._read(where, "token", user.token)
        if token is not None:
            authorization = f"Bearer {token.decode(errors='replace').strip()}"
        return ClientIdentity(user=user.name, cert_pem=cert, key_pem=key, authorization=authorization)

    def _read(self, where: str, what: str, value: _Value | None) -> bytes | None:
        if value is None:
            return None
        if value.data is not None:
            return value.data
        assert value.path is not None
        try:
            stat = value.path.stat()
            cached = self._files.get(value.path)
            if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
                return cached[2]
            data = value.path.read_bytes()
        except OSError as err:
            raise ClientAuthError(f"{where}: cannot read {what} {value.path}: {err.strerror or err}") from err
        self._files[value.path] = (stat.st_mtime_ns, stat.st_size, data)
        return data


def _parse_user(where: str, source: Path, name: str, body: Mapping[str, Any]) -> _User:
    for unsupported in ("exec", "auth-provider"):
        if body.get(unsupported):
            raise ClientAuthError(f"{where}: {unsupported} credentials are not supported (client certificates, "
                                  "token, tokenFile and username/password are)")
    cert, key = _pem(where, source, body, "client-certificate"), _pem(where, source, body, "client-key")
    if (cert is None) != (key is None):
        raise ClientAuthError(f"{where}: a client certificate needs both client-certificate(-data) and "
                              "client-key(-data)")
    # The apiserver's precedence (restConfigFromKubeconfig): token, else tokenFile.
    token = (_Value(data=str(body["token"]).encode()) if body.get("token")
             else _Value(path=_path(source, body["tokenFile"])) if body.get("tokenFile") else None)
    basic = None
    if body.get("username") or body.get("password"):
        basic = "Basic " + base64.b64encode(f"{body.get('username', '')}:{body.get('password', '')}".encode()).decode()
    return _User(name, cert, key, token, basic)


def _pem(where: str, source: Path, body: Mapping[str, Any], key: str) -> _Value | None:
    """`<key>-data` (base64 of PEM) or `<key>` (a file), as a kubeconfig gives a client certificate or key."""
    if body.get(f"{key}-data"):
        try:
            return _Value(data=base64.b64decode(str(body[f"{key}-data"]), validate=True))
        except (binascii.Error, ValueError) as err:
            raise ClientAuthError(f"{where}: {key}-data is not valid base64") from err
    return _Value(path=_path(source, body[key])) if body.get(key) else None


def _path(source: Path, value: object) -> Path:
    """Relative to the file that names it, as clientcmd resolves kubeconfig paths."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else source.parent / path


def _current_user(where: str, doc: Mapping[str, Any], users: Mapping[str, _User]) -> str | None:
    """The current context's user, which the apiserver falls back on after `*` (rarely set in this file)."""
    current = doc.get("current-context")
    for entry in doc.get("contexts") or []:
        if isinstance(entry, dict) and entry.get("name") == current and isinstance(entry.get("context"), dict):
            user = entry["context"].get("user")
            if isinstance(user, str) and user:
                if user not in users:
                    raise ClientAuthError(f"{where}: the current context refers to user {user!r}, which is not "
                                          "defined")
                return user
    return None


def load_client_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a client certificate and key given as bytes (the ssl module reads files only: a private temporary
    folder holds them for the call, then goes)."""
    with tempfile.TemporaryDirectory(prefix="awe-client-cert-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
