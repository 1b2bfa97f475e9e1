"""Running `helm` on deploy/helm/admission-webhook-exporter, and the Kubernetes API calls its tests make.

helm is the one tests/helm/install.sh builds from the Go module proxy ($HELM, the test cache, or PATH). Without it
the chart tests skip and say why, unless AWE_REQUIRE_HELM=1 (CI), where a missing helm fails them:
``require_helm()`` decides, each module's ``helm`` fixture calls it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.harness import cache_dir

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "admission-webhook-exporter"
ALERT_RULES = sorted((REPO / "alerts" / "rules").glob("*.yaml"))
RELEASE, NAMESPACE = "admission-webhook-exporter", "monitoring"  # what deploy/manifests is rendered with
# What a cluster with the prometheus-operator CRDs serves (and `helm template` must be told).
OPERATOR_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
CRDS = REPO / "tests" / "fixtures" / "crds"  # prometheus-operator's ServiceMonitor and PrometheusRule CRDs
REQUIRE_HELM = "AWE_REQUIRE_HELM"
HELM_TIMEOUT = 120  # seconds for one helm or generator run (each takes well under a second or two)
API_DEADLINE = 30.0  # seconds for the apiserver to establish a CRD or serve a new kind
FIELD_MANAGER = "awe-test-deploy"


def find_helm() -> Path | None:
    for candidate in (os.environ.get("HELM"), str(cache_dir() / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def require_helm() -> Path:
    found = find_helm()
    if found is None:
        reason = f"helm not found in $HELM, {cache_dir() / 'bin'} or PATH: run tests/helm/install.sh"
        if os.environ.get(REQUIRE_HELM) == "1":
            pytest.fail(f"{reason} ({REQUIRE_HELM}=1)", pytrace=False)
        pytest.skip(reason)
    return found


def run(argv: list[str | Path], cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded by HELM_TIMEOUT); the caller checks returncode."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=HELM_TIMEOUT,
                          check=False, cwd=cwd, env={**os.environ, **env})


def template_argv(helm: Path, *sets: str, chart: Path = CHART, release: str = RELEASE, namespace: str = NAMESPACE,
                  api_versions: tuple[str, ...] = OPERATOR_APIS) -> list[str | Path]:
    argv: list[str | Path] = [helm, "template", release, chart, "--namespace", namespace]
    for api in api_versions:
        argv += ["--api-versions", api]
    for s in sets:
        argv += ["--set", s]
    return argv


def template(helm: Path, *sets: str, chart: Path = CHART, release: str = RELEASE, namespace: str = NAMESPACE,
             api_versions: tuple[str, ...] = OPERATOR_APIS) -> list[dict[str, Any]]:
    """`helm template` with `--set` arguments, as parsed documents; by default on a cluster with the operator."""
    argv = template_argv(helm, *sets, chart=chart, release=release, namespace=namespace, api_versions=api_versions)
    done = run(argv)
    assert done.returncode == 0, f"{shlex.join(map(str, argv))}:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def template_error(helm: Path, *sets: str, api_versions: tuple[str, ...] = OPERATOR_APIS) -> str:
    """stderr of a `helm template` that must fail."""
    argv = template_argv(helm, *sets, api_versions=api_versions)
    done = run(argv)
    assert done.returncode != 0, f"{shlex.join(map(str, argv))} succeeded"
    return done.stderr


def alert_rule_groups() -> list[dict[str, Any]]:
    """alerts/rules/*.yaml, the rules the promtool tests pin, in file order (the chart's order)."""
    return [g for path in ALERT_RULES for g in yaml.safe_load(path.read_text())["groups"]]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects rendered"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


# --------------------------------------------------------------------------------------------- #
# the Kubernetes API, through the official client's dynamic client (any kind, CRDs included)


def dynamic_client(api: Any, tmp_path: Path) -> Any:
    from kubernetes.dynamic import DynamicClient

    # A private discovery cache: the shared default one in /tmp would remember a control plane of another run.
    return DynamicClient(api, cache_file=str(tmp_path / f"discovery-{uuid.uuid4().hex[:8]}.json"))


def api_resource(dyn: Any, api_version: str, kind: str) -> Any:
    """The API resource of a kind, waiting for a just-established CRD to appear in discovery."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    deadline = time.monotonic() + API_DEADLINE
    while True:
        try:
            return dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            if time.monotonic() > deadline:
                raise
            dyn.resources.invalidate_cache()
            time.sleep(0.2)


def apply(dyn: Any, doc: dict[str, Any], *, dry_run: bool) -> Any:
    """Server-side apply (what `kubectl apply --server-side [--dry-run=server]` sends)."""
    resource = api_resource(dyn, doc["apiVersion"], doc["kind"])
    extra = {"dry_run": "All"} if dry_run else {}
    return dyn.server_side_apply(resource, body=doc, namespace=doc["metadata"].get("namespace"),
                                 field_manager=FIELD_MANAGER, **extra)


def install_crds(dyn: Any) -> None:
    """The vendored ServiceMonitor and PrometheusRule CRDs, applied for real and waited for (idempotent)."""
    crds = api_resource(dyn, "apiextensions.k8s.io/v1", "CustomResourceDefinition")
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        apply(dyn, crd, dry_run=False)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + API_DEADLINE
    for name in names:
        while not any(c["type"] == "Established" and c["status"] == "True"
                      for c in (dyn.get(crds, name=name).to_dict().get("status") or {}).get("conditions") or []):
            assert time.monotonic() < deadline, f"CRD {name} not established within {API_DEADLINE}s"
            time.sleep(0.1)
    dyn.resources.invalidate_cache()


def ensure_namespace(dyn: Any, name: str, labels: dict[str, str] | None = None) -> None:
    apply(dyn, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
          dry_run=False)
