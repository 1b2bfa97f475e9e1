"""The chart with and without the prometheus-operator API, and what its NOTES.txt tells the user.

* `helm template`: the ServiceMonitor and PrometheusRule render only when `--api-versions` names their kinds (a
  cluster with the CRDs), each independently, or when forced; everything else renders either way.
* NOTES.txt, as `helm install` prints it: the labels Prometheus selects on, the exact `kubectl get prometheus`
  command that shows its selectors, the `--set` that fixes a mismatch; and what was skipped and why.
* For real, against a private kube-apiserver of tests/controlplane (no kubelet: the Pods never run, nothing here
  needs them to): `helm install` without the CRDs succeeds without the two and says so; forcing them there fails
  with `no matches for kind` (the failure the guard prevents); once the CRDs from tests/fixtures/crds exist,
  `helm upgrade --reuse-values` creates both, the stored PrometheusRule is alerts/rules/, a `--set` of
  prometheusRule.config reaches it, and `helm uninstall` removes everything.
"""

from __future__ import annotations

import os
import re
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
    dynamic_client,
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
