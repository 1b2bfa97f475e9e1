"""Webhook outages with real Pods (issue 10, tests 2-4): the exporter runs in its Pod (the README's helm install,
the image built here), the webhook backends are Deployments, and what breaks is what breaks in a cluster.

2. A backend Deployment scaled to zero and back, and one of its Pods deleted: what the exporter in the Pod
   reports, and how soon after the EndpointSlice change (measured between the test's watch and the
   exporter's own inventory timestamp: two receivers of the same apiserver event).
3. The policy-engine deadlock: a Fail webhook on every namespace's Pods loses its backend; the ReplicaSet
   cannot recreate it. Everything the project offers is exercised on it: the metric, the audit, the alert
   (promtool on the scraped series), `explain` on the event, the runbook's break-glass steps as written, and
   the audit's fix (after which the same outage heals by itself).
4. The exporter must survive the outage it reports: excluded as the README says, its Pod comes back during
   the outage; without the exclusion it does not, and the audit (`fail_policy_gates_exporter`: the CLI with
   `--exporter-namespace`, and the exporter's own metric) says so beforehand.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.audit import GATES_EXPORTER
from exporter.pki import CertificateAuthority

from . import chart, observe
from .chart import NAMESPACE, RESTRICTED, Sample
from .docs import code_blocks
from .fixtures import NODE_TEST_TIMEOUT
from .harness import REPO_ROOT, NodeCluster, NodeError, eventually
from .workloads import BACKEND_PORT, Backend, as_list, namespace, webhook_configuration

pytestmark = [pytest.mark.node, pytest.mark.slow, NODE_TEST_TIMEOUT]

RUNBOOK = REPO_ROOT / "docs" / "runbooks" / "AdmissionWebhookNoReadyEndpoints.md"
KIND = "validatingwebhookconfiguration"
#: the issue's bound: the exporter reports no_endpoints within 2 s of the EndpointSlice change
NO_ENDPOINTS_WITHIN_S = 2.0
#: a ReplicaSet retries failed creates with exponential backoff (5 ms doubling): after a minute of failures
#: the next retry can be a minute away, so recovery after the break-glass is bounded generously
RECOVERY_TIMEOUT_S = 240.0


def tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def exporter(node_cluster: NodeCluster, exporter_image: str) -> Iterator[str]:
    """The exporter, installed with the README's helm command into ``monitoring`` (Pod Security restricted)."""
    chart.install_operator_crds(node_cluster)
    chart.create_namespace(node_cluster, NAMESPACE, RESTRICTED)
    helm_install, _, _ = chart.readme_install_commands()
    node_cluster.tool(*shlex.split(helm_install), "--wait", "--timeout", "120s")
    chart.wait_ready_pods(node_cluster, NAMESPACE)
    try:
        yield NAMESPACE
    finally:
        node_cluster.tool("helm", "uninstall", chart.RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s",
                          check=False)
        chart.delete_namespace(node_cluster, NAMESPACE)


def apply(node: NodeCluster, objects: list[dict[str, Any]]) -> None:
    node.kubectl("apply", "-f", "-", input=json.dumps(as_list(objects)))


def new_namespace(node: NodeCluster, name: str) -> None:
    apply(node, [namespace(name)])
    node.wait_namespace_usable(name)


def hook_labels(config: dict[str, Any]) -> dict[str, str]:
    return {"configuration": config["metadata"]["name"], "name": config["webhooks"][0]["name"], "type": "validating"}


def value(samples: list[Sample], metric: str, /, **labels: str) -> float | None:
    found = chart.find(samples, metric, **labels)
    return found[0].value if len(found) == 1 else None


def reasons(samples: list[Sample], **labels: str) -> set[str]:
    return {s.labels["reason"] for s in chart.find(samples, "admission_webhook_probe_failure_info", **labels)
            if s.value == 1}


