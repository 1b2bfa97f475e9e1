"""A real single-node Kubernetes on this machine, for tests: the control plane of tests/controlplane plus a
private containerd, a pod network with no way out, a kubelet registered as a Node, kube-controller-manager
and kube-scheduler. Pods are real: the chart's Deployment, webhook backends that a ReplicaSet recreates.

Layers (each usable alone): ``ControlPlane`` (etcd, egress proxy, kube-apiserver on loopback) is started
and owned by :class:`NodeCluster`, which adds the node. Binaries come from the one build step
(tests/controlplane/install.sh), host packages from tests/node/install-packages.sh, images from
tests/image/build.sh (docker-archives, loaded with :meth:`NodeCluster.load_image`).

Typical use::

    with NodeCluster(images=[exporter_tar]) as node:
        node.kubectl("apply", "-k", "deploy/manifests")
        node.wait_pod_ready("monitoring", "app.kubernetes.io/name=admission-webhook-exporter")
        node.service_get("monitoring", "admission-webhook-exporter", "metrics", "/metrics")

The network, and why it cannot leak:

* Pods sit on our bridge (``BRIDGE``, ``POD_CIDR``, gateway ``.1`` on the host). The CNI config gives them
  two routes only: the pod range itself and the ``kubernetes`` ClusterIP (10.0.0.1) via the gateway. There
  is no default route in a Pod, so a dial to anything else fails inside it with "network is unreachable".
  Nothing is masqueraded and ip_forward is not touched. A Pod's nameserver is its own loopback.
* Pods reach the apiserver (in-cluster config, 10.0.0.1:443) through ``apiserver_forward.py``: a policy
  rule delivers packets from our bridge for 10.0.0.1 to the host, where the forwarder (bound with
  IP_TRANSPARENT) passes them to 127.0.0.1. The host's own routing is unchanged.
* The apiserver reaches webhook Services by endpoint routing (``--enable-aggregator-routing``): it picks a
  ready endpoint (a Pod IP) itself and dials it through the egress proxy, which allows loopback and
  ``POD_CIDR`` only. No kube-proxy: tests/README.md says why. The apiserver's service proxy
  (``/api/v1/namespaces/NS/services/NAME:PORT/proxy/...``) takes the same path: that is how a test reaches
  a Service from the host.
* containerd gets an HTTP(S) proxy that refuses every connection: an image that was not loaded fails to
  pull at once instead of dialling a registry.

What the node changes on the machine is recorded first and undone by :func:`tests.node.hoststate.undo`,
on :meth:`NodeCluster.stop` and, after a crashed run, on the next start. Processes are started like the
control plane's (PR_SET_PDEATHSIG from one launcher thread) and stopped by PID.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.controlplane.harness import SERVICE_CIDR, ControlPlane, _Proc, _tail, cache_dir, free_port

from . import hoststate
from .hoststate import HostError, HostState, MachineLock

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
#: the pod range: a /24 of the test range next to tests/controlplane/netns.py's 10.213.7.0/24
POD_CIDR = ipaddress.IPv4Network("10.213.8.0/24")
GATEWAY = str(POD_CIDR.network_address + 1)
BRIDGE = "awe-node0"
NODE_NAME = "awe-node"
CNI_NETWORK = "awe-node-pods"
CGROUP_ROOT = "awe-node"  # the kubelet's --cgroup-root (/awe-node in every hierarchy), ours alone
#: the ``kubernetes`` Service's ClusterIP: the first address of the control plane's service range
SERVICE_HOST = str(ipaddress.IPv4Network(SERVICE_CIDR).network_address + 1)
ROUTE_TABLE = RULE_PRIORITY = 2138  # policy routing for Pods -> SERVICE_HOST (any unused number would do)
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_USER = f"system:node:{NODE_NAME}"
KCM_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"
READY_TIMEOUT_S = 120.0
LOCK_TIMEOUT_S = 600.0  # another session's node suite takes minutes; wait for it rather than fail
STOP_TIMEOUT_S = 15.0
KUBECTL_TIMEOUT_S = 120.0
T = TypeVar("T")


class NodeUnavailable(RuntimeError):
    """The node cannot run here (a binary, a package, root); ``reason`` is meant for ``pytest.skip``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NodeError(RuntimeError):
    """A started component failed or a wait ran out; the message carries the relevant log tail."""


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path

    @property
    def bin_dir(self) -> Path:
        return self.kubectl.parent


