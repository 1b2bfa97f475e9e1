"""The install path for real (issue 10, test 1): the README's ``helm install`` and ``kubectl apply -k`` on the
test node, with the image built here (tests/image/build.sh, tagged as the chart's default image).

Each install must give a Ready Pod whose process runs as 65532 on a read-only root filesystem, in a
namespace that enforces Pod Security ``restricted``; its /metrics, reached through its Service, must show
every webhook of the cluster; an upgrade must roll out; the uninstall must leave nothing behind.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.pki import CertificateAuthority

from . import chart
from .chart import NAMESPACE, RELEASE, RESTRICTED, SELECTOR
from .fixtures import NODE_TEST_TIMEOUT
from .harness import NodeCluster, eventually
from .workloads import Backend, as_list, namespace, webhook_configuration

pytestmark = [pytest.mark.node, pytest.mark.slow, NODE_TEST_TIMEOUT]


@pytest.fixture
def webhooks(node_cluster: NodeCluster, exporter_image: str) -> Iterator[set[tuple[str, str, str]]]:
    """Two webhook configurations (validating with a Service backend, mutating with a URL) that gate nothing
    the test needs: (configuration, name, type) of every webhook in the cluster."""
    tag = uuid.uuid4().hex[:6]
    ns = f"hooks-{tag}"
    backend = Backend("guard", ns, exporter_image, CertificateAuthority.create("install test CA"), replicas=1)
    validating = webhook_configuration(f"install-{tag}", "pods.install.test", backend, failure_policy="Ignore",
                                       resources=("configmaps",),
                                       namespace_selector={"matchLabels": {"gated": tag}})
    mutating: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": f"install-url-{tag}"},
        "webhooks": [{"name": "url.install.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Ignore", "timeoutSeconds": 2,
                      "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
                      "namespaceSelector": {"matchLabels": {"gated": tag}},
                      "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["secrets"]}]}]}
    node_cluster.kubectl("apply", "-f", "-", input=json.dumps(as_list([namespace(ns)])))
    node_cluster.wait_namespace_usable(ns)
    node_cluster.kubectl("apply", "-f", "-", input=json.dumps(as_list([*backend.objects(), validating, mutating])))
    try:
        yield {(f"install-{tag}", "pods.install.test", "validating"),
               (f"install-url-{tag}", "url.install.test", "admit")}
    finally:
        node_cluster.kubectl("delete", "validatingwebhookconfiguration", f"install-{tag}", "--ignore-not-found")
        node_cluster.kubectl("delete", "mutatingwebhookconfiguration", f"install-url-{tag}", "--ignore-not-found")
        chart.delete_namespace(node_cluster, ns)


@pytest.fixture
def monitoring(node_cluster: NodeCluster) -> Iterator[str]:
    """The README's namespace, enforcing Pod Security restricted."""
    chart.create_namespace(node_cluster, NAMESPACE, RESTRICTED)
    try:
        yield NAMESPACE
    finally:
        chart.delete_namespace(node_cluster, NAMESPACE)


def cluster_webhooks(node: NodeCluster) -> set[tuple[str, str, str]]:
    found = set()
    for kind, type_ in (("validatingwebhookconfigurations", "validating"), ("mutatingwebhookconfigurations", "admit")):
        for config in json.loads(node.kubectl("get", kind, "-o", "json").stdout)["items"]:
            found |= {(config["metadata"]["name"], hook["name"], type_) for hook in config.get("webhooks") or []}
    return found