def healthy(node: NodeCluster, hook: dict[str, str], ips: set[str]) -> list[Sample] | None:
    """The exporter sees exactly these backend Pods ready and every probe of them passing."""
    samples = chart.scrape(node)
    ok = {s.labels["endpoint"] for s in chart.find(samples, "admission_webhook_probe_success", **hook) if s.value == 1}
    if value(samples, "admission_webhook_endpoints_ready", **hook) == len(ips) and ok == {
            f"{ip}:{BACKEND_PORT}" for ip in ips}:
        return samples
    return None


def wait_healthy(node: NodeCluster, hook: dict[str, str], backend: Backend, count: int,
                 timeout_s: float = 60.0) -> list[Sample]:
    ips = {p["status"]["podIP"] for p in chart.wait_ready_pods(node, backend.namespace, backend.label_selector, count,
                                                                timeout_s=timeout_s)}
    return eventually(lambda: healthy(node, hook, ips), timeout_s=timeout_s,
                      what=f"the exporter reports {hook['name']} healthy on {sorted(ips)}")


def no_endpoints(node: NodeCluster, hook: dict[str, str]) -> list[Sample] | None:
    samples = chart.scrape(node)
    ready = value(samples, "admission_webhook_endpoints_ready", **hook)
    if ready == 0 and reasons(samples, **hook) == {"no_endpoints"}:
        return samples
    return None


def kill_backend(node: NodeCluster, backend: Backend) -> list[str]:
    """SIGKILL every backend process, then force-delete their Pods at once. Deleting alone does not deadlock
    reliably: a replacement's create can reach a still-running old Pod through a not-yet-updated endpoint
    list, be admitted, and heal the rest (shared/reference/controlplane/node/README.md)."""
    victims = chart.pods(node, backend.namespace, backend.label_selector)
    for pod in victims:
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        node.ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    names = [p["metadata"]["name"] for p in victims]
    node.kubectl("-n", backend.namespace, "delete", "pod", *names, "--grace-period=0", "--force", "--wait=false")
    return names


def failed_creates(node: NodeCluster, ns: str) -> list[str]:
    return [e.get("message", "") for e in observe.events(node, ns, "FailedCreate")]


def cli(*args: str, node: NodeCluster, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """admission-webhook-exporter, as a person runs it on the host, against the node's cluster."""
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=120,
                          input=stdin, env=node.tool_env(), cwd=REPO_ROOT, check=False)


def audit(node: NodeCluster, *flags: str) -> list[dict[str, Any]]:
    done = cli("audit", "--kubeconfig", str(node.kubeconfig_path), "--output", "json", "--fail-on", "never", *flags,
               node=node)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["findings"])


# --------------------------------------------------------------------------------------------- #
# 2. backends as real Pods