def find_node_binaries(bin_dir: Path | None = None) -> NodeBinaries:
    """The Kubernetes binaries from install.sh's cache, or NodeUnavailable naming what to run."""
    d = bin_dir or cache_dir() / "bin"
    paths = [d / n for n in ("kubelet", "kube-controller-manager", "kube-scheduler", "kubectl")]
    for p in paths:
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise NodeUnavailable(f"{p} not found: run tests/controlplane/install.sh (builds every Kubernetes binary)")
    return NodeBinaries(*paths)


def check_host() -> None:
    """Root, the host packages, cgroup hierarchies: NodeUnavailable with what is missing."""
    if os.geteuid() != 0:
        raise NodeUnavailable(f"a kubelet and containerd need root (euid is {os.geteuid()})")
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "ip"):
        if shutil.which(tool) is None:
            raise NodeUnavailable(f"{tool} not on PATH: run tests/node/install-packages.sh")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).is_file():
            raise NodeUnavailable(f"CNI plugin {CNI_BIN_DIR / plugin} missing: run tests/node/install-packages.sh")
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "pids"):
        if not (hoststate.CGROUP_FS / controller / "cgroup.procs").exists():
            raise NodeUnavailable(f"cgroup v1 controller {controller} is not mounted at {hoststate.CGROUP_FS}")


def images_dir() -> Path:
    """Where tests/image/build.sh exports docker-archives (``<name>.tar``)."""
    return cache_dir() / "images"


def archive_image_names(archive: Path) -> list[str]:
    """The image names a docker-archive (manifest.json RepoTags) or an OCI archive (index.json annotations)
    carries."""
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
        if "manifest.json" in members:
            f = tar.extractfile("manifest.json")
            manifest = json.loads(f.read()) if f else []
            return sorted(t for m in manifest for t in m.get("RepoTags") or [])
        if "index.json" in members:
            f = tar.extractfile("index.json")
            index = json.loads(f.read()) if f else {}
            annotations = [m.get("annotations", {}) for m in index.get("manifests", [])]
            return sorted(a.get("io.containerd.image.name") or a.get("org.opencontainers.image.ref.name", "")
                          for a in annotations if a)
    return []