def check_running_exporter(node: NodeCluster, expected_hooks: set[tuple[str, str, str]]) -> dict[str, float]:
    """The checks both install paths share; returns figures (seconds) for the record."""
    t0 = time.monotonic()
    (pod,) = chart.wait_ready_pods(node, NAMESPACE)
    figures = {"ready_s": time.monotonic() - t0}
    # The kernel's view of the container's main process, not only the spec's.
    uids, gids, root_options = chart.process_identity(chart.container_pid(node, pod))
    assert set(uids) == {65532} and set(gids) == {65532}, (uids, gids)
    assert root_options.split(",")[0] == "ro", f"root filesystem mounted {root_options}"
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532

    # Pod Security admission is on and enforces restricted here: a root, privileged Pod is refused.
    rogue = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rogue", "namespace": NAMESPACE},
             "spec": {"containers": [{"name": "c", "image": chart.chart_image(),
                                      "securityContext": {"privileged": True, "runAsUser": 0}}]}}
    refused = node.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(rogue), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    # Every webhook of the cluster, as the exporter in the Pod reports it through its Service.
    assert expected_hooks <= cluster_webhooks(node)

    def reported() -> set[tuple[str, str, str]] | None:
        samples = chart.find(chart.scrape(node), "admission_webhook_info")
        hooks = {(s.labels["configuration"], s.labels["name"], s.labels["type"]) for s in samples}
        return hooks if hooks == cluster_webhooks(node) else None

    t1 = time.monotonic()
    eventually(reported, timeout_s=30, what="the exporter's /metrics lists every webhook of the cluster")
    figures["metrics_s"] = time.monotonic() - t1
    return figures


def test_readme_helm_install_upgrade_uninstall(node_cluster: NodeCluster, exporter_image: str,
                                              webhooks: set[tuple[str, str, str]], monitoring: str,
                                              record_property: Callable[[str, object], None]) -> None:
    # A cluster without the prometheus-operator CRDs first (this test runs on a fresh node: conftest.py
    # orders it before anything installs them): the README's command succeeds without the two kinds.
    assert not chart.operator_crds(node_cluster), "the operator CRDs exist already; this test must run first"
    helm_install, _, _ = chart.readme_install_commands()
    done = node_cluster.tool(*shlex.split(helm_install), "--wait", "--timeout", "120s")
    assert "STATUS: deployed" in done.stdout, done.stdout
    assert "SKIPPED: the ServiceMonitor" in done.stdout, done.stdout
    figures = check_running_exporter(node_cluster, webhooks)

    # The CRDs arrive; `helm upgrade --reuse-values` (as the README says) adds both, and rolls the Pod.
    chart.install_operator_crds(node_cluster)
    (before,) = chart.pods(node_cluster, NAMESPACE)
    t0 = time.monotonic()
    node_cluster.tool("helm", "upgrade", RELEASE, str(chart.CHART), "-n", NAMESPACE, "--reuse-values",
                      "--set", "exporter.logLevel=debug", "--wait", "--timeout", "120s")
    (after,) = chart.wait_ready_pods(node_cluster, NAMESPACE)
    figures["upgrade_s"] = time.monotonic() - t0
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert "--log-level=debug" in after["spec"]["containers"][0]["args"]
    for kind in chart.OPERATOR_KINDS:
        node_cluster.kubectl("-n", NAMESPACE, "get", kind, RELEASE)

    node_cluster.tool("helm", "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    figures["uninstall_s"] = chart.wait_nothing_left(node_cluster)
    record_property("figures", figures)
    print(f"helm path: {figures}")


def test_readme_kubectl_apply_k(node_cluster: NodeCluster, exporter_image: str,
                                webhooks: set[tuple[str, str, str]], monitoring: str,
                                record_property: Callable[[str, object], None]) -> None:
    _, apply, _ = chart.readme_install_commands()
    chart.install_operator_crds(node_cluster)  # deploy/manifests holds a ServiceMonitor and a PrometheusRule
    node_cluster.tool(*shlex.split(apply))
    figures = check_running_exporter(node_cluster, webhooks)
    # Applying again is a no-op for the running Pod (nothing in the template changed).
    (before,) = chart.pods(node_cluster, NAMESPACE)
    node_cluster.tool(*shlex.split(apply))
    (after,) = chart.wait_ready_pods(node_cluster, NAMESPACE)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]

    node_cluster.tool(*shlex.split(apply.replace(" apply ", " delete ", 1)), "--wait=true")
    figures["uninstall_s"] = chart.wait_nothing_left(node_cluster)
    assert not chart.pods(node_cluster, NAMESPACE, SELECTOR)
    record_property("figures", figures)
    print(f"kubectl -k path: {figures}")
