"""pytest fixtures of the monitoring layer (import with ``from tests.monitoring.fixtures import *``).

* ``monitoring_build``: what tests/monitoring/install.sh built; missing, the test skips with the reason, or
  fails under ``AWE_REQUIRE_MONITORING=1`` (CI), so a broken install cannot turn these tests into skips.
* ``helm_bin``: tests/helm/install.sh's helm, under the same rule with ``AWE_REQUIRE_HELM`` (tests/chart.py).
* ``Helm``: ``helm install/upgrade/uninstall`` of the project's chart against a test cluster's kubeconfig, each
  bounded in time, in a HOME of its own (helm writes its cache and config there, never in the user's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart import require_helm
from tests.helpers import unavailable
from tests.monitoring.build import REQUIRE_ENV, MonitoringBuild, MonitoringUnavailable

__all__ = ["CHART", "Helm", "HelmResult", "helm_bin", "monitoring_build"]

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "deploy" / "helm" / "admission-webhook-exporter"
HELM_TIMEOUT_S = 300  # one helm install/upgrade/uninstall, --wait included


@pytest.fixture(scope="session")
def monitoring_build() -> MonitoringBuild:
    try:
        return MonitoringBuild.load()
    except MonitoringUnavailable as e:
        unavailable("prometheus-operator build", e.reason, REQUIRE_ENV)


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """tests/helm/install.sh's helm (tests/chart.py finds it; skip or, with AWE_REQUIRE_HELM=1, fail)."""
    return require_helm()


@dataclass(frozen=True)
class HelmResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> HelmResult:
        assert self.returncode == 0, f"{' '.join(self.argv)} exited {self.returncode}:\n{self.stderr}\n{self.stdout}"
        return self


class Helm:
    """The project's chart against one cluster: every call a fresh helm process, bounded by HELM_TIMEOUT_S."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.home = Path(tempfile.mkdtemp(prefix="awe-helm-home-"))

    def run(self, *args: str, timeout_s: float = HELM_TIMEOUT_S) -> HelmResult:
        argv = [str(self.binary), *args, "--kubeconfig", str(self.kubeconfig)]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # the apiserver is local
        env.update(HOME=str(self.home), XDG_CACHE_HOME=str(self.home / "cache"),
                   XDG_CONFIG_HOME=str(self.home / "config"), XDG_DATA_HOME=str(self.home / "data"))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
        return HelmResult(argv, done.returncode, done.stdout, done.stderr)

    def install(self, release: str, *sets: str, namespace: str = "monitoring", chart: Path = CHART,
                wait: bool = False) -> HelmResult:
        args = ["install", release, str(chart), "--namespace", namespace]
        for s in sets:
            args += ["--set", s]
        if wait:
            args += ["--wait", "--timeout", f"{HELM_TIMEOUT_S - 30}s"]
        return self.run(*args)

    def upgrade(self, release: str, *sets: str, namespace: str = "monitoring", chart: Path = CHART,
                wait: bool = False, reuse_values: bool = False) -> HelmResult:
        args = ["upgrade", release, str(chart), "--namespace", namespace]
        if reuse_values:
            args.append("--reuse-values")
        for s in sets:
            args += ["--set", s]
        if wait:
            args += ["--wait", "--timeout", f"{HELM_TIMEOUT_S - 30}s"]
        return self.run(*args)

    def uninstall(self, release: str, namespace: str = "monitoring") -> HelmResult:
        return self.run("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def make_helm(helm_bin: Path) -> Iterator[list[Helm]]:
    made: list[Helm] = []
    yield made
    for h in made:
        h.close()
