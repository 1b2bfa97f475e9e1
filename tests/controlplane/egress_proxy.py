#!/usr/bin/env python3
"""HTTP CONNECT proxy on a Unix socket: kube-apiserver's egress selector for test control planes.

Why it exists: for a ``service``-backed admission webhook kube-apiserver resolves the Service to
``<ClusterIP>:<port>`` and dials it. The test cluster's ClusterIPs (10.0.0.0/24) are routed nowhere
on this host, so without help the dial would leave through the default route. kube-apiserver is
therefore told (``--egress-selector-config-file``, network context ``cluster``) to tunnel those dials
through this proxy, which only ever dials:

* loopback addresses (127.0.0.0/8, ::1, ``localhost``), and
* addresses inside the CIDRs given with ``--allow-cidr`` (the test's own network-namespace /24).

Targets are translated through a JSON mapping file that is re-read on every CONNECT, so a test
harness can remap services at run time without restarting anything::

    {"10.0.0.50:443": "127.0.0.1:28443", "hook.ns.svc:443": "10.213.7.2:8443"}

A destination may also be refused, to model a firewall between the control plane and one backend: ``"!drop"``
(the firewall drops the packets: the CONNECT is held unanswered until the apiserver gives up or
``DROP_HOLD_S`` passes) or ``"!reject"`` (it answers with a reset: ``502``, as a refused dial). Tunnels already
open to a destination that becomes refused are cut within ``REFUSAL_POLL_S`` (the apiserver keeps its
connections to a webhook alive, so without the cut a new rule would take effect only when it reconnects)::

    {"127.0.0.1:28443": "!drop"}

Answers: ``200`` tunnel established; ``503`` target unmapped and not itself allowed; ``403`` the
mapping points outside the allowed destinations; ``502`` allowed destination did not accept the
connection; ``400``/``405`` malformed request. kube-apiserver surfaces these as
``proxy error from ... while dialing <target>, code <N>``. One JSON line per CONNECT is written to
the log (``--log``, default stdout). Connections are bounded (``--max-conns``) and every read/dial
has a timeout, so a misbehaving peer cannot pin the proxy.

Standard library only, so it runs under any Python 3.9+ without the project's dependencies.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

HEADER_LIMIT = 16384
HEADER_TIMEOUT_S = 10.0
DIAL_TIMEOUT_S = 5.0
DROP_HOLD_S = 60.0  # a dropped CONNECT is held at most this long (the apiserver gives up after timeoutSeconds)
REFUSALS = ("!drop", "!reject")
REFUSAL_POLL_S = 0.2


def split_host_port(hostport: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; raises ValueError when malformed."""
    host, sep, port = hostport.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not host:port: {hostport!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    p = int(port)
    if not 0 < p < 65536:
        raise ValueError(f"bad port in {hostport!r}")
    return host, p


class Policy:
    """Decides where a CONNECT target may go. Never resolves DNS names (only ``localhost``)."""

    def __init__(self, map_path: str, allowed: Sequence[str]) -> None:
        self.map_path = map_path
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in allowed]

    def load_map(self) -> dict[str, str]:
        """Re-read the mapping file; a missing or half-written file counts as empty."""
        try:
            with open(self.map_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def dialable_ip(self, host: str) -> str | None:
        """Return the IP literal to dial if ``host`` is loopback or in an allowed CIDR, else None."""
        if host == "localhost":
            return "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name other than localhost: we never resolve it
        if ip.is_loopback or any(ip in net for net in self.allowed):
            return str(ip)
        return None

    def resolve(self, target: str) -> tuple[int, tuple[str, int] | None, str | None]:
        """Map a CONNECT target to ``(status, (ip, port) or None, mapped dest or None)``."""
        mapping = self.load_map()
        dest = mapping.get(target)
        if dest is None:
            # "name.ns.svc:443" and "name.ns.svc.cluster.local:443" are the same service.
            if target.rpartition(":")[0].endswith(".svc.cluster.local"):
                short = target.replace(".svc.cluster.local:", ".svc:", 1)
                dest = mapping.get(short)
        if dest is None:
            host, port = split_host_port(target)
            ip = self.dialable_ip(host)
            return (200, (ip, port), None) if ip else (503, None, None)
        if dest in REFUSALS:
            return (0 if dest == "!drop" else 502), None, dest
        try:
            dhost, dport = split_host_port(dest)
        except ValueError:
            return 403, None, dest
        ip = self.dialable_ip(dhost)
        return (200, (ip, dport), dest) if ip else (403, None, dest)


def pump(src: socket.socket, dst: socket.socket, idle_timeout: float) -> None:
    """Copy bytes one way until EOF/error/idle timeout, then shut both sockets down."""
    src.settimeout(idle_timeout)
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Proxy:
    """Accept loop plus one bounded handler thread (and one pump thread) per tunnel."""

    def __init__(self, sock_path: str, policy: Policy, log: IO[str], max_conns: int, idle_timeout: float) -> None:
        self.sock_path = sock_path
        self.policy = policy
        self.log = log
        self.log_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_conns)
        self.idle_timeout = idle_timeout
        self.tunnels: dict[int, tuple[str, socket.socket, socket.socket]] = {}  # open tunnels by id, with target
        self.tunnels_lock = threading.Lock()

    def record(self, **rec: object) -> None:
        rec = {"t": round(time.time(), 3), **rec}
        with self.log_lock:
            self.log.write(json.dumps(rec, sort_keys=True) + "\n")
            self.log.flush()

    @staticmethod
    def reply(c: socket.socket, status: str) -> None:
        try:
            c.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        except OSError:
            pass

    def handle(self, c: socket.socket) -> None:
        try:
            self._handle(c)
        finally:
            self.slots.release()

    def _handle(self, c: socket.socket) -> None:
        c.settimeout(HEADER_TIMEOUT_S)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = c.recv(4096)
                if not chunk or len(buf) + len(chunk) > HEADER_LIMIT:
                    c.close()
                    return
                buf += chunk
        except OSError:
            c.close()
            return
        head, _, rest = buf.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) < 2 or parts[0] != "CONNECT":
            self.record(target=None, result="405 not CONNECT", line=" ".join(parts)[:200])
            self.reply(c, "405 Method Not Allowed")
            c.close()
            return
        target = parts[1]
        try:
            status, addr, dest = self.policy.resolve(target)
        except ValueError as e:
            self.record(target=target, result=f"400 {e}")
            self.reply(c, "400 Bad Request")
            c.close()
            return
        if status == 0:  # dropped: say nothing until the client hangs up (or the bound passes)
            self.record(target=target, dest=dest, result="dropped")
            c.settimeout(DROP_HOLD_S)
            try:
                while c.recv(4096):
                    pass
            except OSError:
                pass
            c.close()
            return
        if status == 502 and dest == "!reject":
            self.record(target=target, dest=dest, result="502 rejected")
            self.reply(c, "502 Bad Gateway")
            c.close()
            return
        if status == 503 or addr is None:
            why = "503 unmapped" if status == 503 else "403 destination not allowed"
            self.record(target=target, dest=dest, result=why)
            self.reply(c, "503 Service Unavailable" if status == 503 else "403 Forbidden")
            c.close()
            return
        try:
            u = socket.create_connection(addr, timeout=DIAL_TIMEOUT_S)
        except OSError as e:
            self.record(target=target, dest=f"{addr[0]}:{addr[1]}", result=f"502 {e}")
            self.reply(c, "502 Bad Gateway")
            c.close()
            return
        self.record(target=target, dest=f"{addr[0]}:{addr[1]}", result="200")
        try:
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                u.sendall(rest)
        except OSError:
            u.close()
            c.close()
            return
        with self.tunnels_lock:
            self.tunnels[id(c)] = (target, c, u)
        try:
            back = threading.Thread(target=pump, args=(u, c, self.idle_timeout), daemon=True)
            back.start()
            pump(c, u, self.idle_timeout)
            back.join(self.idle_timeout)
        finally:
            with self.tunnels_lock:
                self.tunnels.pop(id(c), None)
            u.close()
            c.close()

    def cut_refused(self) -> None:
        """Every REFUSAL_POLL_S: shut the open tunnels whose target the map now refuses."""
        while True:
            time.sleep(REFUSAL_POLL_S)
            refused = {t for t, d in self.policy.load_map().items() if d in REFUSALS}
            with self.tunnels_lock:
                cut = [(t, c, u) for t, c, u in self.tunnels.values() if t in refused]
            for target, c, u in cut:
                self.record(target=target, result="cut: refused")
                for sock in (c, u):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def serve(self) -> None:
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.sock_path)
        os.chmod(self.sock_path, 0o600)
        srv.listen(128)
        threading.Thread(target=self.cut_refused, daemon=True).start()
        print(
            f"egress proxy on unix:{self.sock_path} map={self.policy.map_path} "
            f"allow=loopback,{','.join(map(str, self.policy.allowed))}",
            file=sys.stderr,
            flush=True,
        )
        while True:
            c, _ = srv.accept()
            if not self.slots.acquire(timeout=HEADER_TIMEOUT_S):
                self.record(target=None, result="503 too many connections")
                self.reply(c, "503 Service Unavailable")
                c.close()
                continue
            try:
                threading.Thread(target=self.handle, args=(c,), daemon=True).start()
            except RuntimeError:
                self.slots.release()
                c.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("--map", required=True, help="JSON mapping file (may not exist yet)")
    ap.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        help="extra destination CIDR that may be dialled (repeatable); loopback is always allowed",
    )
    ap.add_argument("--log", default="-", help="JSON-lines log file, '-' = stdout")
    ap.add_argument("--max-conns", type=int, default=64)
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="seconds a tunnel may sit idle")
    a = ap.parse_args(argv)
    log: IO[str] = sys.stdout if a.log == "-" else open(a.log, "a", buffering=1, encoding="utf-8")
    Proxy(a.socket, Policy(a.map, a.allow_cidr), log, a.max_conns, a.idle_timeout).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