def eventually(predicate: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 0.5,
               on_timeout: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout_s`` passes (NodeError)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            last = e
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise NodeError(f"{what}: not within {timeout_s:.0f} s" + (f" (last error: {last})" if last else "")
                            + (f"\n{extra}" if extra else ""))
        time.sleep(every_s)


class NodeCluster:
    """The control plane and one node. ``start()`` returns once the Node is Ready and Pods can be created.

    Args:
        images: docker-archives to load into containerd at start (the pause image is found by name in
            :func:`images_dir` unless one of these provides ``SANDBOX_IMAGE``).
        users: extra static-token users (name -> groups) of the control plane.
        ready_timeout_s: bound for each component's readiness and for the Node to be Ready.
        lock: the machine lock, already held by the caller (who releases it); by default the node takes
            it at start and releases it at stop.
    """

    def __init__(self, *, images: Sequence[Path] = (), users: Mapping[str, Sequence[str]] | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S, bin_dir: Path | None = None,
                 lock: MachineLock | None = None) -> None:
        check_host()
        self.binaries = find_node_binaries(bin_dir)
        self.images = list(images)
        self.users = dict(users or {})
        self.ready_timeout_s = ready_timeout_s
        self.cp: ControlPlane | None = None
        self.run_dir: Path | None = None
        self.state: HostState | None = None
        #: seconds each start phase took, and the whole stop (for the record, never asserted)
        self.timings: dict[str, float] = {}
        #: what the leftover sweep at start and the teardown removed
        self.sweep_notes: list[str] = []
        self.teardown_notes: list[str] = []
        self._lock = lock or MachineLock(LOCK_TIMEOUT_S)
        self._own_lock = lock is None
        self._procs: dict[str, _Proc] = {}
        self._refuse: socket.socket | None = None
        self._env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self._env["NO_PROXY"] = self._env["no_proxy"] = "*"

    # ---- paths ----

    def _dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("node not started")
        return self.run_dir

    def _cp(self) -> ControlPlane:
        if self.cp is None:
            raise RuntimeError("node not started")
        return self.cp

    @property
    def containerd_socket(self) -> Path:
        return self._dir() / "containerd" / "containerd.sock"

    @property
    def kubeconfig_path(self) -> Path:
        """The admin kubeconfig (system:masters): what ``kubectl`` and ``helm`` use in the tests."""
        return self._cp().kubeconfig_path

    @property
    def pod_logs_dir(self) -> Path:
        return self._dir() / "pod-logs"

    def log_path(self, component: str) -> Path:
        return self._dir() / f"{component}.log"

    def tool_env(self) -> dict[str, str]:
        """Environment for kubectl, helm and shell steps: our binaries first on PATH, the admin kubeconfig,
        and every cache of theirs inside the run directory (never ~/.kube or ~/.cache/helm)."""
        d = self._dir()
        return {**self._env, "PATH": f"{self.binaries.bin_dir}:{self._env.get('PATH', '/usr/bin:/bin')}",
                "KUBECONFIG": str(self.kubeconfig_path), "KUBECACHEDIR": str(d / "kube-cache"),
                "HELM_CACHE_HOME": str(d / "helm" / "cache"), "HELM_CONFIG_HOME": str(d / "helm" / "config"),
                "HELM_DATA_HOME": str(d / "helm" / "data")}

    # ---- lifecycle ----

    def start(self) -> NodeCluster:
        if self.run_dir is not None:
            raise RuntimeError("already started")
        t0 = time.monotonic()
        try:
            if self._own_lock:
                self._lock.acquire()
        except HostError as e:
            raise NodeError(str(e)) from e
        try:
            self.sweep_leftovers()
            self.run_dir = Path(tempfile.mkdtemp(prefix=hoststate.RUN_DIR_PREFIX))
            self.state = HostState(
                owner_pid=os.getpid(), run_dir=str(self.run_dir), bridge=BRIDGE, pod_cidr=str(POD_CIDR),
                gateway=GATEWAY, service_host=SERVICE_HOST, route_table=ROUTE_TABLE, rule_priority=RULE_PRIORITY,
                cgroup_root=CGROUP_ROOT, cni_network=CNI_NETWORK, containerd_socket=str(self.containerd_socket))
            hoststate.record(self.state)
        except HostError as e:
            self._release_lock()
            raise NodeError(str(e)) from e
        except BaseException:
            self._release_lock()
            raise
        atexit.register(self.stop)
        try:
            self._phase("control_plane", self._start_control_plane)
            self._phase("network", self._start_network)
            self._phase("containerd", self._start_containerd)
            self._phase("images", self._load_start_images)
            self._phase("controllers", self._start_controllers)
            self._phase("kubelet", self._start_kubelet)
            self._phase("node_ready", self._wait_node_ready)
        except BaseException:
            self.stop()
            raise
        self.timings["start_total"] = time.monotonic() - t0
        return self

    def _phase(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def sweep_leftovers(self) -> None:
        """A state file without a live owner is a crashed run: put the machine back before anything else."""
        left = HostState.load()
        if left is not None:
            self.sweep_notes = hoststate.undo(left)
            shutil.rmtree(left.run_dir, ignore_errors=True)
            left.forget()
        if hoststate.run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            raise NodeError(f"bridge {BRIDGE} exists and no state file says it is ours: remove it by hand")
        taken = hoststate.run("ip", "-o", "addr", "show", "to", str(POD_CIDR), check=False).stdout.strip()
        if taken:
            raise NodeError(f"{POD_CIDR} is already configured on this machine: {taken}")
        if hoststate.cgroup_dirs(CGROUP_ROOT):
            raise NodeError(f"cgroup {CGROUP_ROOT} exists and no state file says it is ours: "
                            f"{hoststate.cgroup_dirs(CGROUP_ROOT)[0]}")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> _Proc:
        proc = _Proc(name, argv, self.log_path(name))
        proc.start(env or self._env)
        self._procs[name] = proc
        return proc

    def _wait(self, name: str, ready: Callable[[], bool], timeout_s: float | None = None) -> None:
        proc = self._procs[name]

        def check() -> bool:
            if not proc.alive():
                raise NodeError(f"{name} exited ({proc.popen.returncode if proc.popen else '?'}); "
                                f"log tail ({proc.log_path}):\n{_tail(proc.log_path)}")
            return ready()

        eventually(check, timeout_s=timeout_s or self.ready_timeout_s, what=f"{name} ready", every_s=0.2,
                   on_timeout=lambda: f"log tail ({proc.log_path}):\n{_tail(proc.log_path)}")

    def _start_control_plane(self) -> None:
        cp = ControlPlane(work_parent=self._dir(), aggregator_routing=True, netns_cidr=str(POD_CIDR),
                          service_account_admission=True)
        cp.add_static_token(KUBELET_USER, groups=["system:nodes"])
        cp.add_static_token(KCM_USER)
        cp.add_static_token(SCHEDULER_USER)
        for user, groups in self.users.items():
            cp.add_static_token(user, groups=groups)
        self.cp = cp
        cp.start()

    def _start_network(self) -> None:
        assert self.state is not None
        hoststate.add_bridge(self.state)
        hoststate.add_service_route(self.state)
        d = self._dir()
        (d / "cni" / "net.d").mkdir(parents=True)
        conf = {"cniVersion": "0.4.0", "name": CNI_NETWORK, "plugins": [{
            "type": "bridge", "bridge": BRIDGE,
            # Not a gateway: the bridge's address is ours (add_bridge), and the plugin leaves ip_forward alone.
            "isGateway": False, "isDefaultGateway": False, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(d / "cni" / "ipam"),
                     "ranges": [[{"subnet": str(POD_CIDR), "rangeStart": str(POD_CIDR.network_address + 10),
                                  "gateway": GATEWAY}]],
                     # the only destinations a Pod can route to besides its own range: no default route
                     "routes": [{"dst": f"{SERVICE_HOST}/32", "gw": GATEWAY}]}}]}
        (d / "cni" / "net.d" / "10-awe-node.conflist").write_text(json.dumps(conf, indent=1))
        cp = self._cp()
        self._spawn("apiserver-forward", [sys.executable, str(HERE / "apiserver_forward.py"),
                                          "--listen", f"{SERVICE_HOST}:443", "--to", f"127.0.0.1:{cp.apiserver_port}"])
        self._wait("apiserver-forward", lambda: '"listening"' in self.log_path("apiserver-forward").read_text(),
                   timeout_s=15)

    def _containerd_config(self) -> str:
        d = self._dir() / "containerd"
        return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # Root lacks CAP_SYS_RESOURCE here: without this every sandbox fails (runc cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc')}"
        Root = "{d / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self._dir() / 'cni' / 'net.d'}"
    max_conf_num = 1
"""

    def _start_containerd(self) -> None:
        d = self._dir() / "containerd"
        d.mkdir()
        (d / "config.toml").write_text(self._containerd_config())
        # A port that refuses every connection, as containerd's HTTP(S) proxy: a pull of an image that was not
        # loaded fails at once ("connection refused") and never dials a registry.
        self._refuse = socket.socket()
        self._refuse.bind(("127.0.0.1", 0))
        refuse = f"http://127.0.0.1:{self._refuse.getsockname()[1]}"
        env = {**self._env, "HTTP_PROXY": refuse, "HTTPS_PROXY": refuse, "NO_PROXY": "", "no_proxy": ""}
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml"), "--log-level", "warn"], env)
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, timeout_s=30)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``ctr`` against our containerd, in the CRI namespace (k8s.io)."""
        return subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout, check=check, env=self._env)

    def image_names(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.split())

    def load_image(self, archive: Path) -> list[str]:
        """Import a docker- or OCI-archive into the node (names kept, unpacked for overlayfs); returns the
        image names it holds. Pods then use them with ``imagePullPolicy: IfNotPresent`` or ``Never``."""
        if not archive.is_file():
            raise NodeUnavailable(f"image archive {archive} not found: run tests/image/build.sh")
        names = archive_image_names(archive)
        done = self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), check=False, timeout=300)
        missing = set(names) - self.image_names()
        if done.returncode != 0 or missing or not names:
            raise NodeError(f"ctr images import {archive} (names {names}) failed, missing {sorted(missing)}: "
                            f"{done.stderr.strip()[-500:]}")
        return names

    def _load_start_images(self) -> None:
        for archive in self.images:
            self.load_image(archive)
        if SANDBOX_IMAGE not in self.image_names():
            self.load_image(images_dir() / "pause.tar")
        if SANDBOX_IMAGE not in self.image_names():
            raise NodeError(f"no archive provided {SANDBOX_IMAGE} (the sandbox image containerd is configured with)")

    def _start_controllers(self) -> None:
        cp, d = self._cp(), self._dir()
        kcm_port, sched_port = free_port(), free_port()
        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager), f"--kubeconfig={cp.kubeconfig_for(KCM_USER)}",
            "--leader-elect=false", "--controllers=*", "--use-service-account-credentials=true",
            f"--root-ca-file={cp.ca_path}", "--allocate-node-cidrs=false",
            f"--flex-volume-plugin-dir={d / 'kcm-volume-plugins'}",  # else it makes /usr/libexec/kubernetes
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={d / 'kcm-certs'}", "--v=1"])
        self._spawn("kube-scheduler", [
            str(self.binaries.kube_scheduler), f"--kubeconfig={cp.kubeconfig_for(SCHEDULER_USER)}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            f"--cert-dir={d / 'scheduler-certs'}", "--v=1"])
        self._wait("kube-controller-manager", lambda: _healthz(f"https://127.0.0.1:{kcm_port}/healthz"))
        self._wait("kube-scheduler", lambda: _healthz(f"https://127.0.0.1:{sched_port}/healthz"))

    def _kubelet_config(self, port: int, healthz_port: int) -> dict[str, Any]:
        d = self._dir()
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": GATEWAY, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,  # this machine's cgroups are v1 (hybrid); 1.34 refuses them by default
            "failSwapOn": False,
            # Its API (logs, exec, metrics) for bearer tokens the apiserver vouches for, nothing anonymous.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True}},
            "authorization": {"mode": "Webhook"},
            "podLogsDir": str(d / "pod-logs"), "volumePluginDir": str(d / "volume-plugins"),
            "resolvConf": str(d / "resolv.conf"),
            "makeIPTablesUtilChains": False,  # no KUBE-* iptables chains on the machine
            "serializeImagePulls": False, "maxPods": 50,
            # The machine is shared: evict only when really short, and never garbage-collect loaded images.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s",
        }

    def _start_kubelet(self) -> None:
        cp, d = self._cp(), self._dir()
        # A Pod's DNS server is its own loopback, where nothing listens: a lookup fails at once inside the Pod.
        # (An empty file would not do: containerd then copies the host's resolv.conf into the sandbox.)
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        port, healthz = free_port(GATEWAY), free_port()
        (d / "kubelet.yaml").write_text(json.dumps(self._kubelet_config(port, healthz), indent=1))
        hoststate.make_cgroup_root(CGROUP_ROOT)
        self._spawn("kubelet", [
            str(self.binaries.kubelet), f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={cp.kubeconfig_for(KUBELET_USER)}", f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet' / 'pki'}", f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}",
            "--v=1"])
        self._wait("kubelet", lambda: _healthz(f"http://127.0.0.1:{healthz}/healthz"))

    def _wait_node_ready(self) -> None:
        self._wait("kubelet", lambda: self.node_condition("Ready") == "True")
        # ServiceAccount admission needs the namespace's `default` ServiceAccount, projected tokens the CA bundle.
        self.wait_namespace_usable("default")

    def node_condition(self, kind: str) -> str | None:
        status, body = self._cp().request(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return None
        for c in json.loads(body).get("status", {}).get("conditions", []):
            if c["type"] == kind:
                return str(c["status"])
        return None

    def wait_namespace_usable(self, namespace: str, timeout_s: float = 60.0) -> None:
        """Pods can be created in ``namespace``: its ``default`` ServiceAccount and ``kube-root-ca.crt``
        exist (kube-controller-manager makes both soon after the namespace)."""
        cp = self._cp()
        eventually(lambda: cp.request(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0] == 200
                   and cp.request(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")[0] == 200,
                   timeout_s=timeout_s, what=f"namespace {namespace}: default ServiceAccount and kube-root-ca.crt")

    # ---- teardown ----

    def stop(self) -> None:
        """Stop everything by PID and put the machine back (hoststate.undo). Idempotent; never raises for
        what is already gone. Pods are deleted through the API first, so that the kubelet stops them the
        normal way (CNI DEL, sandbox removal); whatever is left is then removed by force."""
        if self.run_dir is None or self.state is None:
            self._release_lock()
            return
        t0 = time.monotonic()
        for name in ("kube-controller-manager", "kube-scheduler"):  # nothing recreates what we delete next
            self._stop_proc(name)
        self._phase("stop_drain", self._drain_pods)
        self._stop_proc("kubelet")
        if "containerd" in self._procs and self._procs["containerd"].alive():
            self._phase("stop_containers", self._remove_containers)
        self._stop_proc("containerd")
        self._stop_proc("apiserver-forward")
        if self.cp is not None:
            self.cp.stop()
        if self._refuse is not None:
            self._refuse.close()
            self._refuse = None
        t1 = time.monotonic()
        self.teardown_notes = hoststate.undo(self.state)
        self.timings["stop_undo"] = time.monotonic() - t1
        if os.environ.get("AWE_KEEP_NODE_DIR") != "1":
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.state.forget()
        self._release_lock()
        self.timings["stop_total"] = time.monotonic() - t0
        self.run_dir = None
        atexit.unregister(self.stop)

    def _release_lock(self) -> None:
        if self._own_lock:
            self._lock.release()

    def _stop_proc(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            proc.stop(timeout_s=STOP_TIMEOUT_S)

    def _drain_pods(self, timeout_s: float = 30.0) -> None:
        """Webhook configurations first (a Fail webhook must not block the deletes), then every Pod with
        grace 0; wait (bounded) until the kubelet has stopped every sandbox."""
        cp = self.cp
        kubelet = self._procs.get("kubelet")
        if cp is None or kubelet is None or not kubelet.alive():
            return
        with contextlib.suppress(OSError, ValueError):
            for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
                cp.request(f"/apis/admissionregistration.k8s.io/v1/{kind}", method="DELETE")
            status, body = cp.request("/api/v1/namespaces")
            for ns in json.loads(body).get("items", []) if status == 200 else []:
                cp.request(f"/api/v1/namespaces/{ns['metadata']['name']}/pods?gracePeriodSeconds=0", method="DELETE")
        with contextlib.suppress(NodeError):
            eventually(lambda: not self.running_tasks(), timeout_s=timeout_s,
                       what="every Pod's containers stopped by the kubelet")

    def running_tasks(self) -> list[str]:
        """containerd tasks still running (a stopped one waits for the kubelet's garbage collection)."""
        lines = self.ctr("tasks", "list", check=False).stdout.splitlines()[1:]
        return [line.split()[0] for line in lines if line.split()[-1:] == ["RUNNING"]]

    def _remove_containers(self) -> None:
        for tid in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", tid, check=False)
        with contextlib.suppress(NodeError):
            eventually(lambda: not self.running_tasks(), timeout_s=10, what="tasks killed", every_s=0.2)
        for tid in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", tid, check=False)
        for cid in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", cid, check=False)

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- tools ----

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = KUBECTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """The kubectl built by install.sh, as admin; NodeError with its output when ``check`` and it fails."""
        return self.tool(str(self.binaries.kubectl), *args, input=input, check=check, timeout=timeout)

    def tool(self, *argv: str, input: str | None = None, check: bool = True, cwd: Path = REPO_ROOT,
             timeout: float = KUBECTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a command with :meth:`tool_env` (bounded by ``timeout``)."""
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, env=self.tool_env(), check=False)
        if check and done.returncode != 0:
            raise NodeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    def request(self, path: str, method: str = "GET", body: Any | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """A raw apiserver request as admin (see ControlPlane.request)."""
        return self._cp().request(path, method=method, body=body, timeout=timeout)

    def service_get(self, namespace: str, service: str, port: str, path: str, scheme: str = "http",
                    timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` on a Service through the apiserver's service proxy: the apiserver picks a ready
        endpoint of the Service and dials it over the egress proxy (the same path as a webhook call)."""
        name = f"{scheme}:{service}:{port}" if scheme == "https" else f"{service}:{port}"
        return self.request(f"/api/v1/namespaces/{namespace}/services/{name}/proxy/{path.lstrip('/')}",
                            timeout=timeout)

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's log, read from the kubelet's pod log directory (the apiserver cannot reach the
        kubelet's API: it has no client certificate), every restart concatenated."""
        out = []
        for d in sorted(self.pod_logs_dir.glob(f"{namespace}_{pod}_*")):
            for f in sorted(d.glob(f"{container or '*'}/*.log")):
                out.append(f.read_text(errors="replace"))
        return "".join(out)

    def describe(self, namespace: str) -> str:
        """Pods and events of a namespace, for a failure message."""
        pods = self.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
        events = self.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        return f"pods:\n{pods}\nevents:\n{events[-3000:]}"


def _healthz(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the components' self-signed serving certs; only /healthz is read
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    with opener.open(url, timeout=2) as r:
        return bool(r.status == 200)


def pause_pod(name: str, namespace: str = "default") -> dict[str, Any]:
    """A Pod that only runs the sandbox image's pause process: something real for the kubelet to run, with
    nothing to load but the pause image."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                     "containers": [{"name": "pause", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}]}}


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.node.harness up [--image ARCHIVE]... [--pause-pod]``: start a node, print one JSON
    line (kubeconfig, run dir, pod range), and keep it until SIGTERM/SIGINT; then stop it and print the
    teardown notes. For people, and for the test that kills a node mid-run."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m tests.node.harness")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a node and keep it until SIGTERM/SIGINT")
    up.add_argument("--image", type=Path, action="append", default=[], help="docker-archive to load (repeatable)")
    up.add_argument("--pause-pod", action="store_true", help="run a pause Pod in default and wait for it")
    up.add_argument("--lock-held-by-parent", action="store_true",
                    help="the calling process holds the machine lock (tests/node/test_host.py)")
    a = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node = NodeCluster(images=a.image, lock=MachineLock(0) if a.lock_held_by_parent else None).start()
    try:
        if a.pause_pod:
            node.kubectl("apply", "-f", "-", input=json.dumps(pause_pod("pause")))
            node.kubectl("wait", "--for=condition=Ready", "pod/pause", "--timeout=120s")
        print(json.dumps({"event": "ready", "kubeconfig": str(node.kubeconfig_path), "run_dir": str(node.run_dir),
                          "pod_cidr": str(POD_CIDR), "timings": node.timings}), flush=True)
        stop.wait()
    finally:
        node.stop()
        print(json.dumps({"event": "stopped", "notes": node.teardown_notes, "timings": node.timings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
