"""Credentials for the Kubernetes API, read as kubectl reads them, without the `kubernetes` package.

In a pod (KUBERNETES_SERVICE_HOST set, and no --kubeconfig, --context or $KUBECONFIG): the service account's
token, re-read on every request because projected tokens rotate, and its CA file. Otherwise kubeconfig files:
`--kubeconfig`, else every file of $KUBECONFIG merged as kubectl merges them (the first file to define a name
or the current-context wins; missing files are skipped), else ~/.kube/config. Supported: server,
certificate-authority(-data), insecure-skip-tls-verify, tls-server-name, proxy-url (http/https); token,
tokenFile, client-certificate(-data)/client-key(-data), username/password and exec plugins (ExecCredential,
cached until its expirationTimestamp). Relative paths are relative to the file that holds them.
The legacy `auth-provider` alone is handed to the `kubernetes` package, imported only then.

Every problem is a KubeconfigError: one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_SECONDS = 120  # a plugin that hangs (a login prompt nobody answers) must not hold a thread forever
EXEC_EXPIRY_MARGIN = dt.timedelta(seconds=10)  # refresh a little early: the request still has to reach the server


class KubeconfigError(ValueError):
    """Unusable Kubernetes credentials (a kubeconfig, or the in-cluster service account): one line, exit 2."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: Callable[[], str | None]  # the Authorization header; re-read per request: tokens rotate
    server_hostname: str | None = None  # kubeconfig tls-server-name: the name the server certificate must carry
    proxy: str | None = None  # kubeconfig proxy-url


@dataclass(frozen=True)
class _Named:
    """One entry of a kubeconfig's clusters/users/contexts list, and the file it came from."""

    body: Mapping[str, Any]
    source: Path


@dataclass(frozen=True)
class _Merged:
    files: tuple[Path, ...]
    clusters: Mapping[str, _Named]
    users: Mapping[str, _Named]
    contexts: Mapping[str, _Named]
    current_context: str


