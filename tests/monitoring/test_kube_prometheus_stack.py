"""The path a kube-prometheus-stack user's alert takes, end to end, on a real node (issue 11, tests 1-5).

The node (tests/node) runs kube-prometheus-stack's machinery as its chart renders it by default
(tests/monitoring/fixtures/, chart 77.0.0, operator v0.85.0): the operator as a Pod, Prometheus and
Alertmanager as the StatefulSet Pods it creates from Debian's packages, and the test's alert receiver as a
Pod. The project's chart is installed with ``helm`` as the README says. Everything the tests assert is read
from the operator's Prometheus (its HTTP API, on the Pod IP) and from what the receiver Pod was sent.

One stack per module (it costs ~1 min to come up); the tests share it in order and each leaves it as found.
Durations: kube-prometheus-stack's defaults (30 s scrape and evaluation interval, Alertmanager route of the
fixture) except where a test says otherwise through the chart's own values.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.fixtures import api_client_for
from tests.e2e.prometheus import PrometheusApi
from tests.monitoring.build import MonitoringBuild
from tests.monitoring.fixtures import Helm, helm_bin, monitoring_build
from tests.monitoring.kps import NAMESPACE, RELEASE, Stack, eventually, render
from tests.monitoring.receiver import Receiver

__all__ = ["helm_bin", "monitoring_build"]

node_fixtures = pytest.importorskip("tests.node.fixtures", reason="the node layer (tests/node) is not here yet")
node_cluster = node_fixtures.node_cluster
node_image = node_fixtures.node_image

REPO = Path(__file__).resolve().parent.parent.parent
EXPORTER_RELEASE = "admission-webhook-exporter"  # the README's `helm install admission-webhook-exporter ...`
EXPORTER_JOB = "admission-webhook-exporter"
HOOKS_NS = "awe-mon-hooks"  # the webhook backends and the only namespace their webhooks intercept
APISERVER_ADDRESS, APISERVER_PORT = "10.0.0.1", 443  # where Pods reach the apiserver (tests/node)
SCRAPE_S = 30.0  # kube-prometheus-stack's default scrape and evaluation interval (the chart's too)
SHORT_FOR = "20s"  # `for:` of the alerts under test, set through the chart's values (prometheusRule.config)
WITHIN_S = 240.0  # a few scrape + evaluation intervals, + for:, + Alertmanager's group_wait; generous


@dataclass
class Env:
    """The running stack and what the tests share."""

    node: Any
    stack: Stack
    prom: PrometheusApi
    receiver: Receiver
    helm: Helm
    build: MonitoringBuild
    figures: dict[str, float] = field(default_factory=dict)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl(*args, check=check)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(node_cluster: Any, node_image: Any, monitoring_build: MonitoringBuild, helm_bin: Path) -> Iterator[Env]:
    t0 = time.monotonic()
    node = node_cluster
    node.load_image(monitoring_build.archive)
    node_image("admission-webhook-exporter")  # the project's image, as tests/image/build.sh tags it
    api = api_client_for(node.cp)
    stack = Stack(api, monitoring_build, in_cluster=True)
    helm = Helm(helm_bin, node.kubeconfig_path)
    try:
        stack.install_crds()
        stack.ensure_namespace()
        stack.ensure_namespace(HOOKS_NS)
        receiver = Receiver(stack, monitoring_build.receiver_image).start()
        stack.publish_apiserver_endpoints(APISERVER_ADDRESS, APISERVER_PORT)
        for obj in render(monitoring_build, receiver.url):
            stack.apply(obj)
        prom, _ = stack.wait_ready()
        e = Env(node, stack, prom, receiver, helm, monitoring_build)
        e.figures["stack ready (s)"] = time.monotonic() - t0
        yield e
    finally:
        helm.uninstall(EXPORTER_RELEASE)
        helm.close()
        stack.close()
        with contextlib.suppress(Exception):
            node.kubectl("delete", "namespace", HOOKS_NS, "--wait=false", check=False)
        api.close()


# ---------------------------------------------------------------------------------------------- helpers


def targets(prom: PrometheusApi, job: str) -> list[dict[str, Any]]:
    return [t for t in prom.targets() if t["labels"].get("job") == job]


def up_targets(prom: PrometheusApi, job: str) -> list[dict[str, Any]]:
    return [t for t in targets(prom, job) if t.get("health") == "up"]


def chart_rule_groups(stack: Stack, release: str = EXPORTER_RELEASE) -> list[str]:
    """The group names of the PrometheusRule the chart created (read from the cluster, as helm applied it)."""
    api = stack.dynamic.resources.get(api_version="monitoring.coreos.com/v1", kind="PrometheusRule")
    rules = [r for r in api.get(namespace=NAMESPACE).to_dict()["items"]
             if r["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == release]
    assert len(rules) == 1, [r["metadata"]["name"] for r in rules]
    return [g["name"] for g in rules[0]["spec"]["groups"]]


def loaded_groups(prom: PrometheusApi) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in prom.rule_groups()}


def firing(prom: PrometheusApi, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"].get("alertname") == alertname and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())]


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_1_installed_as_the_readme_says_the_exporter_is_scraped_and_its_rules_load(env: Env) -> None:
    t0 = time.monotonic()
    env.figures["helm install at (s)"] = t0
    env.helm.install(EXPORTER_RELEASE, f"serviceMonitor.additionalLabels.release={RELEASE}", wait=True).check()
    env.figures["helm install --wait (s)"] = time.monotonic() - t0

    up = eventually(lambda: up_targets(env.prom, EXPORTER_JOB), timeout_s=WITHIN_S, every_s=2.0,
                    what=f'an UP target with job="{EXPORTER_JOB}"',
                    describe=lambda: f"targets: {[(t['labels'], t.get('lastError')) for t in env.prom.targets()]}")
    env.figures["target up after install (s)"] = time.monotonic() - t0
    [target] = up
    # Through the Service's endpoints, by port name: the operator's target labels.
    assert target["labels"]["namespace"] == NAMESPACE and target["labels"]["endpoint"] == "metrics", target
    assert target["labels"]["service"] == EXPORTER_RELEASE, target
    assert target["scrapePool"] == f"serviceMonitor/{NAMESPACE}/{EXPORTER_RELEASE}/0", target

    # Every group of the chart's PrometheusRule is loaded, has been evaluated, and no rule has an error.
    groups = chart_rule_groups(env.stack)

    def evaluated() -> dict[str, dict[str, Any]] | None:
        loaded = loaded_groups(env.prom)
        ours = {name: loaded[name] for name in groups if name in loaded}
        if len(ours) < len(groups):
            return None
        return ours if all(r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001")
                           for g in ours.values() for r in g["rules"]) else None

    ours = eventually(evaluated, timeout_s=WITHIN_S, every_s=2.0, what="every chart rule group loaded and evaluated",
                      describe=lambda: f"loaded: {sorted(loaded_groups(env.prom))}; chart: {groups}")
    broken = [(g, r["name"], r.get("health"), r.get("lastError")) for g, grp in ours.items() for r in grp["rules"]
              if r.get("health") != "ok" or r.get("lastError")]
    assert not broken, broken
    print(f"exporter target UP {env.figures['target up after install (s)']:.0f}s after helm install; "
          f"{len(groups)} rule groups, {sum(len(g['rules']) for g in ours.values())} rules loaded, no error")
