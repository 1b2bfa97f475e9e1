"""prometheus-operator turns the chart's ServiceMonitor and PrometheusRule into configuration, or ignores them.

The real operator (built from the Go module proxy by tests/monitoring/install.sh) runs as a process on this
machine against a private kube-apiserver, watching kube-prometheus-stack's default ``Prometheus`` resource
(tests/monitoring/fixtures/). No node is needed: the operator writes the configuration it generates into the
``prometheus-kube-prometheus-stack-prometheus`` Secret and the rule files into ConfigMaps before any Pod
runs, and those are what these tests read. tests/monitoring/test_kube_prometheus_stack.py runs the same
configuration in Prometheus and Alertmanager Pods on a real node.

* The chart installed with the documented ``--set serviceMonitor.additionalLabels.release=kube-prometheus-stack``:
  the operator generates a scrape job for the exporter's Service with ``honor_labels: true`` and the fixed
  ``job`` label, and one rule file holding every group of the chart's PrometheusRule; Debian's promtool (the
  Prometheus the Pods run) loads those rule files.
* Installed with a wrong release label: the operator generates neither, while it does pick up a ServiceMonitor
  and a PrometheusRule created after it with the right label (so "absent" is not "not yet"); ``helm install``
  printed the chart's NOTES.txt, which names the label the ServiceMonitor carries.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.fixtures import REQUIRE_ENV as CONTROL_PLANE_REQUIRE_ENV
from tests.controlplane.fixtures import api_client_for
from tests.controlplane.harness import ControlPlane, ControlPlaneUnavailable
from tests.helpers import unavailable
from tests.monitoring.build import MonitoringBuild
from tests.monitoring.fixtures import Helm, helm_bin, monitoring_build
from tests.monitoring.kps import NAMESPACE, RELEASE, Stack, eventually

__all__ = ["helm_bin", "monitoring_build"]  # fixtures used by this module

GENERATED_WITHIN_S = 60.0  # the operator reconciles at once on every watch event; measured ~2 s


@pytest.fixture(scope="module")
def operator_stack(monitoring_build: MonitoringBuild) -> Iterator[tuple[ControlPlane, Stack]]:
    """A private control plane (the module's tests share it) with the operator's CRDs, the fixture's objects
    and the operator as a process."""
    try:
        cp = ControlPlane().start()
    except ControlPlaneUnavailable as e:
        unavailable("kube-apiserver/etcd", e.reason, CONTROL_PLANE_REQUIRE_ENV)
    api = api_client_for(cp)
    stack = Stack(api, monitoring_build, in_cluster=False, kubeconfig=cp.kubeconfig_path)
    try:
        stack.install(receiver_url="http://awe-alert-receiver.monitoring:8080/")
        yield cp, stack
    finally:
        try:
            stack.close()
        finally:
            api.close()
            cp.stop()


def job_of(config: str | None, service_monitor: str) -> dict[str, Any] | None:
    """The scrape job the operator generated for ServiceMonitor ``monitoring/<service_monitor>``'s endpoint 0."""
    if not config:
        return None
    jobs = yaml.safe_load(config).get("scrape_configs") or []
    return next((j for j in jobs if j["job_name"] == f"serviceMonitor/{NAMESPACE}/{service_monitor}/0"), None)


def groups_in(rules: dict[str, str]) -> list[str]:
    return [g["name"] for text in rules.values() for g in (yaml.safe_load(text) or {}).get("groups") or []]


def wait_generated(stack: Stack, predicate: Callable[[], Any], what: str) -> Any:
    return eventually(predicate, timeout_s=GENERATED_WITHIN_S, what=what, every_s=0.5,
                      describe=lambda: f"jobs {stack.scrape_jobs()}; operator log:\n{stack.operator_log()}")


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_operator_generates_the_scrape_job_and_rule_files(operator_stack: tuple[ControlPlane, Stack],
                                                          helm_bin: Path, tmp_path: Path) -> None:
    cp, stack = operator_stack
    helm = Helm(helm_bin, cp.kubeconfig_path)
    try:
        started = time.monotonic()
        helm.install("admission-webhook-exporter", f"serviceMonitor.additionalLabels.release={RELEASE}").check()
        chart_groups = stack.release_rule_groups("admission-webhook-exporter")
        job = wait_generated(stack, lambda: job_of(stack.generated_config(), "admission-webhook-exporter"),
                             "a scrape job for the exporter's ServiceMonitor")
        rules = wait_generated(
            stack, lambda: (r := stack.generated_rules()) and set(chart_groups) <= set(groups_in(r)) and r,
            "every rule group of the chart's PrometheusRule in a rule file")
        generated_after = time.monotonic() - started
    finally:
        helm.close()

    # honorLabels: the exporter's own `endpoint` label wins over the target label of the same name.
    assert job["honor_labels"] is True, job
    # The job label the alerts and dashboards select on, whatever the release is called: the chart's relabeling
    # comes after the operator's own (job = the Service's name), so it is the one that wins.
    last_job = [r for r in job["relabel_configs"] if r.get("target_label") == "job"][-1]
    assert last_job.get("action") == "replace" and last_job.get("replacement") == "admission-webhook-exporter", \
        job["relabel_configs"]
    # The Service is found by the chart's selector labels, in the release namespace only, by its port name.
    sd = job["kubernetes_sd_configs"][0]
    assert sd["namespaces"]["names"] == [NAMESPACE], sd
    assert any(r.get("regex") == "metrics" for r in job["relabel_configs"]), "port selected by its name `metrics`"
    # One rule group per chart group, each exactly once (no group dropped or duplicated on the way).
    assert sorted(groups_in(rules)) == sorted(chart_groups)

    # Debian's promtool (2.42, the Prometheus the Pods run) loads the operator's rule files.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: run alerts/install-promtool.sh"
    for name, text in rules.items():
        path = tmp_path / name
        path.write_text(text)
        checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                                 timeout=60, check=False)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
    print(f"operator {stack.build.operator_version}: scrape job and {len(chart_groups)} rule groups generated "
          f"{generated_after:.1f}s after helm install")


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_wrong_release_label_is_ignored_and_notes_say_why(operator_stack: tuple[ControlPlane, Stack],
                                                            helm_bin: Path) -> None:
    cp, stack = operator_stack
    helm = Helm(helm_bin, cp.kubeconfig_path)
    try:
        installed = helm.install("awe-wrong", "serviceMonitor.additionalLabels.release=prometheus").check()
        chart_groups = stack.release_rule_groups("awe-wrong")
        # A ServiceMonitor and a PrometheusRule created afterwards with the right label: once the operator has
        # generated them, it has seen the chart's objects too.
        sentinel_labels = {"release": RELEASE}
        stack.apply({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                     "metadata": {"name": "awe-sentinel", "namespace": NAMESPACE, "labels": sentinel_labels},
                     "spec": {"selector": {"matchLabels": {"app": "awe-sentinel"}},
                              "endpoints": [{"port": "metrics"}]}})
        stack.apply({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                     "metadata": {"name": "awe-sentinel", "namespace": NAMESPACE, "labels": sentinel_labels},
                     "spec": {"groups": [{"name": "awe-sentinel",
                                          "rules": [{"record": "awe:sentinel", "expr": "1"}]}]}})
        config = wait_generated(stack, lambda: (c := stack.generated_config()) and job_of(c, "awe-sentinel") and c,
                                "the sentinel ServiceMonitor's job")
        rules = wait_generated(stack, lambda: "awe-sentinel" in groups_in(r := stack.generated_rules()) and r,
                               "the sentinel PrometheusRule's group")
    finally:
        helm.close()

    assert job_of(config, "awe-wrong-admission-webhook-exporter") is None, "selected despite release=prometheus"
    # The operator names each rule file after the PrometheusRule's namespace and name.
    assert chart_groups and not [f for f in rules if f.startswith(f"{NAMESPACE}-awe-wrong-")], sorted(rules)
    # What the user saw: NOTES.txt says which label the ServiceMonitor carries and what selects it.
    notes = installed.stdout
    assert "NOTES:" in notes, notes
    assert "release=prometheus" in notes and "serviceMonitorSelector" in notes, notes
