"""A real etcd + kube-apiserver on loopback for integration tests (envtest-style, no kubelet).

Why a real apiserver: the exporter's job is to observe how kube-apiserver calls admission webhooks
(its ``apiserver_admission_webhook_*`` metrics, its error strings, watch/relist behaviour). Fakes
would only echo our own assumptions; the genuine binary, built by ``install.sh``, does not.

Why everything is on loopback: tests must never dial another host. The apiserver binds 127.0.0.1,
etcd binds 127.0.0.1, ClusterIPs come from 10.0.0.0/24 (routed nowhere) and every dial to a Service
goes through ``egress_proxy.py``, which only dials loopback and the test network namespace /24.

Typical use::

    cp = ControlPlane()
    cp.add_static_token("exporter", groups=["awe:exporters"])   # before start()
    cp.start()
    ...  # cp.kubeconfig_path, cp.kubeconfig_for("exporter"), cp.map_service(...)
    cp.stop()

Processes are started with PR_SET_PDEATHSIG=SIGKILL (from one long-lived launcher thread), so they
die with the test process even if it is SIGKILLed; a normal run stops them in order by PID.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import csv
import ctypes
import http.client
import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography.hazmat.primitives import serialization

from exporter import pki
from tests import netns_backend

from .netns import SUBNET as NETNS_SUBNET

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
SERVICE_CIDR = "10.0.0.0/24"
ADMIN_USER = "awe-admin"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class ControlPlaneUnavailable(RuntimeError):
    """The control plane cannot run here; ``reason`` is meant for ``pytest.skip``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ControlPlaneError(RuntimeError):
    """A started component failed (died, not ready in time); the message carries the log tail."""


# --------------------------------------------------------------------------------------------- #
# binaries


def cache_dir() -> Path:
    """Where install.sh puts things (``$AWE_CACHE`` or ``~/.cache/admission-webhook-exporter``)."""
    env = os.environ.get("AWE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "admission-webhook-exporter"


def find_binaries(bin_dir: Path | None = None) -> tuple[Path, Path]:
    """Return ``(kube_apiserver, etcd)`` from install.sh's cache, or raise ControlPlaneUnavailable.

    We never build here: a cold build takes minutes and belongs to CI setup (install.sh).
    """
    d = bin_dir or cache_dir() / "bin"
    found = []
    for name in ("kube-apiserver", "etcd"):
        p = d / name
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ControlPlaneUnavailable(
                f"{p} not found: run tests/controlplane/install.sh to build kube-apiserver and etcd"
            )
        found.append(p)
    return found[0], found[1]


# --------------------------------------------------------------------------------------------- #
# PKI: exporter.pki's CertificateAuthority (the apiserver's serving certificate, webhook backends)


def write_service_account_keys(directory: Path) -> None:
    """``sa.crt`` (the public key PEM) and ``sa.key`` for ``--service-account-{key,signing-key}-file``."""
    key = pki.new_key("rsa")
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pki.write_pair(directory, "sa", public, pki.key_pem(key))


# --------------------------------------------------------------------------------------------- #
# small helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (the kernel picks; tiny race accepted for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _set_pdeathsig() -> None:
    """preexec_fn: SIGKILL the child when its parent thread dies (no orphans after a crash)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Children
# are therefore forked from this one long-lived thread, so that starting or restarting a component
# from a short-lived thread (asyncio.to_thread, a test's helper thread) cannot kill it later.
_LAUNCHER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="awe-cp-launcher")


def _spawn(argv: Sequence[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops us in order
            preexec_fn=_set_pdeathsig,
            close_fds=True,
        )

    return _LAUNCHER.submit(popen).result(timeout=30)


def stop_process(p: subprocess.Popen[bytes] | None, timeout_s: float, graceful: bool = True, *,
                 log: IO[bytes] | None = None) -> None:
    """SIGTERM (SIGKILL if not ``graceful``) a child still running, wait up to ``timeout_s``, then SIGKILL and
    wait up to 10 s more; a child that has exited is only reaped. Then close ``log``, the file it wrote to."""
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    if log is not None:
        log.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(data[-lines:])


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class _Proc:
    """One child process and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
        self._log.flush()
        self.popen = _spawn(self.argv, self._log, env)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, graceful: bool = True) -> None:
        """SIGTERM (unless not graceful), wait up to ``timeout_s``, then SIGKILL; always reaps."""
        stop_process(self.popen, timeout_s, graceful, log=self._log)
        self._log = None