def load_credentials(kubeconfig: str | None = None, context: str | None = None, *,
                     environ: Mapping[str, str] | None = None,
                     service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    """In-cluster when running in a pod and nothing else was asked for, else kubeconfig as kubectl reads it."""
    env = os.environ if environ is None else environ
    if "KUBERNETES_SERVICE_HOST" in env and kubeconfig is None and context is None and "KUBECONFIG" not in env:
        return in_cluster(env, service_account_dir)
    merged = _merge([(path, _read(path)) for path in _files(kubeconfig, env)])
    return _resolve(merged, context, kubeconfig)


# ---- in-cluster ----------------------------------------------------------------------------------------------
def in_cluster(env: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeconfigError("in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set")
    token_file, ca_file = service_account_dir / "token", service_account_dir / "ca.crt"
    where = f"in-cluster service account {service_account_dir}"
    if not token_file.is_file():
        raise KubeconfigError(f"{where}: no token file {token_file} (is automountServiceAccountToken false?)")
    ctx = _ca_context(where, ca_file=ca_file)
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Credentials(server=server, ssl_context=ctx, token=_token_file(where, token_file))


def pod_namespace(service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> str | None:
    """The namespace of the Pod this process runs in (its service account's `namespace` file), None outside one
    (or when the token is not mounted)."""
    try:
        return (service_account_dir / "namespace").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _token_file(where: str, path: Path) -> Callable[[], str | None]:
    def token() -> str | None:
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise KubeconfigError(f"{where}: cannot read token file {path}: {err.strerror or err}") from err
        return f"Bearer {value}" if value else None
    return token


# ---- reading and merging files -------------------------------------------------------------------------------
def _files(kubeconfig: str | None, env: Mapping[str, str]) -> list[Path]:
    if kubeconfig is not None:
        path = Path(kubeconfig).expanduser()
        if not path.exists():
            raise KubeconfigError(f"kubeconfig {path}: no such file")
        return [path]
    if env.get("KUBECONFIG"):
        listed = [Path(p).expanduser() for p in env["KUBECONFIG"].split(os.pathsep) if p]
        present = [p for p in dict.fromkeys(listed) if p.exists()]  # kubectl skips missing entries
        if not present:
            raise KubeconfigError(f"kubeconfig: none of the files in $KUBECONFIG exists ({env['KUBECONFIG']})")
        return present
    default = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
    if not default.exists():
        raise KubeconfigError(f"kubeconfig {default}: no such file, and not in a cluster (KUBERNETES_SERVICE_HOST "
                              "is unset): pass --kubeconfig or set $KUBECONFIG")
    return [default]


def _read(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise KubeconfigError(f"kubeconfig {path}: cannot read: {why}") from err
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise KubeconfigError(f"kubeconfig {path}: not valid YAML{where}: {problem}") from err
    if doc is None:
        return {}  # an empty file is an empty configuration, as for kubectl
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path}: not a kubeconfig (a YAML {type(doc).__name__}, expected a "
                              "mapping with clusters, users and contexts)")
    return doc


def _merge(docs: Sequence[tuple[Path, Mapping[str, Any]]]) -> _Merged:
    sections: dict[str, dict[str, _Named]] = {"clusters": {}, "users": {}, "contexts": {}}
    field = {"clusters": "cluster", "users": "user", "contexts": "context"}
    current = ""
    for path, doc in docs:
        for section, merged in sections.items():
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise KubeconfigError(f"kubeconfig {path}: {section} must be a list")
            for i, entry in enumerate(entries):
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str) or not name:
                    raise KubeconfigError(f"kubeconfig {path}: {section}[{i}] has no name")
                body = entry.get(field[section]) or {}
                if not isinstance(body, dict):
                    raise KubeconfigError(f"kubeconfig {path}: {field[section]} {name!r} must be a mapping")
                merged.setdefault(name, _Named(body, path))  # the first file to define a name wins
        if not current and isinstance(doc.get("current-context"), str):
            current = doc["current-context"]
    return _Merged(tuple(path for path, _ in docs), sections["clusters"], sections["users"], sections["contexts"],
                   current)


def _resolve(merged: _Merged, context: str | None, kubeconfig: str | None) -> Credentials:
    files = ", ".join(str(f) for f in merged.files)
    name = context or merged.current_context
    if not name:
        raise KubeconfigError(f"kubeconfig {files}: no current-context set and no --context given")
    if name not in merged.contexts:
        known = ", ".join(sorted(merged.contexts)) or "none"
        raise KubeconfigError(f"kubeconfig {files}: context {name!r} not found (contexts: {known})")
    ctx = merged.contexts[name]
    cluster_name, user_name = ctx.body.get("cluster"), ctx.body.get("user")
    if not cluster_name or cluster_name not in merged.clusters:
        raise KubeconfigError(f"kubeconfig {ctx.source}: context {name!r} refers to cluster {cluster_name!r}, "
                              "which is not defined")
    if user_name and user_name not in merged.users:
        raise KubeconfigError(f"kubeconfig {ctx.source}: context {name!r} refers to user {user_name!r}, "
                              "which is not defined")
    cluster = merged.clusters[cluster_name]
    user = merged.users[user_name] if user_name else _Named({}, ctx.source)
    if user.body.get("auth-provider"):
        return _legacy_auth_provider(kubeconfig, name, user, str(cluster_name), cluster)
    return _credentials(str(cluster_name), cluster, str(user_name or ""), user)


# ---- one cluster + one user ----------------------------------------------------------------------------------
def _credentials(cluster_name: str, cluster: _Named, user_name: str, user: _Named) -> Credentials:
    c, u = cluster.body, user.body
    where_c = f"kubeconfig {cluster.source}: cluster {cluster_name!r}"
    where_u = f"kubeconfig {user.source}: user {user_name!r}"
    server = _server(where_c, c.get("server"))
    proxy = _proxy(where_c, c.get("proxy-url"))
    insecure = c.get("insecure-skip-tls-verify") is True
    ca_data = _b64(where_c, "certificate-authority-data", c.get("certificate-authority-data"))
    ca_file = _path(cluster.source, c.get("certificate-authority"))
    if insecure and (ca_data or ca_file):
        raise KubeconfigError(f"{where_c}: insecure-skip-tls-verify and a certificate authority are exclusive")
    ssl_context: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        ssl_context = _ca_context(where_c, ca_data=ca_data, ca_file=None if ca_data else ca_file, insecure=insecure)
        _client_certificate(where_u, user, ssl_context)
    for unsupported in ("as", "as-uid", "as-groups", "as-user-extra"):
        if u.get(unsupported):
            raise KubeconfigError(f"{where_u}: impersonation ({unsupported}) is not supported")
    methods = [m for m, keys in (("token", ("token", "tokenFile")), ("basic auth", ("username", "password")),
                                 ("exec", ("exec",))) if any(u.get(k) for k in keys)]
    if len(methods) > 1:
        raise KubeconfigError(f"{where_u}: more than one authentication method ({', '.join(methods)})")
    token: Callable[[], str | None] = lambda: None  # noqa: E731  (anonymous, or client certificates only)
    if u.get("tokenFile"):
        path = _path(user.source, u["tokenFile"])
        if path is None or not path.is_file():
            raise KubeconfigError(f"{where_u}: tokenFile {u['tokenFile']} does not exist")
        token = _token_file(where_u, path)
    elif u.get("token"):
        token = _constant(f"Bearer {u['token']}")
    elif u.get("username") or u.get("password"):
        basic = base64.b64encode(f"{u.get('username', '')}:{u.get('password', '')}".encode()).decode()
        token = _constant(f"Basic {basic}")
    elif u.get("exec"):
        # provideClusterInfo: the plugin learns which cluster it authenticates to (ExecCredential spec.cluster).
        ca = ca_data or (_read_bytes(where_c, ca_file) if ca_file else None)
        cluster_info = {"server": server, "tls-server-name": c.get("tls-server-name"), "proxy-url": proxy,
                        "insecure-skip-tls-verify": insecure,
                        "certificate-authority-data": base64.b64encode(ca).decode() if ca else None}
        token = ExecPlugin(where_u, user.source, u["exec"], cluster_info,
                           ssl_context if isinstance(ssl_context, ssl.SSLContext) else None).token
    return Credentials(server=server, ssl_context=ssl_context, token=token,
                       server_hostname=c.get("tls-server-name") or None, proxy=proxy)


def _constant(value: str) -> Callable[[], str | None]:
    return lambda: value


def _server(where: str, server: object) -> str:
    if not isinstance(server, str) or not server.strip():
        raise KubeconfigError(f"{where}: no server")
    url = server.strip() if "://" in server else f"https://{server.strip()}"  # client-go's default scheme
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError as err:
        raise KubeconfigError(f"{where}: invalid server URL {server!r}: {err}") from err
    if parts.scheme not in ("https", "http") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise KubeconfigError(f"{where}: invalid server URL {server!r} (expected https://host[:port][/path])")
    return url.rstrip("/")


def _proxy(where: str, proxy: object) -> str | None:
    if not proxy:
        return None
    if not isinstance(proxy, str) or urlsplit(proxy).scheme not in ("http", "https") or not urlsplit(proxy).hostname:
        raise KubeconfigError(f"{where}: proxy-url {proxy!r} is not supported (http:// or https:// proxies only)")
    return proxy


def _b64(where: str, key: str, value: object) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as err:
        raise KubeconfigError(f"{where}: {key} is not valid base64") from err


def _path(source: Path, value: object) -> Path | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else source.parent / path


def _ca_context(where: str, *, ca_data: bytes | None = None, ca_file: Path | None = None,
                insecure: bool = False) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None,
                                         cadata=ca_data.decode() if ca_data else None)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as err:
        what = f"certificate authority {ca_file}" if ca_file else "certificate-authority-data"
        raise KubeconfigError(f"{where}: cannot load {what}: {getattr(err, 'strerror', None) or err}") from err
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _client_certificate(where: str, user: _Named, ctx: ssl.SSLContext) -> None:
    u = user.body
    cert = _b64(where, "client-certificate-data", u.get("client-certificate-data"))
    key = _b64(where, "client-key-data", u.get("client-key-data"))
    cert_file, key_file = _path(user.source, u.get("client-certificate")), _path(user.source, u.get("client-key"))
    has_cert, has_key = bool(cert or cert_file), bool(key or key_file)
    if has_cert != has_key:
        raise KubeconfigError(f"{where}: a client certificate needs both client-certificate(-data) and "
                              "client-key(-data)")
    if has_cert:
        _load_chain(where, ctx, cert or _read_bytes(where, cert_file), key or _read_bytes(where, key_file))


def _read_bytes(where: str, path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as err:
        raise KubeconfigError(f"{where}: cannot read {path}: {err.strerror or err}") from err


def _load_chain(where: str, ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # load_cert_chain reads files only: a private temporary folder holds the key for the call, then goes.
    with tempfile.TemporaryDirectory(prefix="awe-client-cert-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as err:
            raise KubeconfigError(f"{where}: unusable client certificate or key: {err.reason or err}") from err


# ---- the format, for its other reader --------------------------------------------------------------------------
# exporter.clientauth reads the kube-apiserver's webhook kubeConfigFile (its users, looked up by webhook host) in
# this same format: the same reading, merging, decoding and loading, with the same one-line errors.
read_document = _read
merge_documents = _merge
decode_data = _b64
relative_to = _path
load_chain = _load_chain


# ---- exec plugins --------------------------------------------------------------------------------------------
class ExecPlugin:
    """A kubeconfig `exec` credential plugin. token() runs it (in the caller's thread: KubeApi calls it off the
    event loop) and caches its ExecCredential until expirationTimestamp, or for good when there is none."""

    def __init__(self, where: str, source: Path, spec: object, cluster: Mapping[str, Any],
                 ssl_context: ssl.SSLContext | None) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("command"), str) or not spec["command"]:
            raise KubeconfigError(f"{where}: exec needs a command")
        if spec.get("apiVersion") not in EXEC_API_VERSIONS:
            raise KubeconfigError(f"{where}: exec apiVersion {spec.get('apiVersion')!r} is not supported "
                                  f"({' or '.join(EXEC_API_VERSIONS)})")
        env = spec.get("env") or []
        if not isinstance(env, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in env):
            raise KubeconfigError(f"{where}: exec env must be a list of {{name, value}}")
        command = spec["command"]
        if os.sep in command and not os.path.isabs(command):
            command = str(source.parent / command)  # relative to the kubeconfig, as kubectl resolves it
        self._where = where
        self._argv = [command, *(str(a) for a in spec.get("args") or [])]
        self._env = {e["name"]: str(e.get("value", "")) for e in env}
        self._api_version: str = spec["apiVersion"]
        self._mode = spec.get("interactiveMode") or "IfAvailable"
        self._hint = spec.get("installHint") or ""
        self._cluster = {k: v for k, v in cluster.items() if v not in (None, "", False)} \
            if spec.get("provideClusterInfo") else None
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._cached: str | None = None
        self._expires: dt.datetime | None = None

    def token(self) -> str | None:
        with self._lock:  # concurrent requests wait for one run of the plugin
            now = dt.datetime.now(dt.UTC)
            if self._cached is not None and (self._expires is None or now < self._expires - EXEC_EXPIRY_MARGIN):
                return self._cached
            self._cached, self._expires = self._run()
            return self._cached

    def _run(self) -> tuple[str | None, dt.datetime | None]:
        interactive = self._mode != "Never" and sys.stdin is not None and sys.stdin.isatty()
        if self._mode == "Always" and not interactive:
            raise KubeconfigError(f"{self._where}: exec plugin {self._argv[0]} needs a terminal "
                                  "(interactiveMode: Always)")
        spec: dict[str, Any] = {"interactive": interactive}
        if self._cluster is not None:
            spec["cluster"] = self._cluster
        info = {"apiVersion": self._api_version, "kind": "ExecCredential", "spec": spec}
        try:
            done = subprocess.run(self._argv, env={**os.environ, **self._env, "KUBERNETES_EXEC_INFO": json.dumps(info)},
                                  stdin=None if interactive else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  timeout=EXEC_TIMEOUT_SECONDS, check=False)
        except FileNotFoundError as err:
            hint = f" ({' '.join(self._hint.split())})" if self._hint else ""
            raise KubeconfigError(f"{self._where}: exec plugin {self._argv[0]} not found{hint}") from err
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KubeconfigError(f"{self._where}: exec plugin {self._argv[0]} failed: {err}") from err
        if done.returncode != 0:
            raise KubeconfigError(f"{self._where}: exec plugin {self._argv[0]} exited with {done.returncode}")
        return self._parse(done.stdout)

    def _parse(self, stdout: bytes) -> tuple[str | None, dt.datetime | None]:
        bad = f"{self._where}: exec plugin {self._argv[0]} printed no usable ExecCredential"
        try:
            cred = json.loads(stdout)
        except ValueError as err:
            raise KubeconfigError(f"{bad}: not JSON") from err
        if not isinstance(cred, dict) or cred.get("kind") != "ExecCredential":
            raise KubeconfigError(f"{bad}: kind is not ExecCredential")
        if cred.get("apiVersion") != self._api_version:
            raise KubeconfigError(f"{bad}: apiVersion {cred.get('apiVersion')!r}, asked for {self._api_version}")
        status = cred.get("status")
        if not isinstance(status, dict):
            raise KubeconfigError(f"{bad}: no status")
        token, cert, key = status.get("token"), status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key) or not (token or cert):
            raise KubeconfigError(f"{bad}: status needs a token, or clientCertificateData with clientKeyData")
        if cert and key:
            if self._ssl is None:
                raise KubeconfigError(f"{bad}: a client certificate needs an https server")
            _load_chain(self._where, self._ssl, str(cert).encode(), str(key).encode())  # new connections use it
        expires = None
        if status.get("expirationTimestamp"):
            try:
                expires = dt.datetime.fromisoformat(str(status["expirationTimestamp"]))
            except ValueError as err:
                raise KubeconfigError(f"{bad}: expirationTimestamp {status['expirationTimestamp']!r} is not "
                                      "RFC 3339") from err
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
        return (f"Bearer {token}" if token else None), expires


# ---- the legacy auth-provider, through the kubernetes package --------------------------------------------------
def _legacy_auth_provider(kubeconfig: str | None, context: str, user: _Named, cluster_name: str,
                          cluster: _Named) -> Credentials:
    provider = user.body["auth-provider"].get("name", "?") if isinstance(user.body["auth-provider"], dict) else "?"
    where = f"kubeconfig {user.source}: auth-provider {provider!r}"
    try:
        from kubernetes import client, config
    except ImportError as err:
        raise KubeconfigError(f"{where} needs the `kubernetes` Python package, which is not installed (this image "
                              "ships without it): pip install kubernetes, or use an exec plugin instead") from err
    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]  # the kubernetes client is untyped
            config_file=kubeconfig, context=context, client_configuration=cfg)
    except (config.ConfigException, OSError, ValueError, TypeError) as err:
        raise KubeconfigError(f"{where}: {err}") from err
    base = _credentials(cluster_name, cluster, "", _Named({}, user.source))  # TLS and server: ours

    def token() -> str | None:
        # The client refreshes the provider's token itself; the value carries its "Bearer " prefix.
        value: str | None = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return value

    return Credentials(server=base.server, ssl_context=base.ssl_context, token=token,
                       server_hostname=base.server_hostname, proxy=base.proxy)
