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
presented without a restart; the file itself is read once, as the apiserver reads it. The file is read, and its
data decoded, by `exporter.kubeconfig`, the one reader of the kubeconfig format.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .kubeconfig import KubeconfigError, decode_data, load_chain, merge_documents, read_document, relative_to


class ClientAuthError(KubeconfigError):
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
        """Read the file (kubeconfig's reader: a KubeconfigError names the file) and check every user now."""
        source = Path(path).expanduser()
        merged = merge_documents([(source, read_document(source))])
        where = f"webhook client config {source}"
        users = {name: _parse_user(f"{where}: user {name!r}", named.source, name, named.body)
                 for name, named in merged.users.items()}
        current = merged.contexts.get(merged.current_context)
        current_user = current.body.get("user") if current is not None else None
        if current_user and current_user not in users:
            raise ClientAuthError(f"{where}: the current context refers to user {current_user!r}, which is not "
                                  "defined")
        config = cls(source, users, str(current_user) if current_user else None)
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
            load_chain(where, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
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
             else _Value(path=relative_to(source, body["tokenFile"])) if body.get("tokenFile") else None)
    basic = None
    if body.get("username") or body.get("password"):
        basic = "Basic " + base64.b64encode(f"{body.get('username', '')}:{body.get('password', '')}".encode()).decode()
    return _User(name, cert, key, token, basic)


def _pem(where: str, source: Path, body: Mapping[str, Any], key: str) -> _Value | None:
    """`<key>-data` (base64 of PEM) or `<key>` (a file, relative to the kubeconfig), as a kubeconfig gives a client
    certificate or key."""
    if (data := decode_data(where, f"{key}-data", body.get(f"{key}-data"))) is not None:
        return _Value(data=data)
    path = relative_to(source, body.get(key))
    return _Value(path=path) if path is not None else None
