"""The node leaves the machine as it found it: after a clean stop, and after a run that was SIGKILLed with a Pod
running (its leftovers are swept by the next start).

What is compared is what the node can change on a shared machine: its bridge, policy rule and route table,
its cgroup root, mounts under any node run directory, network namespaces on its pod range, processes
naming a node run directory, the sysctls the kubelet rewrites, the machine directories a kubelet or
containerd would create, container log links, CNI results, iptables chains. It holds the machine lock
throughout, so it must run before the session's shared node starts (tests/node/conftest.py orders it first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from . import fixtures, hoststate
from .fixtures import NODE_TEST_TIMEOUT
from .harness import (
    BRIDGE,
    CGROUP_ROOT,
    CNI_NETWORK,
    LOCK_TIMEOUT_S,
    POD_CIDR,
    REPO_ROOT,
    ROUTE_TABLE,
    RULE_PRIORITY,
    NodeCluster,
    pause_pod,
)

pytestmark = [pytest.mark.node, pytest.mark.slow, NODE_TEST_TIMEOUT]
RUN_DIR_PREFIX = "/tmp/awe-node-"
POD_PREFIX = str(POD_CIDR.network_address).rsplit(".", 1)[0] + "."  # "10.213.8."


def processes_of_nodes() -> list[str]:
    """Command lines naming a node run directory (kubelet, containerd, its shims, the forwarder ...)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            except OSError:
                continue
            if RUN_DIR_PREFIX in argv and "pytest" not in argv:
                found.append(f"{d.name}: {argv[:160]}")
    return sorted(found)


def snapshot() -> dict[str, Any]:
    run = hoststate.run
    netns = [p.name for p in hoststate.NETNS_DIR.glob("cni-*")] if hoststate.NETNS_DIR.is_dir() else []
    links = [p.name for p in hoststate.CONTAINER_LOG_LINKS.iterdir()] if hoststate.CONTAINER_LOG_LINKS.is_dir() else []
    return {
        "bridge": run("ip", "link", "show", BRIDGE, check=False).returncode == 0,
        "rule": run("ip", "rule", "list", "priority", str(RULE_PRIORITY), check=False).stdout.strip(),
        "route_table": run("ip", "route", "show", "table", str(ROUTE_TABLE), check=False).stdout.strip(),
        "pod_range_addresses": run("ip", "-o", "addr", "show", "to", str(POD_CIDR), check=False).stdout.strip(),
        "cgroups": [str(d) for d in hoststate.cgroup_dirs(CGROUP_ROOT)],
        "mounts": [m for m in hoststate.mounts_under("/tmp") if m.startswith(RUN_DIR_PREFIX)],
        "netns_on_pod_range": sorted(n for n in netns if f"inet {POD_PREFIX}" in
                                     run("ip", "-n", n, "-o", "-4", "addr", check=False).stdout),
        "processes": processes_of_nodes(),
        "sysctls": {n: hoststate.read_sysctl(n) for n in hoststate.SYSCTLS},
        "machine_dirs": [d for d in hoststate.MACHINE_DIRS if os.path.lexists(d)],
        "log_links": sorted(n for n in links if os.readlink(hoststate.CONTAINER_LOG_LINKS / n).startswith(
            RUN_DIR_PREFIX)),
        "cni_results": sorted(p.name for p in hoststate.CNI_RESULTS.glob(f"{CNI_NETWORK}-*")),
        "kube_iptables": [line for line in run("iptables-save", check=False).stdout.splitlines() if "KUBE-" in line],
        "state_file": (hoststate.STATE_DIR / "state.json").exists(),
    }


def test_clean_stop_and_crashed_run_leave_nothing() -> None:
    if fixtures.shared_node() is not None:
        pytest.fail("the session's node is already running; this test must run before it (conftest ordering)")
    # The machine lock is held for the whole test, so that another session's node can neither be in the
    # snapshots nor sweep this test's crashed node before this test's own start does.
    lock = hoststate.MachineLock(LOCK_TIMEOUT_S)
    lock.acquire()
    try:
        check_clean_stop_and_crash_sweep(lock)
    finally:
        lock.release()


def check_clean_stop_and_crash_sweep(lock: hoststate.MachineLock) -> None:
    # An earlier session's crashed run (its process killed) may have left the machine dirty. Any node's start
    # sweeps it: do that first, so that "before" is the machine as the test's own nodes must leave it.
    sweeper = NodeCluster(lock=lock)
    sweeper.sweep_leftovers()
    if sweeper.sweep_notes:
        print(f"swept an earlier crashed run first: {sweeper.sweep_notes}")
    before = snapshot()

    # A clean run: start, a Pod, stop.
    node = NodeCluster(lock=lock)
    try:
        node.start()
        node.kubectl("apply", "-f", "-", input=json.dumps(pause_pod("pause")))
        node.kubectl("wait", "--for=condition=Ready", "pod/pause", "--timeout=120s")
        during = snapshot()
    finally:
        node.stop()
    assert during["bridge"] and during["rule"] and during["cgroups"] and during["netns_on_pod_range"], during
    assert during["processes"] and during["mounts"], during
    changed = {k for k, v in during["sysctls"].items() if v != before["sysctls"][k]}
    after = snapshot()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    print(f"clean run: kubelet changed sysctls {sorted(changed)}; timings {node.timings}; "
          f"teardown {node.teardown_notes}")

    # A crashed run: SIGKILL the process that owns the node while its Pod runs.
    child = subprocess.Popen([sys.executable, "-m", "tests.node.harness", "up", "--pause-pod",
                              "--lock-held-by-parent"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline and '"ready"' not in line:
            line = child.stdout.readline()
            if not line and child.poll() is not None:
                break
        assert '"ready"' in line, f"the child node did not come up (exit {child.poll()})"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    run_dir = json.loads(line)["run_dir"]
    crashed = snapshot()
    assert crashed["state_file"] and crashed["bridge"] and crashed["processes"], crashed  # shims outlive it

    # The next start puts the machine back first; its own stop then leaves it as it was before the test.
    node = NodeCluster(lock=lock)
    try:
        node.start()
        notes = " | ".join(node.sweep_notes)
        assert "killed shims" in notes and "netns" in notes, node.sweep_notes
        now = snapshot()
        assert not [p for p in now["processes"] if run_dir in p], now["processes"]
        assert not [m for m in now["mounts"] if m.startswith(run_dir)], now["mounts"]
        assert not Path(run_dir).exists()
    finally:
        node.stop()
    after = snapshot()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    print(f"crashed run swept: {node.sweep_notes}")