def test_backend_pods_scaled_to_zero_and_back(node_cluster: NodeCluster, exporter: str, exporter_image: str,
                                              record_property: Callable[[str, object], None]) -> None:
    node, t = node_cluster, tag()
    ns = f"backend-{t}"
    backend = Backend("hook", ns, exporter_image, CertificateAuthority.create("backend test CA"), replicas=2)
    config = webhook_configuration(f"backend-{t}", "configmaps.backend.test", backend, failure_policy="Ignore",
                                   resources=("configmaps",), namespace_selector={"matchLabels": {"gated": t}})
    hook = hook_labels(config)
    figures: dict[str, float] = {}
    new_namespace(node, ns)
    try:
        apply(node, [*backend.objects(), config])
        wait_healthy(node, hook, backend, 2)

        # Scale to zero: the exporter's verdict, and its delay after the EndpointSlice change.
        with observe.SliceWatch(node, ns, backend.name) as watch:
            t0 = time.time()
            node.kubectl("-n", ns, "scale", f"deployment/{backend.name}", "--replicas=0")
            samples = eventually(lambda: no_endpoints(node, hook), timeout_s=30, every_s=0.1,
                                 what="the exporter reports no_endpoints")
            seen = time.time()
        assert watch.error is None, watch.error
        change = watch.first(ready=0, after=t0)
        assert change is not None, watch.events
        adopted = value(samples, "admission_webhook_exporter_inventory_last_load_timestamp_seconds")
        assert adopted is not None
        figures["no_endpoints_after_slice_change_s"] = adopted - change.at
        figures["no_endpoints_scrape_after_slice_change_s"] = seen - change.at
        assert adopted - change.at < NO_ENDPOINTS_WITHIN_S, figures

        # Scale back: healthy again, on the new Pods.
        t1 = time.monotonic()
        node.kubectl("-n", ns, "scale", f"deployment/{backend.name}", "--replicas=2")
        wait_healthy(node, hook, backend, 2)
        figures["healthy_after_scale_up_s"] = time.monotonic() - t1

        # One Pod deleted: the ready count dips to 1 and comes back to 2 on a new Pod.
        (victim, *_) = chart.pods(node, ns, backend.label_selector)
        observed: list[float] = []

        def dipped_and_recovered() -> bool:
            ready = value(chart.scrape(node), "admission_webhook_endpoints_ready", **hook)
            if ready is not None and (not observed or observed[-1] != ready):
                observed.append(ready)
            return 1 in observed and observed[-1] == 2

        node.kubectl("-n", ns, "delete", "pod", victim["metadata"]["name"], "--wait=false")
        eventually(dipped_and_recovered, timeout_s=60, every_s=0.1, what="endpoints_ready dips to 1 and recovers",
                   on_timeout=lambda: f"observed {observed}")
        samples = wait_healthy(node, hook, backend, 2)
        assert f"{victim['status']['podIP']}:{BACKEND_PORT}" not in {
            s.labels["endpoint"] for s in chart.find(samples, "admission_webhook_probe_success", **hook)}
        record_property("figures", figures)
        print(f"backend figures: {figures}; endpoints_ready observed {observed}")
    finally:
        node.kubectl("delete", KIND, config["metadata"]["name"], "--ignore-not-found")
        chart.delete_namespace(node, ns)


# --------------------------------------------------------------------------------------------- #
# 3. the policy-engine deadlock


def break_glass(config: str, webhook: str) -> tuple[str, str, str]:
    """The runbook's break-glass blocks, copied from the file as written, placeholders filled in from the
    alert's labels (KIND, CONFIG, NAME): the backup, step 1's switch to Ignore (its alternative, deleting the
    configuration, is not run) and step 2's restore."""
    values = {"KIND": KIND, "CONFIG": config, "NAME": webhook}
    blocks = [re.sub(r"\b(KIND|CONFIG|NAME)\b", lambda m: values[m.group(1)], b)
              for b in code_blocks(RUNBOOK, "Break glass")]
    (backup,) = [b for b in blocks if "> " in b and "backup.yaml" in b]
    (ignore,) = [b for b in blocks if '"Ignore"' in b]
    (restore,) = [b for b in blocks if "-f " in b and "backup.yaml" in b and b not in (backup,)]
    return backup, ignore, restore


def run_block(node: NodeCluster, block: str, workdir: Path) -> str:
    """One block, the way a reader pastes it into bash (stopping at the first failing command)."""
    return node.tool("bash", "-euo", "pipefail", "-c", block, cwd=workdir).stdout


