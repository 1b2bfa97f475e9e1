"""The chart with and without the prometheus-operator API, and what its NOTES.txt tells the user.

* `helm template`: the ServiceMonitor and PrometheusRule render only when `--api-versions` names their kinds (a
  cluster with the CRDs), each independently, or when forced; everything else renders either way.
* For real, against a private kube-apiserver of tests/controlplane (no kubelet: the Pods never run, nothing here
  needs them to): `helm install` without the CRDs succeeds without the two and its notes say what was skipped;
  forcing them there fails with `no matches for kind` (the failure the guard prevents); once the CRDs from
  tests/fixtures/crds exist, `helm upgrade --reuse-values` creates both and the stored PrometheusRule is
  alerts/rules/. The notes `helm upgrade` prints name the labels Prometheus selects on, the exact `kubectl get
  prometheus` command, and, for each Prometheus resource in the cluster (kube-prometheus-stack's defaults for a
  release `kps`, through a schemaless stand-in CRD), whether it selects them and the `--set` that fixes a
  mismatch; after that `--set` they say it does. A `--set` of prometheusRule.config reaches the stored rule, and
  `helm uninstall` removes everything.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart import (
    CHART,
    NAMESPACE,
    OPERATOR_APIS,
    RELEASE,
    alert_rule_groups,
    api_resource,
    apply,
    dynamic_client,
    ensure_namespace,
    install_crds,
    kinds,
    require_helm,
    run,
    template,
)
from tests.controlplane.fixtures import api_client_for
from tests.controlplane.harness import ControlPlane

SERVICE_MONITOR, PROMETHEUS_RULE = OPERATOR_APIS
SELECTOR_COMMAND = (
    "kubectl get prometheus -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}: "
    "serviceMonitorSelector={.spec.serviceMonitorSelector} ruleSelector={.spec.ruleSelector} "
    "serviceMonitorNamespaceSelector={.spec.serviceMonitorNamespaceSelector} "
    'ruleNamespaceSelector={.spec.ruleNamespaceSelector}{"\\n"}{end}\'')


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_helm()


def operator_kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs} & {"ServiceMonitor", "PrometheusRule"}


# --------------------------------------------------------------------------------------------- #
# helm template


def test_operator_objects_render_only_where_their_api_is_served(helm: Path) -> None:
    everything = template(helm)
    assert operator_kinds(everything) == {"ServiceMonitor", "PrometheusRule"}
    bare = template(helm, api_versions=())
    assert operator_kinds(bare) == set()
    assert kinds(bare) == sorted(k for k in kinds(everything) if k not in ("ServiceMonitor", "PrometheusRule"))
    assert operator_kinds(template(helm, api_versions=(SERVICE_MONITOR,))) == {"ServiceMonitor"}
    assert operator_kinds(template(helm, api_versions=(PROMETHEUS_RULE,))) == {"PrometheusRule"}
    # The group/version alone is not enough: a cluster may serve some prometheus-operator kinds and not these.
    assert operator_kinds(template(helm, api_versions=("monitoring.coreos.com/v1",))) == set()


def test_force_renders_them_anyway_and_enabled_false_never(helm: Path) -> None:
    forced = template(helm, "serviceMonitor.force=true", "prometheusRule.force=true", api_versions=())
    assert operator_kinds(forced) == {"ServiceMonitor", "PrometheusRule"}
    assert only_rule_groups(forced) == alert_rule_groups()
    assert operator_kinds(template(helm, "serviceMonitor.force=true", api_versions=())) == {"ServiceMonitor"}
    off = template(helm, "serviceMonitor.enabled=false", "prometheusRule.enabled=false", "serviceMonitor.force=true",
                   "prometheusRule.force=true")
    assert operator_kinds(off) == set()


def only_rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


# --------------------------------------------------------------------------------------------- #
# a real helm install on a real kube-apiserver, without and then with the CRDs


class Helm:
    """helm against one control plane, with private config/cache/data dirs and no proxy (loopback only)."""

    def __init__(self, binary: Path, cp: ControlPlane, home: Path) -> None:
        self.binary, self.kubeconfig = binary, cp.kubeconfig_path
        self.env = {"HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data"), "KUBECACHEDIR": str(home / "kube-cache"),
                    "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": ""}

    def __call__(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args, "--kubeconfig", self.kubeconfig], **self.env)

    def ok(self, *args: str | Path) -> str:
        done = self(*args)
        assert done.returncode == 0, f"helm {shlex.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


# A schemaless stand-in for prometheus-operator's Prometheus CRD (tests/fixtures/crds vendors only the
# ServiceMonitor and PrometheusRule ones): NOTES.txt reads four selector fields of its spec, nothing else.
PROMETHEUS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "prometheuses.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "prometheuses", "singular": "prometheus", "kind": "Prometheus"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def add_prometheus(dyn: Any, name: str, namespace: str, *, release: str, namespace_selectors: bool = True) -> None:
    """A Prometheus resource with kube-prometheus-stack's default selectors for a Helm release `release`."""
    apply(dyn, PROMETHEUS_CRD, dry_run=False)
    ensure_namespace(dyn, namespace)
    spec: dict[str, Any] = {"serviceMonitorSelector": {"matchLabels": {"release": release}},
                            "ruleSelector": {"matchLabels": {"release": release}}}
    if namespace_selectors:
        spec |= {"serviceMonitorNamespaceSelector": {}, "ruleNamespaceSelector": {}}
    apply(dyn, {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}, dry_run=False)


