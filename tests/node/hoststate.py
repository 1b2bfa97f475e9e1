"""What the test node changes on the machine, recorded before it changes it, and undone afterwards.

A node is more than processes: the kubelet rewrites kernel sysctls, the CNI plugin adds veths and network
namespaces, containerd leaves shims, overlay and shm mounts, runc leaves cgroups, the pod network is a bridge
and a policy route. All of it is machine-wide, so one node runs at a time (:class:`MachineLock`), and what
it will change is written to a state file (:class:`HostState`) *before* it changes it. :func:`undo` puts
everything back from that record alone: the node's own teardown uses it, and so does the next start after a
crashed run (a test process SIGKILLed leaves the state file behind; its processes die with it by
PDEATHSIG, but containerd's shims and the containers do not).

Everything here is identified by what is provably ours: our bridge name, our cgroup root, mounts under our
run directory, shims whose command line names our containerd socket, network namespaces holding an address
of our pod range, CNI results of our network name. Nothing is matched by a broad process name.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CMD_TIMEOUT_S = 15.0
RUN_DIR_PREFIX = "awe-node-"  # a node's run directory: tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)
STATE_DIR = Path("/run/admission-webhook-exporter-node")
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
CNI_RESULTS = Path("/var/lib/cni/results")
SHIM_SOCKETS = Path("/run/containerd/s")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
#: machine-wide directories a kubelet or containerd makes unless told otherwise; the ones that did not exist
#: before the node started are removed afterwards (only when empty once our entries are gone) ...
MACHINE_DIRS = ("/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/var/lib/cni", "/var/lib/containerd",
                "/run/containerd", "/opt/containerd", "/opt/cni", "/etc/kubernetes", "/var/run/kubernetes",
                "/usr/libexec/kubernetes")
#: ... except the kubelet's own, which are removed whole when they appeared while the node ran: one kubelet
#: runs on the machine at a time (the lock), and some paths are fixed whatever its --root-dir (its device
#: plugin socket is always /var/lib/kubelet/device-plugins/kubelet.sock)
KUBELET_DIRS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/usr/libexec/kubernetes")
#: what the kubelet sets at start, and to what (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables).
#: Our CNI bridge is not in gateway mode, so net.ipv4.ip_forward is not ours to touch (another program's
#: podman network may set it while we run).
KUBELET_SYSCTLS = {"vm.overcommit_memory": "1", "vm.panic_on_oom": "0", "kernel.panic": "10",
                   "kernel.panic_on_oops": "1", "kernel.keys.root_maxkeys": "1000000",
                   "kernel.keys.root_maxbytes": "25000000"}
SYSCTLS = tuple(KUBELET_SYSCTLS)


class HostError(RuntimeError):
    """The machine cannot host a node now (another one runs, a leftover could not be removed)."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=check)