def test_policy_engine_deadlock_replayed(node_cluster: NodeCluster, exporter: str, exporter_image: str,
                                         record_property: Callable[[str, object], None]) -> None:
    if observe.promtool() is None:
        pytest.fail("promtool not on PATH: run alerts/install-promtool.sh")
    node, t = node_cluster, tag()
    ns = f"policy-{t}"
    backend = Backend("guard", ns, exporter_image, CertificateAuthority.create("policy engine CA"), replicas=2)
    # Every namespace's Pods, its own backend's included: a policy engine's default install.
    config = webhook_configuration(f"guard-{t}", "pods.guard.test", backend, failure_policy="Fail", resources=("pods",))
    name, hook = config["metadata"]["name"], hook_labels(config)
    figures: dict[str, float] = {}
    new_namespace(node, ns)
    try:
        apply(node, backend.objects())
        chart.wait_ready_pods(node, ns, backend.label_selector, 2)
        apply(node, [config])
        wait_healthy(node, hook, backend, 2)

        # Before anything breaks, the audit names the risk (CLI and the running exporter's metric).
        own = "fail_policy_matches_own_backend"
        (finding,) = [f for f in audit(node) if f["configuration"] == name and f["id"] == own]
        # The running exporter audits in the background, at most once a minute (the audit throttle): bounded
        # generously, as in the survival test below.
        eventually(lambda: value(chart.scrape(node), "admission_webhook_risk_info", risk=own, **hook) == 1,
                   timeout_s=150, what=f"the exporter in its Pod reports {own} for {name}")

        # The deadlock: the ReplicaSet cannot recreate the backend.
        t0 = time.monotonic()
        kill_backend(node, backend)
        messages = eventually(lambda: [m for m in failed_creates(node, ns) if "failed calling webhook" in m],
                              timeout_s=60, what="FailedCreate ... failed calling webhook",
                              on_timeout=lambda: node.describe(ns))
        figures["failed_create_s"] = time.monotonic() - t0
        assert f'failed calling webhook "{hook["name"]}"' in messages[0], messages
        samples = eventually(lambda: no_endpoints(node, hook), timeout_s=30, what="the exporter reports no_endpoints")
        assert not chart.pods(node, ns, backend.label_selector) or not any(
            chart.is_ready(p) for p in chart.pods(node, ns, backend.label_selector))
        assert observe.firing(samples, "AdmissionWebhookNoReadyEndpoints", severity="critical", **hook)

        # `explain` on the event's text names the webhook (and, with the cluster, its configuration).
        done = cli("explain", "--kubeconfig", str(node.kubeconfig_path), messages[0], node=node)
        assert done.returncode == 1, done.stdout + done.stderr  # explain's exit status: the errors it found
        assert f'"{hook["name"]}"' in done.stdout and name in done.stdout, done.stdout

        # The runbook's break-glass steps, as written; the ReplicaSet then recreates the backend.
        backup, ignore, restore = break_glass(name, hook["name"])
        with tempfile.TemporaryDirectory(prefix="awe-runbook-") as d:
            workdir = Path(d)
            t1 = time.monotonic()
            run_block(node, backup, workdir)
            run_block(node, ignore, workdir)
            wait_healthy(node, hook, backend, 2, timeout_s=RECOVERY_TIMEOUT_S)
            figures["recovered_after_break_glass_s"] = time.monotonic() - t1
            samples = eventually(lambda: healthy(node, hook, {p["status"]["podIP"] for p in chart.pods(
                node, ns, backend.label_selector)}), timeout_s=30, what="healthy after break-glass")
            assert not observe.firing(samples, "AdmissionWebhookNoReadyEndpoints", **hook)
            # Step 2: the backend is repaired, put the original configuration back.
            run_block(node, restore, workdir)
        restored = json.loads(node.kubectl("get", KIND, name, "-o", "json").stdout)
        assert restored["webhooks"][0]["failurePolicy"] == "Fail", restored
        assert restored["webhooks"][0]["clientConfig"]["caBundle"] == config["webhooks"][0]["clientConfig"]["caBundle"]

        # The audit's fix, then the same outage again: the backend comes back with no break-glass.
        fix = yaml.safe_load(finding["fix"])
        node.kubectl("patch", KIND, name, "--type=json", "-p", json.dumps(
            [{"op": "add", "path": "/webhooks/0/namespaceSelector", "value": fix["namespaceSelector"]}]))
        assert not [f for f in audit(node) if f["configuration"] == name and f["id"] == finding["id"]]
        before = len(failed_creates(node, ns))
        t2 = time.monotonic()
        kill_backend(node, backend)
        wait_healthy(node, hook, backend, 2, timeout_s=120)
        figures["healed_by_itself_s"] = time.monotonic() - t2
        assert len(failed_creates(node, ns)) == before, failed_creates(node, ns)
        record_property("figures", figures)
        print(f"deadlock figures: {figures}; break-glass ran:\n{backup}\n{ignore}\n{restore}")
    finally:
        node.kubectl("delete", KIND, name, "--ignore-not-found")
        chart.delete_namespace(node, ns)


# --------------------------------------------------------------------------------------------- #
# 4. the exporter survives the outage it reports