@pytest.mark.controlplane
def test_install_without_the_operator_then_upgrade_once_its_crds_exist(
        helm: Path, make_control_plane: Callable[..., ControlPlane], tmp_path: Path) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    cp = make_control_plane()  # private: its CRDs and releases never meet the shared control plane's tests
    h = Helm(helm, cp, tmp_path / "helm")
    release = ("-n", NAMESPACE)
    with api_client_for(cp) as api:
        dyn = dynamic_client(api, tmp_path)

        def stored(api_version: str, kind: str) -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = dyn.get(api_resource(dyn, api_version, kind), name=RELEASE,
                                                namespace=NAMESPACE).to_dict()
            except NotFoundError:
                return None
            return found

        # 1. No prometheus-operator CRDs: the install succeeds without the two, and its notes say what is missing.
        notes = h.ok("install", RELEASE, CHART, *release, "--create-namespace")
        assert "SKIPPED: the ServiceMonitor" in notes and "SKIPPED: the PrometheusRule" in notes, notes
        assert "Prometheus selection" not in notes
        manifest = h.ok("get", "manifest", RELEASE, *release)
        assert "kind: ServiceMonitor" not in manifest and "kind: PrometheusRule" not in manifest
        assert stored("apps/v1", "Deployment") is not None, "the exporter itself is installed"

        # The failure the guard prevents: forced, the same chart is refused by this cluster.
        forced = h("install", "awe-forced", CHART, *release, "--set", "serviceMonitor.force=true",
                   "--dry-run=server")
        assert forced.returncode != 0 and 'no matches for kind "ServiceMonitor"' in forced.stderr, forced.stderr

        # 2. The CRDs arrive with a kube-prometheus-stack released as `kps` (its Prometheus selects release=kps):
        # an upgrade with the same values adds both, and the notes say this Prometheus will not select them.
        install_crds(dyn)
        add_prometheus(dyn, "kps-prometheus", NAMESPACE, release="kps")
        add_prometheus(dyn, "elsewhere", "other", release="kube-prometheus-stack", namespace_selectors=False)
        notes = h.ok("upgrade", RELEASE, CHART, *release, "--reuse-values")
        assert "SKIPPED" not in notes, notes
        assert f"ServiceMonitor {RELEASE}: release=kube-prometheus-stack" in notes, notes
        assert SELECTOR_COMMAND in notes, notes
        for kind in ("ServiceMonitor", "PrometheusRule"):
            assert f"MISMATCH: monitoring/kps-prometheus selects {kind}s labelled release=kps and this one is not: " \
                   "add --set serviceMonitor.additionalLabels.release=kps" in notes, notes
            assert f"other/elsewhere selects this {kind} by its labels." in notes, notes
        assert "MISMATCH: other/elsewhere has no serviceMonitorNamespaceSelector, so it looks in other only, and " \
               "this ServiceMonitor is in monitoring." in notes, notes
        monitor, rule = stored("monitoring.coreos.com/v1", "ServiceMonitor"), stored(
            "monitoring.coreos.com/v1", "PrometheusRule")
        assert monitor is not None and rule is not None
        assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"] == \
            "kube-prometheus-stack"
        # What the apiserver stored (validated against the CRD's schema) is still exactly alerts/rules/.
        assert rule["spec"]["groups"] == alert_rule_groups()

        # 3. The fix the notes gave, and a shorter for: through the chart's values (as branch `monitoring` does).
        notes = h.ok("upgrade", RELEASE, CHART, *release, "--reuse-values", "--set",
                     "prometheusRule.config.endpointsFor=30s", "--set", "serviceMonitor.additionalLabels.release=kps")
        for kind in ("ServiceMonitor", "PrometheusRule"):
            assert f"monitoring/kps-prometheus selects this {kind} by its labels." in notes, notes
        rule = stored("monitoring.coreos.com/v1", "PrometheusRule")
        assert rule is not None and rule["metadata"]["labels"]["release"] == "kps"
        fors = {(r["alert"], r["for"]) for g in rule["spec"]["groups"] for r in g["rules"]
                if r.get("alert") == "AdmissionWebhookNoReadyEndpoints"}
        assert fors == {("AdmissionWebhookNoReadyEndpoints", "30s")}

        # 4. Uninstall leaves none of the chart's objects.
        h.ok("uninstall", RELEASE, *release, "--wait", "--timeout", "60s")
        for api_version, kind in (("apps/v1", "Deployment"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
                                  ("monitoring.coreos.com/v1", "PrometheusRule"), ("v1", "Service")):
            assert stored(api_version, kind) is None, kind