@dataclass(frozen=True)
class StaticToken:
    """A line of ``--token-auth-file``: a bearer token authenticating ``user`` in ``groups``."""

    token: str
    user: str
    uid: str
    groups: tuple[str, ...]


# --------------------------------------------------------------------------------------------- #
# the control plane


class ControlPlane:
    """etcd + egress proxy + kube-apiserver in a throw-away directory, all on loopback.

    Args:
        bin_dir: where ``kube-apiserver`` and ``etcd`` are (default: install.sh's cache).
        authorization_mode: ``--authorization-mode``; RBAC so that restricted-user tests are real.
        netns_cidr: extra destinations the egress proxy may dial (the test namespace /24).
        aggregator_routing: ``--enable-aggregator-routing``: service webhooks dial EndpointSlice
            addresses (e.g. a netns pod IP) instead of the ClusterIP.
        proxy_url_webhooks: also route ``url`` webhooks (``controlplane`` egress context) through the
            proxy, so even a mistaken URL can only reach loopback / the namespace. Off by default
            because it changes the apiserver's error strings (``proxy error ... code 502``
            instead of ``connect: connection refused``).
        watch_cache: ``False`` adds ``--watch-cache=false`` so watches hit etcd directly (a watch
            from a compacted resourceVersion then fails with 410 Gone at once).
        service_account_admission: keep the ServiceAccount admission plugin on (off by default: without
            a kube-controller-manager no namespace gets its ``default`` ServiceAccount, and every Pod
            create would fail). The node layer (tests/node) runs one and needs Pods to get their tokens.
        audit_log: write the apiserver's audit log (every request at level Metadata: user, verb, requestURI
            with its query, objectRef, response code) to ``audit_log_path``; ``audit_events()`` reads it. What
            a client really sent, recorded by the apiserver, not by the client.
        extra_apiserver_flags: appended last (later flags win).
        ready_timeout_s: bound for etcd and apiserver readiness.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        work_parent: Path | None = None,
        authorization_mode: str = "Node,RBAC",
        netns_cidr: str = str(NETNS_SUBNET),
        aggregator_routing: bool = False,
        proxy_url_webhooks: bool = False,
        watch_cache: bool = True,
        service_account_admission: bool = False,
        audit_log: bool = False,
        extra_apiserver_flags: Sequence[str] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.apiserver_bin, self.etcd_bin = find_binaries(bin_dir)
        self._work_parent = work_parent
        self.authorization_mode = authorization_mode
        self.netns_cidr = netns_cidr
        self.aggregator_routing = aggregator_routing
        self.proxy_url_webhooks = proxy_url_webhooks
        self.watch_cache = watch_cache
        self.service_account_admission = service_account_admission
        self.audit_log = audit_log
        self.extra_apiserver_flags = list(extra_apiserver_flags)
        self.ready_timeout_s = ready_timeout_s
        self.admin_token: str = secrets.token_hex(24)
        self._tokens: dict[str, StaticToken] = {
            ADMIN_USER: StaticToken(self.admin_token, ADMIN_USER, ADMIN_USER, ("system:masters",))
        }
        self.ca = pki.CertificateAuthority.create("awe-test-ca")
        self.data_dir: Path | None = None
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        #: seconds from kube-apiserver exec to /readyz ok, for the last (re)start
        self.last_ready_s: float = 0.0
        self._etcd: _Proc | None = None
        self._proxy: _Proc | None = None
        self._apiserver: _Proc | None = None
        self._ssl: ssl.SSLContext | None = None
        self._env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self._env["NO_PROXY"] = self._env["no_proxy"] = "*"

    # ---- configuration before start ----

    def add_static_token(
        self, user: str, groups: Sequence[str] = (), token: str | None = None, uid: str | None = None
    ) -> str:
        """Register a bearer token for ``user`` (e.g. a restricted exporter user); call before start().

        The apiserver reads ``--token-auth-file`` once at start, so later additions would be silent
        no-ops; we refuse them instead.
        """
        if self.data_dir is not None:
            raise RuntimeError("add_static_token() must be called before start()")
        if any(c in user for c in ',\n"') or user in self._tokens:
            raise ValueError(f"bad or duplicate user name {user!r}")
        tok = token or secrets.token_hex(24)
        self._tokens[user] = StaticToken(tok, user, uid or user, tuple(groups))
        return tok

    def token_for(self, user: str) -> str:
        return self._tokens[user].token

    # ---- paths and urls ----

    def _dir(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("control plane not started")
        return self.data_dir

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_path(self) -> Path:
        return self._dir() / "pki" / "ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        return self._dir() / "kubeconfig"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def egress_map_path(self) -> Path:
        return self._dir() / "egress-map.json"

    @property
    def egress_log_path(self) -> Path:
        return self._dir() / "egress-proxy.jsonl"

    @property
    def audit_log_path(self) -> Path:
        return self._dir() / "audit.jsonl"

    @property
    def apiserver_log_path(self) -> Path:
        return self._dir() / "kube-apiserver.log"

    @property
    def pids(self) -> dict[str, int | None]:
        """PIDs of the running components (None when not running)."""
        return {p.name: (p.pid if p.alive() else None) for p in (self._etcd, self._proxy, self._apiserver) if p}

    def rss_kb(self) -> dict[str, int | None]:
        """Resident memory of each running component, from /proc (kB)."""
        return {n: (_rss_kb(pid) if pid else None) for n, pid in self.pids.items()}

    def kubeconfig_for(self, user: str, path: Path | None = None) -> Path:
        """Write a kubeconfig authenticating as ``user`` (static token) and return its path."""
        path = path or self._dir() / f"kubeconfig-{user}"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "awe",
            "clusters": [
                {
                    "name": "awe",
                    "cluster": {"server": self.server_url, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": user, "user": {"token": self._tokens[user].token}}],
            "contexts": [{"name": "awe", "context": {"cluster": "awe", "user": user}}],
        }
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML; no PyYAML dependency
        path.chmod(0o600)
        return path

    # ---- lifecycle ----

    def start(self) -> ControlPlane:
        """Create PKI and config, start etcd, the egress proxy and kube-apiserver; wait for /readyz."""
        if self.data_dir is not None:
            raise RuntimeError("already started")
        self.data_dir = Path(tempfile.mkdtemp(prefix="awe-cp-", dir=self._work_parent))
        atexit.register(self.stop)  # a forgotten stop() still removes processes and files
        try:
            self._write_files()
            self._start_etcd()
            self._start_proxy()
            self.start_apiserver()
            self.kubeconfig_for(ADMIN_USER, self.kubeconfig_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        d = self._dir()
        pki_dir = d / "pki"
        pki_dir.mkdir()
        (pki_dir / "ca.crt").write_bytes(self.ca.cert_pem)
        names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "127.0.0.1",
                 str(ipaddress.ip_network(SERVICE_CIDR).network_address + 1)]
        self.ca.issue(names, common_name="kube-apiserver").write(pki_dir, "apiserver")
        write_service_account_keys(pki_dir)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for t in self._tokens.values():
            w.writerow([t.token, t.user, t.uid, *([",".join(t.groups)] if t.groups else [])])
        tokens = pki_dir / "tokens.csv"
        tokens.touch(mode=0o600)
        tokens.write_text(buf.getvalue())
        self.egress_map_path.write_text("{}")
        sock = d / "egress.sock"
        if len(str(sock)) > 100:
            raise ControlPlaneUnavailable(
                f"unix socket path too long ({len(str(sock))} chars): {sock}; set TMPDIR shorter"
            )
        selections = [("cluster", sock)] + ([("controlplane", sock)] if self.proxy_url_webhooks else [])
        lines = [
            "apiVersion: apiserver.k8s.io/v1beta1",
            "kind: EgressSelectorConfiguration",
            "egressSelections:",
        ]
        for name, s in selections:
            lines += [
                f"- name: {name}",
                "  connection:",
                "    proxyProtocol: HTTPConnect",
                "    transport:",
                "      uds:",
                f"        udsName: {s}",
            ]
        (d / "egress-selector.yaml").write_text("\n".join(lines) + "\n")
        # Metadata: who, what, where (requestURI keeps the query, e.g. ?dryRun=All) and the answer's code; no
        # bodies. Only ResponseComplete (one line per request); long-running watches also log ResponseStarted.
        (d / "audit-policy.yaml").write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
            "rules:\n  - level: Metadata\n")

    def _start_etcd(self) -> None:
        d = self._dir()
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        help_text = subprocess.run([str(self.etcd_bin), "--help"], capture_output=True, text=True, timeout=30).stdout
        argv = [
            str(self.etcd_bin),
            "--name",
            "awe",
            "--data-dir",
            str(d / "etcd-data"),
            "--listen-client-urls",
            self.etcd_url,
            "--advertise-client-urls",
            self.etcd_url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster",
            f"awe=http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster-state",
            "new",
            "--quota-backend-bytes",
            str(1 << 30),
            "--log-level",
            "warn",
        ]
        if "--unsafe-no-fsync" in help_text:
            argv.append("--unsafe-no-fsync")  # test data is throw-away; fsync only costs time
        self._etcd = _Proc("etcd", argv, d / "etcd.log")
        self._etcd.start(self._env)
        self._wait("etcd", self._etcd, lambda: b'"health":"true"' in self._http(f"{self.etcd_url}/health")[1])

    def _start_proxy(self) -> None:
        d = self._dir()
        sock = d / "egress.sock"
        argv = [
            sys.executable,
            str(HERE / "egress_proxy.py"),
            "--socket",
            str(sock),
            "--map",
            str(self.egress_map_path),
            "--log",
            str(self.egress_log_path),
        ]
        if self.netns_cidr:
            argv += ["--allow-cidr", self.netns_cidr]
        self._proxy = _Proc("egress-proxy", argv, d / "egress-proxy.log")
        self._proxy.start(self._env)
        self._wait("egress-proxy", self._proxy, sock.is_socket, timeout_s=15)

    def _apiserver_argv(self) -> list[str]:
        d = self._dir()
        pki_dir = d / "pki"
        issuer = "https://kubernetes.default.svc.cluster.local"
        argv = [
            str(self.apiserver_bin),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={d / 'apiserver-certs'}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            f"--token-auth-file={pki_dir / 'tokens.csv'}",
            f"--service-account-key-file={pki_dir / 'sa.crt'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            f"--service-account-issuer={issuer}",
            f"--api-audiences={issuer}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--authorization-mode={self.authorization_mode}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--egress-selector-config-file={d / 'egress-selector.yaml'}",
            "--profiling=false",
            "--v=1",
        ]
        if not self.service_account_admission:
            argv.append("--disable-admission-plugins=ServiceAccount")
        if self.aggregator_routing:
            argv.append("--enable-aggregator-routing=true")
        if not self.watch_cache:
            argv.append("--watch-cache=false")
        if self.audit_log:
            argv += [f"--audit-policy-file={d / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log_path}",
                     "--audit-log-format=json", "--audit-log-mode=blocking", "--audit-log-maxbackup=0"]
        return argv + self.extra_apiserver_flags

    def start_apiserver(self) -> float:
        """Start kube-apiserver (same ports and etcd as before) and wait for /readyz; returns seconds."""
        if self._apiserver is not None and self._apiserver.alive():
            raise RuntimeError("kube-apiserver already running")
        if not self.apiserver_port:
            self.apiserver_port = free_port()
        self._apiserver = _Proc("kube-apiserver", self._apiserver_argv(), self.apiserver_log_path)
        t0 = time.monotonic()
        self._apiserver.start(self._env)
        self._wait("kube-apiserver", self._apiserver, lambda: self.request("/readyz")[0] == 200)
        self.last_ready_s = time.monotonic() - t0
        return self.last_ready_s

    def stop_apiserver(self, graceful: bool = True) -> None:
        """Stop kube-apiserver only (SIGTERM, SIGKILL after a bound; ``graceful=False``: SIGKILL now)."""
        if self._apiserver is not None:
            self._apiserver.stop(graceful=graceful)

    def restart_apiserver(self, graceful: bool = True) -> float:
        """Stop and start kube-apiserver only (etcd, ports, tokens, proxy stay); returns ready seconds."""
        self.stop_apiserver(graceful=graceful)
        return self.start_apiserver()

    def ensure_running(self) -> None:
        """Start kube-apiserver again if it is down (a test stopped it and failed before restarting)."""
        if self.data_dir is None:
            raise RuntimeError("control plane not started")
        if self._apiserver is None or not self._apiserver.alive():
            self.start_apiserver()

    def stop(self) -> None:
        """Stop every component by PID (apiserver first), then delete the data directory
        (kept for post-mortems when ``AWE_KEEP_CONTROL_PLANE_DIR=1``). Idempotent; not restartable."""
        for p in (self._apiserver, self._proxy, self._etcd):
            if p is not None:
                p.stop()
        if self.data_dir is not None and os.environ.get("AWE_KEEP_CONTROL_PLANE_DIR") != "1":
            shutil.rmtree(self.data_dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- waiting / HTTP ----

    def _wait(self, name: str, proc: _Proc, ready: Any, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ControlPlaneError(
                    f"{name} exited with {proc.popen.returncode if proc.popen else '?'}; "
                    f"log tail ({proc.log_path}):\n{_tail(proc.log_path)}"
                )
            try:
                if ready():
                    return
            except (OSError, ValueError, http.client.HTTPException) as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {timeout_s or self.ready_timeout_s:.0f}s (last: {last}); "
            f"log tail ({proc.log_path}):\n{_tail(proc.log_path)}"
        )

    def ssl_context(self) -> ssl.SSLContext:
        """TLS client context trusting the test CA (the apiserver's serving cert)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        return self._ssl

    @staticmethod
    def _http(
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        method: str | None = None,
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def request(
        self,
        path: str,
        method: str = "GET",
        body: Any | None = None,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        """Raw HTTPS request to the apiserver as admin (or ``token``); returns ``(status, body)``."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        return self._http(self.server_url + path, data, headers, self.ssl_context(), timeout, method)

    def metrics_text(self) -> str:
        """The apiserver's own Prometheus /metrics, fetched with the admin token."""
        status, body = self.request("/metrics", timeout=15)
        if status != 200:
            raise ControlPlaneError(f"/metrics answered {status}: {body[:300]!r}")
        return body.decode()

    # ---- etcd ----

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = self._http(
            self.etcd_url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, timeout=10
        )
        if status != 200:
            raise ControlPlaneError(f"etcd {path} answered {status}: {raw[:300]!r}")
        return dict(json.loads(raw))

    def etcd_revision(self) -> int:
        """etcd's current revision (what the apiserver calls resourceVersion)."""
        r = self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode(), "count_only": True})
        return int(r["header"]["revision"])

    def etcd_put_object(self, key: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` as JSON under ``key`` (``/registry/<resource>/[<namespace>/]<name>``) straight into etcd,
        past the apiserver's validation: for objects that today's API refuses but older API versions admitted and
        clusters still hold (a webhook with ``sideEffects: Some``, stored through admissionregistration/v1beta1).
        The apiserver reads JSON from etcd as it reads its own protobuf; its watch cache picks the object up.
        """
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._etcd_post("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                       "value": base64.b64encode(json.dumps(obj).encode()).decode()})

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd history up to ``revision`` (default: current) the way kube-apiserver's own
        compactor does, and return the revision.

        Why: a resourceVersion older than the compaction is then ``410 Gone``
        (``too old resource version``) when served from etcd: at once for reads that bypass the
        watch cache (``watch_cache=False``), and within ~15 s for cached exact-RV LISTs (the
        apiserver learns of the compaction from ``compact_rev_key``, which we update too, and its
        watch cache polls that every 15 s). Watches served by the watch cache keep working from any
        RV still in the cache's event window; that window is reset by :meth:`restart_apiserver`.
        Uses etcd's gRPC-gateway JSON API, so no etcdctl is needed.
        """
        rev = revision or self.etcd_revision()
        key = base64.b64encode(b"compact_rev_key").decode()
        self._etcd_post("/v3/kv/put", {"key": key, "value": base64.b64encode(str(rev).encode()).decode()})
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    # ---- egress proxy ----

    def map_service(
        self, cluster_ip: str, port: int, dest_host: str, dest_port: int, service: str | None = None
    ) -> None:
        """Make the egress proxy send ``cluster_ip:port`` (and ``service`` like ``name.ns.svc``) to
        ``dest_host:dest_port``. Takes effect on the next CONNECT (the map is re-read each time).
        ``dest_host`` must be loopback or inside the network-namespace /24, or the proxy answers 403.
        """
        m: dict[str, str] = json.loads(self.egress_map_path.read_text() or "{}")
        m[f"{cluster_ip}:{port}"] = f"{dest_host}:{dest_port}"
        if service:
            m[f"{service}:{port}"] = f"{dest_host}:{dest_port}"
        self._write_map(m)

    def unmap_service(self, cluster_ip: str, port: int, service: str | None = None) -> None:
        """Remove a mapping (the proxy then answers 503 for it)."""
        m: dict[str, str] = json.loads(self.egress_map_path.read_text() or "{}")
        m.pop(f"{cluster_ip}:{port}", None)
        if service:
            m.pop(f"{service}:{port}", None)
        self._write_map(m)

    def _write_map(self, m: dict[str, str]) -> None:
        tmp = self.egress_map_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=1, sort_keys=True))
        os.replace(tmp, self.egress_map_path)  # atomic: the proxy never reads a half-written map

    def refuse(self, target: str, how: str = "drop") -> None:
        """Model a firewall between the control plane and one destination: the proxy drops (``how="drop"``: the
        CONNECT is never answered, the apiserver times out) or rejects (``"reject"``: 502, a refused dial) every
        CONNECT to ``target`` (``host:port`` as the apiserver dials it: a url webhook's host and port, a Service's
        ``clusterIP:port`` or ``name.ns.svc:port``). Takes effect on the next CONNECT, and the proxy cuts the
        tunnels already open to ``target`` (the apiserver keeps its connections to a webhook alive) within a
        fraction of a second."""
        if how not in ("drop", "reject"):
            raise ValueError(f"how is drop or reject, not {how!r}")
        m: dict[str, str] = json.loads(self.egress_map_path.read_text() or "{}")
        m[target] = f"!{how}"
        self._write_map(m)

    def unrefuse(self, target: str) -> None:
        """Lift ``refuse(target)``."""
        m: dict[str, str] = json.loads(self.egress_map_path.read_text() or "{}")
        if m.get(target, "").startswith("!"):
            del m[target]
        self._write_map(m)

    def audit_events(self) -> list[dict[str, Any]]:
        """Every event of the apiserver's audit log so far (``audit_log=True``), oldest first."""
        if not self.audit_log:
            raise RuntimeError("the control plane was started without audit_log=True")
        try:
            text = self.audit_log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def egress_log(self) -> list[dict[str, Any]]:
        """All CONNECT records the egress proxy logged so far."""
        try:
            text = self.egress_log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- #
# webhook backends: exporter.backend.WebhookBackend, in-process (tests.servers.Threaded) or as a process
# inside a network namespace (tests.netns_backend)


webhook_backend_command = netns_backend.command  # argv for NetNamespace.popen, with ``cwd=REPO_ROOT``