def test_exporter_survives_the_outage_it_reports(node_cluster: NodeCluster, exporter: str, exporter_image: str,
                                                 record_property: Callable[[str, object], None]) -> None:
    node, t = node_cluster, tag()
    ns = f"outage-{t}"
    backend = Backend("guard", ns, exporter_image, CertificateAuthority.create("outage CA"), replicas=2)
    # The README's namespaceSelector, on a Fail webhook that gates every other namespace's Pods.
    config = webhook_configuration(f"outage-{t}", "pods.outage.test", backend, failure_policy="Fail",
                                   resources=("pods",), namespace_selector=chart.readme_namespace_selector())
    name, hook = config["metadata"]["name"], hook_labels(config)
    _, _, label_command = chart.readme_install_commands()
    figures: dict[str, float] = {}
    new_namespace(node, ns)
    try:
        node.tool(*label_command.split())  # the README's: kubectl label namespace monitoring ...exclude=true
        apply(node, backend.objects())
        chart.wait_ready_pods(node, ns, backend.label_selector, 2)
        apply(node, [config])
        wait_healthy(node, hook, backend, 2)
        node.kubectl("-n", ns, "scale", f"deployment/{backend.name}", "--replicas=0")
        eventually(lambda: no_endpoints(node, hook), timeout_s=30, what="the exporter reports no_endpoints")

        # Excluded: a new exporter Pod is admitted during the outage, and reports it.
        (old,) = chart.pods(node, NAMESPACE)
        t0 = time.monotonic()
        node.kubectl("-n", NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")
        (new,) = chart.wait_ready_pods(node, NAMESPACE)
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        eventually(lambda: no_endpoints(node, hook), timeout_s=30, what="the new exporter reports the outage")
        figures["excluded_back_and_reporting_s"] = time.monotonic() - t0

        # Not excluded: the audit says beforehand that the exporter's Pod would be refused (asked where the
        # exporter runs; the exporter in its Pod knows it from its service account, and says it as a metric) ...
        def gates_exporter() -> list[dict[str, Any]]:
            return [f for f in audit(node, "--exporter-namespace", NAMESPACE)
                    if f["id"] == GATES_EXPORTER and f["configuration"] == name]

        assert gates_exporter() == []
        t1 = time.monotonic()
        node.kubectl("label", "namespace", NAMESPACE, f"{chart.EXCLUDE_LABEL}-")
        (finding,) = gates_exporter()
        assert finding["severity"] == "warning" and f"intercepts pods in {NAMESPACE}" in finding["why"], finding
        assert NAMESPACE in yaml.safe_load(finding["fix"])["namespaceSelector"]["matchExpressions"][-1]["values"]
        # The exporter's own view: a new inventory (the Namespace's labels changed), then its audit; bounded
        # generously, as the exporter may rest between audits under churn.
        eventually(lambda: value(chart.scrape(node), "admission_webhook_risk_info", risk=GATES_EXPORTER,
                                 severity="warning", **hook) == 1,
                   timeout_s=150, what=f"the exporter in its Pod reports {GATES_EXPORTER} for its own namespace")
        figures["risk_metric_after_label_removed_s"] = time.monotonic() - t1
        # ... and it is: the ReplicaSet cannot recreate it while the webhook's backend is down.
        (old,) = chart.pods(node, NAMESPACE)
        node.kubectl("-n", NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")
        messages = eventually(lambda: [m for m in failed_creates(node, NAMESPACE)
                                       if f'failed calling webhook "{hook["name"]}"' in m],
                              timeout_s=60, what="the exporter's FailedCreate")
        assert not [p for p in chart.pods(node, NAMESPACE) if not p["metadata"].get("deletionTimestamp")], messages
        record_property("figures", figures)
        print(f"survival figures: {figures}")
    finally:
        node.kubectl("delete", KIND, name, "--ignore-not-found")
        node.kubectl("label", "namespace", NAMESPACE, f"{chart.EXCLUDE_LABEL}-", check=False)
        with contextlib.suppress(NodeError):  # the module's exporter, back for what follows
            chart.wait_ready_pods(node, NAMESPACE, timeout_s=120)
        chart.delete_namespace(node, ns)