@dataclass
class HostState:
    """Everything :func:`undo` needs, written to ``STATE_DIR/state.json`` before the first change."""

    owner_pid: int
    run_dir: str
    bridge: str
    pod_cidr: str
    gateway: str
    service_host: str
    route_table: int
    rule_priority: int
    cgroup_root: str  # the kubelet's --cgroup-root, e.g. "awe-node" (a directory in every hierarchy)
    cni_network: str
    containerd_socket: str
    sysctls: dict[str, str] = field(default_factory=dict)
    shim_sockets_before: list[str] = field(default_factory=list)
    dirs_before: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / "state.json"

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls) -> HostState | None:
        try:
            state = cls(**json.loads((STATE_DIR / "state.json").read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise HostError(f"{STATE_DIR / 'state.json'} is unreadable ({e}): remove it after checking "
                            "the machine by hand") from e
        # undo() unmounts and deletes under run_dir and removes cgroup_root: refuse anything but our own shapes
        run_dir = Path(state.run_dir)
        if (run_dir.parent != Path(tempfile.gettempdir()) or not run_dir.name.startswith(RUN_DIR_PREFIX)
                or not state.cgroup_root or "/" in state.cgroup_root or state.cgroup_root.startswith(".")):
            raise HostError(f"{STATE_DIR / 'state.json'} names run_dir={state.run_dir!r}, "
                            f"cgroup_root={state.cgroup_root!r}: not a node's; check the machine by hand")
        return state

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class MachineLock:
    """One test node per machine: the pod range, the bridge, the cgroup root and sysctls are machine-wide."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def acquire(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise HostError(f"another test node holds {STATE_DIR / 'lock'} "
                                    f"(waited {self.timeout_s:.0f} s)") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


# --------------------------------------------------------------------------------------------- #
# recording


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def record(state: HostState) -> None:
    """Fill in the values :func:`undo` restores or compares against, then save the state."""
    state.sysctls = {n: read_sysctl(n) for n in SYSCTLS}
    state.shim_sockets_before = sorted(p.name for p in SHIM_SOCKETS.glob("*")) if SHIM_SOCKETS.is_dir() else []
    state.dirs_before = [d for d in MACHINE_DIRS if os.path.lexists(d)]
    state.save()


# --------------------------------------------------------------------------------------------- #
# network


def add_bridge(state: HostState) -> None:
    """Our bridge with the gateway address; Pods' veths are attached to it by the CNI bridge plugin."""
    prefix = state.pod_cidr.split("/")[1]
    run("ip", "link", "add", state.bridge, "type", "bridge")
    run("ip", "addr", "add", f"{state.gateway}/{prefix}", "dev", state.bridge)
    run("ip", "link", "set", state.bridge, "up")


def add_service_route(state: HostState) -> None:
    """Deliver what Pods send to the ``kubernetes`` ClusterIP locally, for packets from our bridge only.

    A policy rule (``iif <bridge>``) and a ``local`` route in a table of its own: the host's own traffic
    never sees it (the ClusterIP stays unrouted for every other process), and the forwarder binds the
    address with IP_TRANSPARENT, so nothing is added to ``lo`` either.
    """
    run("ip", "route", "replace", "local", f"{state.service_host}/32", "dev", "lo", "table", str(state.route_table))
    run("ip", "rule", "add", "iif", state.bridge, "lookup", str(state.route_table),
        "priority", str(state.rule_priority))


def _remove_network(state: HostState, notes: list[str]) -> None:
    rules = run("ip", "rule", "list", "priority", str(state.rule_priority), check=False).stdout
    if f"lookup {state.route_table}" in rules:
        run("ip", "rule", "del", "priority", str(state.rule_priority), check=False)
        notes.append(f"ip rule {state.rule_priority}")
    if run("ip", "route", "show", "table", str(state.route_table), check=False).stdout.strip():
        run("ip", "route", "flush", "table", str(state.route_table), check=False)
        notes.append(f"route table {state.route_table}")
    if run("ip", "link", "show", state.bridge, check=False).returncode == 0:
        run("ip", "link", "del", state.bridge, check=False)
        notes.append(f"bridge {state.bridge}")


def _netns_addresses(name: str) -> list[ipaddress.IPv4Address]:
    out = run("ip", "-n", name, "-o", "-4", "addr", "show", check=False).stdout
    return [ipaddress.IPv4Interface(line.split()[3]).ip for line in out.splitlines() if len(line.split()) > 3]


def _remove_pod_netns(state: HostState, notes: list[str]) -> None:
    """CRI's pod namespaces (``/run/netns/cni-*``) that hold an address of our pod range. (One whose network
    setup failed holds none; containerd removes those itself. Another program's namespaces are never touched.)"""
    if not NETNS_DIR.is_dir():
        return
    pods = ipaddress.IPv4Network(state.pod_cidr)
    for p in sorted(NETNS_DIR.glob("cni-*")):
        if any(a in pods for a in _netns_addresses(p.name)):
            for pid in run("ip", "netns", "pids", p.name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", p.name, check=False)
            notes.append(f"netns {p.name}")


def _remove_cni_results(state: HostState, notes: list[str]) -> None:
    """libcni caches each ADD result in /var/lib/cni/results (containerd 1.6 cannot move it): ours by name."""
    for p in CNI_RESULTS.glob(f"{state.cni_network}-*"):
        p.unlink(missing_ok=True)
        notes.append(f"cni result {p.name}")


# --------------------------------------------------------------------------------------------- #
# processes, mounts, cgroups


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def shim_pids(containerd_socket: str) -> list[int]:
    """containerd-shim processes of *our* containerd: their ``-address`` is our socket."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            argv = _cmdline(int(d.name))
            if argv and "containerd-shim" in Path(argv[0]).name and containerd_socket in argv:
                found.append(int(d.name))
    return found


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """Our cgroup root in every mounted hierarchy (v1 controllers, name=systemd, the unified one)."""
    return [h / cgroup_root for h in sorted(CGROUP_FS.iterdir()) if (h / cgroup_root).is_dir()]


def make_cgroup_root(cgroup_root: str) -> None:
    """The kubelet refuses a --cgroup-root that does not exist in cpu, cpuacct, cpuset, memory, pids and
    systemd; we make it in every hierarchy so that all of runc's cgroups land below it."""
    for h in sorted(CGROUP_FS.iterdir()):
        if not (h / "cgroup.procs").exists():
            continue  # not a hierarchy
        d = h / cgroup_root
        d.mkdir(exist_ok=True)
        if (h / "cpuset.cpus").exists():  # v1 cpuset: a child starts empty and takes no task until filled
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def _procs_in(d: Path) -> list[int]:
    pids: list[int] = []
    for f in d.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(x) for x in f.read_text().split()]
    return pids


def _remove_cgroups(state: HostState, notes: list[str], timeout_s: float = 10.0) -> None:
    dirs = cgroup_dirs(state.cgroup_root)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = sorted({p for d in dirs for p in _procs_in(d)})
        if not pids:
            break
        notes.append(f"killed {len(pids)} processes left in cgroups")
        _kill_all(pids)
        time.sleep(0.2)
    for d in dirs:
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        try:
            d.rmdir()
        except OSError as e:
            notes.append(f"WARNING: cgroup {d} not removed: {e}")
    if dirs:
        notes.append(f"cgroups {state.cgroup_root} in {len(dirs)} hierarchies")


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(esc, ch)
    return path


def mounts_under(directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = _unescape(line.split()[4])
        if mp == directory or mp.startswith(prefix):
            found.append(mp)
    return found


def _unmount_all(directory: str, notes: list[str]) -> None:
    """Deepest first; the kubelet bind-mounts its own root dir (rshared), so the same path may be stacked."""
    count = 0
    for _ in range(10):
        mps = mounts_under(directory)
        if not mps:
            break
        for mp in sorted(set(mps), key=lambda m: (m.count("/"), m), reverse=True):
            if run("umount", mp, check=False).returncode != 0:
                run("umount", "-l", mp, check=False)
            count += 1
    if count:
        notes.append(f"{count} mounts under {directory}")
    left = mounts_under(directory)
    if left:
        notes.append(f"WARNING: {len(left)} mounts left under {directory}: {left[:3]}")


def _remove_stale_shim_sockets(state: HostState, notes: list[str]) -> None:
    """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir. A shim killed with
    SIGKILL leaves its socket: remove the ones made while we ran that nothing listens on any more."""
    if not SHIM_SOCKETS.is_dir():
        return
    for p in SHIM_SOCKETS.iterdir():
        if p.name in state.shim_sockets_before or not p.is_socket():
            continue
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            try:
                s.connect(str(p))
                continue  # alive: not ours to remove
            except OSError:
                pass
        p.unlink(missing_ok=True)
        notes.append(f"stale shim socket {p.name}")


def _remove_log_links(state: HostState, notes: list[str]) -> None:
    """The kubelet links each container log into /var/log/containers (a fixed path): ours point into our run
    directory; a link whose target is gone is left for whoever made it."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for p in CONTAINER_LOG_LINKS.iterdir():
        if p.is_symlink() and os.readlink(p).startswith(state.run_dir.rstrip("/") + "/"):
            p.unlink()
            notes.append(f"log link {p.name}")


def _remove_new_dirs(state: HostState, notes: list[str]) -> None:
    """Machine directories that appeared while we ran, if nothing but our (already removed) entries was in
    them. Deepest first, never recursively: another program's files there are not ours to delete."""
    for d in sorted(set(MACHINE_DIRS) - set(state.dirs_before), key=len, reverse=True):
        p = Path(d)
        if d in KUBELET_DIRS and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        if p.is_dir() and not p.is_symlink():
            for sub in sorted((s for s in p.rglob("*") if s.is_dir()), key=lambda s: len(s.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            try:
                p.rmdir()
                notes.append(f"dir {d}")
            except OSError as e:
                notes.append(f"WARNING: {d} appeared while the node ran and is not empty: {e}")


def leaked_dirs(state: HostState) -> list[str]:
    """Machine directories that exist now and did not before the node started."""
    return [d for d in MACHINE_DIRS if d not in state.dirs_before and os.path.lexists(d)]


def _restore_sysctls(state: HostState, notes: list[str]) -> None:
    """Back to the recorded value where the kubelet changed it, and only while it still holds the kubelet's
    value: a later change by someone else is theirs."""
    for name, value in state.sysctls.items():
        try:
            current = read_sysctl(name)
            if current != value and current == KUBELET_SYSCTLS.get(name):
                write_sysctl(name, value)
                notes.append(f"sysctl {name}={value}")
        except OSError as e:
            notes.append(f"WARNING: sysctl {name} not restored: {e}")


def undo(state: HostState) -> list[str]:
    """Put the machine back as ``state`` recorded it. Idempotent; never raises for what is already gone.

    Order: processes first (shims, then whatever is left in our cgroups), so nothing holds a mount or a
    namespace; then mounts, network namespaces, CNI results, the network, cgroups, sysctls. Returns what
    it removed (for the log), with ``WARNING:`` lines for what it could not.
    """
    notes: list[str] = []
    shims = shim_pids(state.containerd_socket)
    if shims:
        _kill_all(shims)
        notes.append(f"killed shims {shims}")
    _remove_cgroups(state, notes)
    _unmount_all(state.run_dir, notes)
    _remove_pod_netns(state, notes)
    _remove_cni_results(state, notes)
    _remove_log_links(state, notes)
    _remove_stale_shim_sockets(state, notes)
    _remove_new_dirs(state, notes)
    _remove_network(state, notes)
    _restore_sysctls(state, notes)
    return notes
