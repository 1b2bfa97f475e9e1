"""A throw-away Linux network namespace joined to the host by a veth pair, for tests.

Why: an EndpointSlice may not point at loopback (the apiserver rejects 127.0.0.0/8 and
169.254.0.0/16 with 422), and a webhook backend "somewhere else on the network" is what the
exporter meets in real clusters. A network namespace gives such a backend a real, non-loopback
address that still never leaves this machine: the only route to it is the veth pair we create,
inside ONE private /24 (``SUBNET``) reserved for this purpose. Host side is ``.1``; the namespace
side gets ``.2``, ``.3``, ... Everything is removed on :meth:`NetNamespace.close` (context manager).

Only one namespace from this module exists at a time on a machine (they share the /24); a file lock
enforces that, and namespaces left behind by a crashed run (owner PID dead) are removed on entry.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

SUBNET = ipaddress.ip_network("10.213.7.0/24")
HOST_ADDRESS = str(SUBNET.network_address + 1)
NAME_PREFIX = "awe-t"
LOCK_PATH = Path("/run/admission-webhook-exporter-netns.lock")
CMD_TIMEOUT_S = 15.0


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here; ``reason`` says why (for pytest.skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=check)


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` unless we are root, iproute2 exists and netns can be made."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        raise NetnsUnavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"network namespaces need root (euid is {os.geteuid()})")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2 'ip' command not found (apt-get install iproute2)")
    probe = f"{NAME_PREFIX}probe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        raise NetnsUnavailable(f"'ip netns add' failed: {r.stderr.strip() or r.returncode}")
    _ip("netns", "del", probe, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale() -> None:
    """Delete namespaces of this module whose owning process is gone (crashed test runs)."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(NAME_PREFIX) + r"(\d+)", name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_pids_in(name)
            _ip("netns", "del", name, check=False)


def _kill_pids_in(name: str) -> None:
    r = _ip("netns", "pids", name, check=False)
    for tok in r.stdout.split():
        try:
            os.kill(int(tok), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


class NetNamespace:
    """One network namespace ``awe-t<pid>`` with veth ``awe<pid>h`` (host) / ``awe<pid>n`` (inside).

    Use as a context manager::

        with NetNamespace(addresses=2) as ns:
            p = ns.popen(["python3", "-m", "http.server", "8080", "--bind", ns.address])
    """

    def __init__(self, addresses: int = 1, lock_timeout_s: float = 30.0) -> None:
        if not 1 <= addresses <= 200:
            raise ValueError("addresses must be 1..200")
        self.name = f"{NAME_PREFIX}{os.getpid()}"
        self.host_if = f"awe{os.getpid()}h"
        self.ns_if = f"awe{os.getpid()}n"
        self.host_address = HOST_ADDRESS
        #: namespace-side addresses, ``.2`` first
        self.addresses: list[str] = [str(SUBNET.network_address + 2 + i) for i in range(addresses)]
        self._lock_timeout_s = lock_timeout_s
        self._lock_fd: int | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._open = False

    @property
    def address(self) -> str:
        """The first namespace-side address (``10.213.7.2``)."""
        return self.addresses[0]

    @property
    def cidr(self) -> str:
        return str(SUBNET)

    def open(self) -> NetNamespace:
        """Create namespace, veth pair and addresses; raises NetnsUnavailable if impossible."""
        check_available()
        self._lock_fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._lock_fd)
                    self._lock_fd = None
                    raise NetnsUnavailable(
                        f"another test holds {LOCK_PATH} (the {SUBNET} namespace is in use)"
                    ) from None
                time.sleep(0.1)
        try:
            _remove_stale()
            if self.name in _ip("netns", "list", check=False).stdout.split():
                _kill_pids_in(self.name)
                _ip("netns", "del", self.name, check=False)
            _ip("link", "del", self.host_if, check=False)
            for other in _ip("-o", "addr", "show", "to", str(SUBNET), check=False).stdout.splitlines():
                raise NetnsUnavailable(f"{SUBNET} is already configured on this host: {other.strip()}")
            self._open = True
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/{SUBNET.prefixlen}", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            for a in self.addresses:
                _ip(
                    "netns",
                    "exec",
                    self.name,
                    "ip",
                    "addr",
                    "add",
                    f"{a}/{SUBNET.prefixlen}",
                    "dev",
                    self.ns_if,
                )
            _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")
            _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        except subprocess.CalledProcessError as e:
            self.close()
            raise NetnsUnavailable(f"{' '.join(map(str, e.cmd))} failed: {(e.stderr or '').strip()}") from e
        except BaseException:
            self.close()
            raise
        return self

    def command(self, args: Sequence[str]) -> list[str]:
        """The argv that runs ``args`` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace (own session); it is killed on :meth:`close`."""
        if not self._open:
            raise RuntimeError("namespace is not open")
        kwargs.setdefault("start_new_session", True)
        p: subprocess.Popen[Any] = subprocess.Popen(self.command(args), **kwargs)
        self._procs.append(p)
        return p

    def run(
        self, args: Sequence[str], timeout: float = CMD_TIMEOUT_S, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``args`` inside the namespace to completion (bounded by ``timeout``)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(args), timeout=timeout, **kwargs)

    def close(self, term_timeout_s: float = 5.0) -> None:
        """Stop our processes (SIGTERM, then SIGKILL), delete the namespace (and with it the veth)."""
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    p.terminate()
        deadline = time.monotonic() + term_timeout_s
        for p in self._procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                p.wait(5)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        if self._open:
            _kill_pids_in(self.name)  # anything else started inside (e.g. by a test via run())
            _ip("netns", "del", self.name, check=False)
            _ip("link", "del", self.host_if, check=False)  # normally gone with the namespace
            self._open = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> NetNamespace:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
