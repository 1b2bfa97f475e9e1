"""The path a kube-prometheus-stack user's alert takes, end to end, on a real node (issue 11, tests 1-5), and
who may read /metrics (test 6: TLS, a client certificate and a bearer token, through the chart's values).

The node (tests/node) runs kube-prometheus-stack's machinery as its chart renders it by default
(tests/monitoring/fixtures/, chart 77.0.0, operator v0.85.0): the operator as a Pod, Prometheus (built from
source) and Alertmanager (Debian's package) as the StatefulSet Pods it creates, and the test's alert receiver as
a Pod. The project's chart is installed with ``helm`` as the README says. Everything the tests assert is read
from the operator's Prometheus (its HTTP API, on the Pod IP) and from what the receiver Pod was sent.

One stack per module (it costs ~1 min to come up); the tests share it in order and each leaves it as found.
Durations: kube-prometheus-stack's defaults (30 s scrape and evaluation interval, Alertmanager route of the
fixture) except where a test says otherwise through the chart's own values.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import re
import secrets
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.fixtures import api_client_for
from tests.e2e.prometheus import PrometheusApi
from tests.monitoring.build import MonitoringBuild
from tests.monitoring.fixtures import CHART, Helm, helm_bin, monitoring_build
from tests.monitoring.kps import NAMESPACE, PROMETHEUS, RELEASE, Stack, eventually, render
from tests.monitoring.receiver import Receiver
from tests.node import chart as node_chart
from tests.node import workloads
from tests.webtls import get, refused

__all__ = ["helm_bin", "monitoring_build"]

pytestmark = [pytest.mark.node, pytest.mark.controlplane, pytest.mark.slow]

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
    stack.pod_log = node.pod_log
    helm = Helm(helm_bin, node.kubeconfig_path)
    try:
        stack.install_crds()
        for ns in (NAMESPACE, HOOKS_NS):
            node_chart.create_namespace(node, ns, {})
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
        for ns in (HOOKS_NS, NAMESPACE):  # the cluster as the other suites expect to find it
            with contextlib.suppress(Exception):
                node_chart.delete_namespace(node, ns)
        api.close()


# ---------------------------------------------------------------------------------------------- helpers


def targets(prom: PrometheusApi, job: str) -> list[dict[str, Any]]:
    return [t for t in prom.targets() if t["labels"].get("job") == job]


def up_targets(prom: PrometheusApi, job: str) -> list[dict[str, Any]]:
    return [t for t in targets(prom, job) if t.get("health") == "up"]


def loaded_groups(prom: PrometheusApi) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in prom.rule_groups()}


def firing(prom: PrometheusApi, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"].get("alertname") == alertname and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())]


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(1800)  # includes the module's setup: the node (its machine lock may wait 600 s) and the stack
def test_1_installed_as_the_readme_says_the_exporter_is_scraped_and_its_rules_load(env: Env, guard: Guard) -> None:
    t0 = time.monotonic()
    env.figures["helm install at (s)"] = t0
    installed = env.helm.install(EXPORTER_RELEASE, f"serviceMonitor.additionalLabels.release={RELEASE}", wait=True)
    env.figures["helm install --wait (s)"] = time.monotonic() - t0
    # The notes looked at the cluster's Prometheus and found it selects both objects.
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert f"{NAMESPACE}/{PROMETHEUS} selects this {kind} by its labels." in installed.check().stdout, \
            installed.stdout

    up = eventually(lambda: up_targets(env.prom, EXPORTER_JOB), timeout_s=WITHIN_S, every_s=2.0,
                    what=f'an UP target with job="{EXPORTER_JOB}"',
                    describe=lambda: f"targets: {[(t['labels'], t.get('lastError')) for t in env.prom.targets()]}")
    env.figures["target up after install (s)"] = time.monotonic() - t0
    [target] = up
    # Through the Service's endpoints, by port name: the operator's target labels.
    assert target["labels"]["namespace"] == NAMESPACE and target["labels"]["endpoint"] == "metrics", target
    assert target["labels"]["service"] == EXPORTER_RELEASE, target
    assert target["scrapePool"] == f"serviceMonitor/{NAMESPACE}/{EXPORTER_RELEASE}/0", target

    # honorLabels: the exporter's own `endpoint` label (the backend Pod's ip:port) reaches Prometheus intact, not
    # renamed `exported_endpoint` because the target carries an `endpoint` label (the port name) too.
    [backend_ip] = backend_ips(env, guard)
    query = f'admission_webhook_probe_success{{job="{EXPORTER_JOB}", name="{GUARD_WEBHOOK}"}}'
    [series] = eventually(lambda: env.prom.query(query), timeout_s=WITHIN_S, every_s=2.0, what=query)
    assert series["metric"]["endpoint"] == f"{backend_ip}:{workloads.BACKEND_PORT}", series
    assert "exported_endpoint" not in series["metric"], series
    assert series["metric"]["pod"] == target["labels"]["pod"] and series["value"][1] == "1", series

    # Every group of the chart's PrometheusRule is loaded, has been evaluated, and no rule has an error.
    groups = env.stack.release_rule_groups(EXPORTER_RELEASE)

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


# ---------------------------------------------------------------------------------------------- a webhook


GUARD = "awe-mon-guard"  # the backend Deployment/Service
GUARD_WEBHOOK = "guard.awe-mon.example.com"
GUARD_CONFIG = "awe-mon-guard"
CERT_DAYS_LEFT = 10  # the backend's certificate: above the chart's 7-day critical band, inside 14


@dataclass
class Guard:
    """A failurePolicy: Fail webhook whose backend is a real Deployment, intercepting ConfigMaps in HOOKS_NS."""

    backend: Any
    configuration: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return {"configuration": GUARD_CONFIG, "name": GUARD_WEBHOOK, "type": "validating"}


@pytest.fixture(scope="module")
def guard(env: Env) -> Iterator[Guard]:
    import datetime as dt

    from exporter.pki import CertificateAuthority

    ca = CertificateAuthority.create("awe monitoring test CA")
    backend = workloads.Backend(GUARD, HOOKS_NS, env.build.receiver_image, ca, replicas=1)
    objects = backend.objects()
    # Its serving certificate expires in CERT_DAYS_LEFT days: the threshold test 2 overrides sees it.
    serving = ca.issue([backend.server_name, f"{backend.server_name}.cluster.local"],
                       valid_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=CERT_DAYS_LEFT))
    secret = next(o for o in objects if o["kind"] == "Secret")
    secret["stringData"] = {"tls.crt": serving.cert_pem.decode(), "tls.key": serving.key_pem.decode()}
    for obj in objects:
        env.stack.apply(obj)
    configuration = workloads.webhook_configuration(
        GUARD_CONFIG, GUARD_WEBHOOK, backend, failure_policy="Fail", resources=("configmaps",),
        namespace_selector={"matchLabels": {"kubernetes.io/metadata.name": HOOKS_NS}})
    wait_replicas(env, 1)
    env.stack.apply(configuration)
    yield Guard(backend, configuration)
    env.stack.delete(configuration)


def wait_replicas(env: Env, n: int) -> None:
    def ready() -> bool:
        d: Any = env.stack.apps.read_namespaced_deployment(GUARD, HOOKS_NS)
        return (d.status.ready_replicas or 0) == n and (n > 0 or not d.status.replicas)

    eventually(ready, timeout_s=120, what=f"{GUARD} with {n} ready replicas", every_s=1.0,
               describe=lambda: env.node.describe(HOOKS_NS))


def backend_ips(env: Env, guard: Guard) -> list[str]:
    pods: list[Any] = env.stack.core.list_namespaced_pod(HOOKS_NS, label_selector=guard.backend.label_selector).items
    return sorted(p.status.pod_ip for p in pods if p.status.pod_ip and p.metadata.deletion_timestamp is None)


def scale(env: Env, n: int) -> None:
    env.kubectl("-n", HOOKS_NS, "scale", f"deployment/{GUARD}", f"--replicas={n}")
    wait_replicas(env, n)


def rule_for(stack: Stack, alertname: str) -> dict[str, Any]:
    api = stack.dynamic.resources.get(api_version="monitoring.coreos.com/v1", kind="PrometheusRule")
    for item in api.get(namespace=NAMESPACE).to_dict()["items"]:
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/instance") != EXPORTER_RELEASE:
            continue
        for group in item["spec"]["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alertname:
                    return dict(rule)
    raise AssertionError(f"no alert {alertname} in the chart's PrometheusRule")


def upgrade(env: Env, *sets: str) -> None:
    env.helm.upgrade(EXPORTER_RELEASE, *sets, wait=True, reuse_values=True).check()


def about(alert: dict[str, Any], alertname: str, **labels: str) -> bool:
    return alert["labels"].get("alertname") == alertname and all(alert["labels"].get(k) == v for k, v in labels.items())


@pytest.mark.timeout(900)
def test_2_a_fail_webhook_without_endpoints_pages_through_alertmanager_and_resolves(env: Env, guard: Guard) -> None:
    # `for:` and a threshold, through the chart's values only (prometheusRule.config): the committed rules wait
    # minutes; the certificate's 10 days left are a warning by default (< 21) and critical only below 14 here.
    upgrade(env, f"prometheusRule.config.endpointsFor={SHORT_FOR}", f"prometheusRule.config.expiryFor={SHORT_FOR}",
            "prometheusRule.config.certCriticalDays=14")
    assert rule_for(env.stack, "AdmissionWebhookNoReadyEndpoints")["for"] == SHORT_FOR
    t_install = env.figures.get("helm install at (s)", time.monotonic())

    # The threshold override, end to end: critical, not warning.
    _, cert = env.receiver.wait_for_alert(
        lambda a: about(a, "AdmissionWebhookCertificateExpiring", name=GUARD_WEBHOOK), status="firing",
        timeout_s=WITHIN_S, what="AdmissionWebhookCertificateExpiring for the guard webhook at the receiver")
    env.figures["helm install -> first alert at the receiver (s)"] = time.monotonic() - t_install
    assert cert["labels"]["severity"] == "critical", cert
    assert {"warning"} not in [{a["labels"]["severity"]} for _, a in env.receiver.alerts("firing")
                               if about(a, "AdmissionWebhookCertificateExpiring", name=GUARD_WEBHOOK)]

    # No ready endpoints: the receiver gets the page with what a responder needs.
    t0 = time.time()
    m0 = time.monotonic()
    scale(env, 0)
    _, page = env.receiver.wait_for_alert(
        lambda a: about(a, "AdmissionWebhookNoReadyEndpoints", **guard.labels), status="firing",
        timeout_s=WITHIN_S, what="AdmissionWebhookNoReadyEndpoints at the receiver", since=t0)
    env.figures["scaled to 0 -> page at the receiver (s)"] = time.monotonic() - m0
    assert page["labels"]["severity"] == "critical", page
    runbook = page["annotations"]["runbook_url"]
    assert runbook.endswith("/docs/runbooks/AdmissionWebhookNoReadyEndpoints.md"), runbook
    assert (REPO / "docs" / "runbooks" / "AdmissionWebhookNoReadyEndpoints.md").is_file()
    assert GUARD_WEBHOOK in page["annotations"]["description"], page["annotations"]
    assert page["startsAt"] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(t0 - 60)), page

    # Scale back: resolved.
    t1, m1 = time.time(), time.monotonic()
    scale(env, 1)
    env.receiver.wait_for_alert(lambda a: about(a, "AdmissionWebhookNoReadyEndpoints", **guard.labels),
                                status="resolved", timeout_s=WITHIN_S, what="the page resolved at the receiver",
                                since=t1)
    env.figures["scaled back -> resolved at the receiver (s)"] = time.monotonic() - m1
    print({k: round(v, 1) for k, v in env.figures.items() if "(s)" in k and "at (s)" not in k})


WRONG_NS = "awe-mon-wrong"
WRONG_RELEASE = "awe-wrong"


@pytest.mark.timeout(600)
def test_3_a_wrong_release_label_never_becomes_a_target_and_notes_say_how_to_fix(env: Env) -> None:
    node_chart.create_namespace(env.node, WRONG_NS, {})
    try:
        installed = env.helm.install(WRONG_RELEASE, "serviceMonitor.additionalLabels.release=prometheus",
                                     namespace=WRONG_NS, wait=True).check()
        # A ServiceMonitor created afterwards with the right label, for the same exporter Service: once the
        # running Prometheus scrapes it, the operator has generated and Prometheus reloaded a configuration
        # that had seen the chart's own ServiceMonitor too.
        sentinel = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                    "metadata": {"name": "awe-sentinel", "namespace": WRONG_NS, "labels": {"release": RELEASE}},
                    "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": WRONG_RELEASE}},
                             "namespaceSelector": {"matchNames": [WRONG_NS]},
                             "endpoints": [{"port": "metrics", "interval": "10s"}]}}
        env.stack.apply(sentinel)
        eventually(lambda: [t for t in env.prom.targets()
                            if t["scrapePool"] == f"serviceMonitor/{WRONG_NS}/awe-sentinel/0"],
                   timeout_s=WITHIN_S, every_s=2.0, what="the sentinel ServiceMonitor's target")
        pools = {t["scrapePool"] for t in env.prom.targets()}
        assert f"serviceMonitor/{WRONG_NS}/{WRONG_RELEASE}-admission-webhook-exporter/0" not in pools, pools
        jobs = [j["job_name"] for j in yaml.safe_load(env.prom.config_yaml())["scrape_configs"]]
        assert [j for j in jobs if j.startswith(f"serviceMonitor/{WRONG_NS}/")] == \
            [f"serviceMonitor/{WRONG_NS}/awe-sentinel/0"], jobs
        # Nor its rules: the operator names each rule file after the PrometheusRule's namespace and name.
        files = {g["file"] for g in env.prom.rule_groups()}
        assert not [f for f in files if f"/{WRONG_NS}-" in f], files
        assert [f for f in files if f"/{NAMESPACE}-{EXPORTER_RELEASE}-" in f], files  # the right release's are
        # What the user read after `helm install`: the label the ServiceMonitor carries, what selects it, and the
        # fix. Follow it, as a user would: the target appears.
        notes = installed.stdout
        assert "release=prometheus" in notes and "serviceMonitorSelector" in notes, notes
        prefix = f"MISMATCH: {NAMESPACE}/{PROMETHEUS} selects ServiceMonitors labelled release={RELEASE} "
        [mismatch] = [line.strip() for line in notes.splitlines() if line.strip().startswith(prefix)]
        fix = mismatch.rsplit("add --set ", 1)[1]
        assert fix == f"serviceMonitor.additionalLabels.release={RELEASE}", mismatch
        env.helm.upgrade(WRONG_RELEASE, fix, namespace=WRONG_NS, wait=True, reuse_values=True).check()
        eventually(lambda: [t for t in up_targets(env.prom, EXPORTER_JOB) if t["labels"]["namespace"] == WRONG_NS],
                   timeout_s=WITHIN_S, every_s=2.0, what="the target, once relabelled as the notes say")
    finally:
        env.stack.delete({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                          "metadata": {"name": "awe-sentinel", "namespace": WRONG_NS}})
        env.helm.uninstall(WRONG_RELEASE, namespace=WRONG_NS)
        node_chart.delete_namespace(env.node, WRONG_NS)


def refusing_port() -> socket.socket:
    """A loopback port that refuses connections and that nobody else can take: bound, never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def create_configmaps(env: Env, count: int, pause_s: float) -> list[str]:
    """ConfigMap creations in HOOKS_NS (each one calls the guard webhook); the errors they got."""
    from kubernetes.client.exceptions import ApiException

    errors = []
    for i in range(count):
        body: Any = {"metadata": {"generateName": "traffic-"}, "data": {"i": str(i)}}
        try:
            env.stack.core.create_namespaced_config_map(HOOKS_NS, body)
        except ApiException as e:
            errors.append(str(e.body))
        time.sleep(pause_s)
    return errors


@pytest.mark.timeout(900)
def test_4_the_apiserver_scraped_as_kube_prometheus_stack_does_and_calls_failing_pages(env: Env,
                                                                                    guard: Guard) -> None:
    # kube-prometheus-stack's apiserver ServiceMonitor: the `kubernetes` Service in `default`, job="apiserver".
    [api_target] = eventually(
        lambda: up_targets(env.prom, "apiserver"), timeout_s=WITHIN_S, every_s=2.0,
        what='an UP target with job="apiserver"',
        describe=lambda: f"{[(t['labels'], t.get('lastError')) for t in targets(env.prom, 'apiserver')]}")
    assert api_target["labels"]["service"] == "kubernetes" and api_target["labels"]["namespace"] == "default"
    assert api_target["scrapePool"] == f"serviceMonitor/{NAMESPACE}/{RELEASE}-apiserver/0", api_target

    upgrade(env, f"prometheusRule.config.apiserverFor={SHORT_FOR}")
    assert rule_for(env.stack, "AdmissionWebhookCallsFailing")["for"] == SHORT_FOR
    scale(env, 1)
    [pod_ip] = backend_ips(env, guard)
    # Cut the control plane's only route to that Pod: the egress proxy now sends the apiserver's dials to the
    # backend to a loopback port that refuses them. The exporter, in its Pod, still reaches the backend. (Before
    # any call: the apiserver keeps its connections to a webhook alive, and a tunnel opened before the cut would
    # carry on working.)
    closed = refusing_port()
    env.node.cp.map_service(pod_ip, workloads.BACKEND_PORT, "127.0.0.1", closed.getsockname()[1])
    m0 = time.monotonic()
    try:
        deadline = time.monotonic() + WITHIN_S
        received: tuple[float, dict[str, Any]] | None = None
        errors: list[str] = []
        while received is None and time.monotonic() < deadline:
            errors += create_configmaps(env, 5, 1.0)
            received = next(((t, a) for t, a in env.receiver.alerts("firing")
                             if about(a, "AdmissionWebhookCallsFailing", name=GUARD_WEBHOOK)), None)
        assert errors and all("failed calling webhook" in e for e in errors), errors[:3]
        assert received, (f"AdmissionWebhookCallsFailing not at the receiver within {WITHIN_S:g}s; "
                          f"firing: {[a['labels'] for a in env.prom.alerts()]}")
        env.figures["calls failing -> page at the receiver (s)"] = time.monotonic() - m0
        _, page = received
        assert page["labels"]["severity"] == "critical" and page["labels"]["type"] == "validating", page
        assert GUARD_WEBHOOK in page["annotations"]["description"]
        # Meanwhile the exporter's probes of that webhook pass: the alert is about the control plane's path.
        ok = env.prom.query(f'admission_webhook_probe_success{{job="{EXPORTER_JOB}", name="{GUARD_WEBHOOK}"}} == 1')
        assert ok, "the exporter's probe of the backend failed too"
    finally:
        env.node.cp.unmap_service(pod_ip, workloads.BACKEND_PORT)
        closed.close()
    # The route back: the apiserver's calls pass again (so it was the route, not the backend, that failed them).
    eventually(lambda: not create_configmaps(env, 1, 0.0), timeout_s=60, every_s=1.0,
               what="ConfigMap creations admitted once the route is back")


@pytest.mark.timeout(600)
def test_dashboards_queries_work_on_the_operators_prometheus(env: Env, guard: Guard,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every panel's every query, with Grafana's variables resolved as Grafana would for this Prometheus, is
    accepted by the operator's Prometheus; the apiserver panels and the exporter panels return data with
    kube-prometheus-stack's labels. The dashboard ConfigMaps are labelled for the Grafana sidecar and hold
    exactly dashboards/*.json."""
    from tests import test_dashboards as td

    # $__rate_interval: Grafana's max(4 x scrape interval, interval + scrape interval) = 2m at a 30s scrape.
    monkeypatch.setattr(td, "RATE_INTERVAL", "2m")
    measured = td.evaluate(env.prom, [GUARD_WEBHOOK])  # type: ignore[arg-type]
    errors = [e for results in measured.targets.values() for r in results for e in r.errors]
    assert not errors, "\n".join(errors)
    # The fail-open panels need a failurePolicy: Ignore webhook whose calls fail, which this module has not (its
    # one webhook is Fail): tests/test_dashboards.py's scenario has one. Every other apiserver panel has data.
    empty_apiserver = [(panel, r.ref) for panel, results in measured.targets.items() for r in results
                       if "apiserver_admission_webhook" in r.expr and "fail_open" not in r.expr and not r.rows]
    assert not empty_apiserver, empty_apiserver
    assert any("apiserver_admission_webhook" in r.expr and r.rows for rs in measured.targets.values() for r in rs)
    print(f"{sum(len(r) for r in measured.targets.values())} panel queries accepted; rows per panel: "
          + ", ".join(f"{t}={max((r.rows for r in rs), default=0)}" for (_, t), rs in measured.targets.items()))

    maps = env.stack.core.list_namespaced_config_map(
        NAMESPACE, label_selector=f"grafana_dashboard=1,app.kubernetes.io/instance={EXPORTER_RELEASE}").items
    # Exactly the files dashboards/build.py writes (its --check, in tests/test_dashboards.py, keeps them current).
    held = {name: text for cm in maps for name, text in (cm.data or {}).items()}
    shipped = {p.name: p.read_text().rstrip("\n") for p in sorted(td.DASHBOARD_DIR.glob("*.json"))}
    assert sorted(held) == sorted(shipped) and len(shipped) == 2, (sorted(held), sorted(shipped))
    assert held == shipped, "a dashboard ConfigMap's JSON differs from the generated file"


def previous_chart(dest: Path) -> tuple[str, Path]:
    """The chart as it was before its latest change (git): the version a user upgrades from."""
    rel = CHART.relative_to(REPO)
    last = subprocess.run(["git", "log", "-n", "1", "--format=%H", "--", str(rel)], cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()
    ref = f"{last}^"
    archive = subprocess.run(["git", "archive", "--format=tar", ref, str(rel)], cwd=REPO, capture_output=True,
                             timeout=60, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return ref, dest / rel


UPGRADE_NS = "awe-mon-upgrade"
UPGRADE_RELEASE = "awe-upgrade"


@pytest.mark.timeout(900)
def test_5_two_replicas_one_alert_and_an_upgrade_loses_no_rule_and_no_target(env: Env, guard: Guard,
                                                                            tmp_path: Path) -> None:
    # Two replicas: two targets, one alert (the rules aggregate over instance and pod).
    upgrade(env, "replicaCount=2", f"prometheusRule.config.endpointsFor={SHORT_FOR}")
    eventually(lambda: len(up_targets(env.prom, EXPORTER_JOB)) == 2, timeout_s=WITHIN_S, every_s=2.0,
               what="two UP exporter targets")
    t0 = time.time()
    scale(env, 0)
    try:
        env.receiver.wait_for_alert(lambda a: about(a, "AdmissionWebhookNoReadyEndpoints", **guard.labels),
                                    status="firing", timeout_s=WITHIN_S, what="the page with two replicas", since=t0)
        time.sleep(SCRAPE_S)  # another evaluation: a second alert, if any, would be there by now
        pages = {json.dumps(a["labels"], sort_keys=True) for t, a in env.receiver.alerts("firing")
                 if t >= t0 and about(a, "AdmissionWebhookNoReadyEndpoints", **guard.labels)}
        assert len(pages) == 1, pages
        assert len(firing(env.prom, "AdmissionWebhookNoReadyEndpoints", name=GUARD_WEBHOOK)) == 1
    finally:
        scale(env, 1)
        upgrade(env, "replicaCount=1")

    # helm upgrade from the chart's previous version: same targets, no rule lost.
    ref, old_chart = previous_chart(tmp_path)
    node_chart.create_namespace(env.node, UPGRADE_NS, {})
    try:
        env.helm.install(UPGRADE_RELEASE, f"serviceMonitor.additionalLabels.release={RELEASE}",
                         namespace=UPGRADE_NS, chart=old_chart, wait=True).check()

        def state() -> tuple[set[str], set[str]]:
            pools = {t["scrapePool"] for t in up_targets(env.prom, EXPORTER_JOB)
                     if t["labels"].get("namespace") == UPGRADE_NS}
            rules = {r["name"] for g in env.prom.rule_groups() if f"/{UPGRADE_NS}-" in g["file"] for r in g["rules"]}
            return pools, rules

        before = eventually(lambda: (s := state())[0] and s[1] and s, timeout_s=WITHIN_S, every_s=2.0,
                            what=f"the {ref} chart's target and rules loaded")
        env.helm.upgrade(UPGRADE_RELEASE, namespace=UPGRADE_NS, wait=True, reuse_values=True).check()
        after = eventually(lambda: (s := state())[0] and s[1] >= before[1] and s, timeout_s=WITHIN_S,
                           every_s=2.0, what="after the upgrade, the same target and every rule",
                           describe=lambda: f"before {before}, now {state()}")
        assert after[0] == before[0], (before[0], after[0])
        print(f"upgrade from {ref}: targets {sorted(after[0])}, rules {len(before[1])} -> {len(after[1])}")
    finally:
        env.helm.uninstall(UPGRADE_RELEASE, namespace=UPGRADE_NS)
        node_chart.delete_namespace(env.node, UPGRADE_NS)


# ---------------------------------------------------------------------------------------------- who may read /metrics


TLS_SECRET = "awe-tls"  # the exporter's serving certificate, its key and the CA that signed it (ca.crt)
CLIENT_CA_SECRET = "awe-client-ca"  # the CA of Prometheus' client certificate
CLIENT_CERT_SECRET = "prometheus-scrape-client"  # Prometheus' client certificate (kubernetes.io/tls)
TOKEN_SECRET = "awe-scrape-token"  # the token Prometheus sends, the one the exporter accepts
FOREIGN_CERT_SECRET = "awe-foreign-client"  # a client certificate from a CA the exporter does not trust
SERVER_NAME = f"{EXPORTER_RELEASE}.{NAMESPACE}.svc"  # the chart's default serviceMonitor.tlsConfig.serverName
SECURED = ("webConfig.tls.enabled=true", f"webConfig.tls.secretName={TLS_SECRET}",
           f"webConfig.tls.clientCASecretName={CLIENT_CA_SECRET}", f"webConfig.bearerToken.secretName={TOKEN_SECRET}",
           f"serviceMonitor.tlsConfig.clientCertSecretName={CLIENT_CERT_SECRET}")
UNSECURED = ("webConfig.tls.enabled=false", "webConfig.tls.secretName=", "webConfig.tls.clientCASecretName=",
             "webConfig.bearerToken.secretName=", "serviceMonitor.tlsConfig.clientCertSecretName=")
METRICS_PORT, HEALTH_PORT = 10047, 10048  # the chart's exporter.port and exporter.healthPort


def scrape_secrets(token: str) -> list[dict[str, Any]]:
    """The four Secrets of docs/securing-metrics.md, in the ServiceMonitor's namespace, from exporter/pki.py."""
    from exporter.pki import CertificateAuthority

    server_ca = CertificateAuthority.create("awe serving CA")
    serving = server_ca.issue([SERVER_NAME])
    client_ca = CertificateAuthority.create("prometheus client CA")
    client = client_ca.issue(["prometheus"], client=True)
    foreign = CertificateAuthority.create("a CA nobody trusts").issue(["prometheus"], client=True)

    def secret(name: str, kind: str, data: dict[str, bytes | str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": kind,
                "metadata": {"name": name, "namespace": NAMESPACE},
                "stringData": {k: v.decode() if isinstance(v, bytes) else v for k, v in data.items()}}

    return [secret(TLS_SECRET, "kubernetes.io/tls",
                   {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem, "ca.crt": server_ca.cert_pem}),
            secret(CLIENT_CA_SECRET, "Opaque", {"ca.crt": client_ca.cert_pem}),
            secret(CLIENT_CERT_SECRET, "kubernetes.io/tls", {"tls.crt": client.cert_pem, "tls.key": client.key_pem}),
            secret(FOREIGN_CERT_SECRET, "kubernetes.io/tls", {"tls.crt": foreign.cert_pem, "tls.key": foreign.key_pem}),
            secret(TOKEN_SECRET, "Opaque", {"token": token})]


def refused_monitor(job: str, endpoint: dict[str, Any]) -> dict[str, Any]:
    """A hand-written ServiceMonitor for the chart's Service, selected by the stack's Prometheus, scraping the way
    ``endpoint`` says under its own job label."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": job, "namespace": NAMESPACE, "labels": {"release": RELEASE}},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": EXPORTER_RELEASE,
                                                  "app.kubernetes.io/name": "admission-webhook-exporter"}},
                     "namespaceSelector": {"matchNames": [NAMESPACE]},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "10s", **endpoint,
                                    "relabelings": [{"action": "replace", "targetLabel": "job",
                                                     "replacement": job}]}]}}


SERVER_CA = {"secret": {"name": TLS_SECRET, "key": "ca.crt"}}


def client_cert(secret: str) -> dict[str, Any]:
    return {"cert": {"secret": {"name": secret, "key": "tls.crt"}}, "keySecret": {"name": secret, "key": "tls.key"}}


TOKEN = {"authorization": {"type": "Bearer", "credentials": {"name": TOKEN_SECRET, "key": "token"}}}
HANDSHAKE_ROW, UNAUTHORIZED_ROW = "EOF", "server returned HTTP status 401 Unauthorized"
#: job -> (how it scrapes, the docs/securing-metrics.md row its lastError must match); none gets in
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    # The ServiceMonitor as it was before TLS: plain HTTP to the TLS port.
    "awe-refused-plain-http": ({}, HANDSHAKE_ROW),
    # Unauthenticated: TLS and the exporter's CA, no client certificate, no token.
    "awe-refused-no-client-cert": ({"scheme": "https", "tlsConfig": {"serverName": SERVER_NAME, "ca": SERVER_CA}},
                                   HANDSHAKE_ROW),
    # The right token, a client certificate from another CA.
    "awe-refused-foreign-cert": ({"scheme": "https", **TOKEN, "tlsConfig": {
        "serverName": SERVER_NAME, "ca": SERVER_CA, **client_cert(FOREIGN_CERT_SECRET)}}, HANDSHAKE_ROW),
    # The right client certificate, no token.
    "awe-refused-no-token": ({"scheme": "https", "tlsConfig": {
        "serverName": SERVER_NAME, "ca": SERVER_CA, **client_cert(CLIENT_CERT_SECRET)}}, UNAUTHORIZED_ROW),
}


def last_error_rows() -> dict[str, list[str]]:
    """docs/securing-metrics.md's "When Prometheus shows the target down": its first `lastError` string -> all of
    them on that row."""
    text = (REPO / "docs" / "securing-metrics.md").read_text().split("## When Prometheus shows the target down")[1]
    rows = [re.findall(r"`([^`]+)`", line.split("|")[1]) for line in text.splitlines() if line.startswith("| `")]
    return {row[0]: row for row in rows}


def exporter_scheme(config: str | None) -> str | None:
    """The scheme of the chart ServiceMonitor's scrape job in a Prometheus configuration (None: no such job)."""
    jobs = (yaml.safe_load(config or "") or {}).get("scrape_configs") or []
    pool = f"serviceMonitor/{NAMESPACE}/{EXPORTER_RELEASE}/0"
    return next((str(j.get("scheme", "http")) for j in jobs if j["job_name"] == pool), None)


PROMETHEUS_POD = f"prometheus-{PROMETHEUS}-0"
SWITCH_WITHIN_S = 420.0  # the new scheme reaches Prometheus through the operator, the kubelet and the reloader


class Switch:
    """Waits for the exporter's target to be UP with ``scheme`` after a ``helm upgrade`` at ``since`` (monotonic),
    and records where the time went (the figures of env, printed, never asserted): when the operator generated
    the new scrape job, when Prometheus ran it, whether a reload failed, and every state the target went
    through."""

    def __init__(self, env: Env, scheme: str, since: float) -> None:
        self.env, self.scheme, self.since = env, scheme, since
        self.seen: dict[str, float] = {}
        self.states: list[tuple[float, str, str, str]] = []
        self.reload_errors: list[str] = []

    def _mark(self, what: str, now: float) -> None:
        self.seen.setdefault(f"-> {self.scheme}: {what} (s)", round(now, 1))

    def poll(self) -> list[dict[str, Any]]:
        now = time.monotonic() - self.since
        if exporter_scheme(self.env.stack.generated_config()) == self.scheme:
            self._mark("operator generated it", now)
        if exporter_scheme(self.env.prom.config_yaml()) == self.scheme:
            self._mark("Prometheus runs it", now)
        runtime = self.env.prom.api("status/runtimeinfo").get("data") or {}
        if runtime.get("reloadConfigSuccess") is False and "Prometheus reload failed" not in str(self.seen):
            self._mark("Prometheus reload failed", now)
            log = self.env.node.pod_log(NAMESPACE, PROMETHEUS_POD, "prometheus")
            self.reload_errors = [ln for ln in log.splitlines() if "reload" in ln.lower() and "err" in ln.lower()][-3:]
        ours = targets(self.env.prom, EXPORTER_JOB)
        for t in ours:
            state = (t["scrapeUrl"], t["health"], t.get("lastError", ""))
            if not self.states or self.states[-1][1:] != state:
                self.states.append((round(now, 1), *state))
        return [t for t in ours if t["health"] == "up" and t["scrapeUrl"].startswith(f"{self.scheme}://")]

    def describe(self) -> str:
        return (f"{self.seen}; reload errors: {self.reload_errors}; "
                f"target states (s after the upgrade, url, health, error): {self.states}")

    def wait(self) -> list[dict[str, Any]]:
        up: list[dict[str, Any]] = eventually(self.poll, timeout_s=SWITCH_WITHIN_S, every_s=2.0,
                                              what=f"the exporter UP over {self.scheme}", describe=self.describe)
        self._mark("target UP", time.monotonic() - self.since)
        self.env.figures.update(self.seen)
        print(self.describe())
        return up


def notes_scrape(notes: str) -> tuple[str, str | None, str]:
    """From the ``curl`` line NOTES.txt prints with webConfig on: the URL's host, where ``--resolve`` sends that
    host (None: the system's resolver), and the line itself."""
    [line] = [ln.strip() for ln in notes.splitlines() if ln.strip().startswith("curl ")]
    url = re.search(r"https://([^/:\s]+):(\d+)/metrics", line)
    assert url, line
    resolve = re.search(rf"--resolve {re.escape(url.group(1))}:{url.group(2)}:(\S+)", line)
    return url.group(1), resolve.group(1) if resolve else None, line


@pytest.mark.timeout(1200)  # two switches of scheme, each bounded by SWITCH_WITHIN_S
def test_6_the_operators_prometheus_scrapes_over_tls_with_a_client_certificate_and_a_token_and_nothing_less(
        env: Env, guard: Guard, tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    made = scrape_secrets(token)
    for obj in made:
        env.stack.apply(obj)
    monitors = [refused_monitor(job, endpoint) for job, (endpoint, _) in REFUSED.items()]
    try:
        m0 = time.monotonic()
        upgraded = env.helm.upgrade(EXPORTER_RELEASE, *SECURED, wait=True, reuse_values=True).check()
        env.figures["helm upgrade to TLS --wait (s)"] = time.monotonic() - m0
        for monitor in monitors:
            env.stack.apply(monitor)

        [target] = Switch(env, "https", m0).wait()
        pod, pod_ip = target["labels"]["pod"], target["labels"]["instance"].rsplit(":", 1)[0]
        assert target["scrapeUrl"] == f"https://{pod_ip}:{METRICS_PORT}/metrics", target
        assert target["scrapePool"] == f"serviceMonitor/{NAMESPACE}/{EXPORTER_RELEASE}/0", target
        assert target["lastError"] == "", target
        # Only the new Pod is a target: the plain-HTTP one is gone with the rollout.
        assert [t["scrapeUrl"] for t in targets(env.prom, EXPORTER_JOB)] == [target["scrapeUrl"]]

        # What it scraped over TLS is the exporter's own /metrics, the webhook's series included.
        for query in (f'admission_webhook_exporter_build_info{{job="{EXPORTER_JOB}", pod="{pod}"}}',
                      f'admission_webhook_probe_success{{job="{EXPORTER_JOB}", pod="{pod}", name="{GUARD_WEBHOOK}"}}'
                      " == 1"):
            eventually(functools.partial(env.prom.query, query), timeout_s=WITHIN_S, every_s=2.0, what=query)

        # Every other way of scraping the same Pod is refused; Prometheus says why.
        def refused_jobs() -> dict[str, dict[str, Any]] | None:
            seen = {job: [t for t in targets(env.prom, job) if t["health"] != "unknown"] for job in REFUSED}
            return {job: ts[0] for job, ts in seen.items()} if all(seen.values()) else None

        down = eventually(refused_jobs, timeout_s=WITHIN_S, every_s=2.0, what="every refused job scraped once",
                          describe=lambda: f"{[(t['labels'].get('job'), t['health']) for t in env.prom.targets()]}")
        errors = {job: t["lastError"] for job, t in down.items()}
        print(f"over TLS: {target['scrapeUrl']} up; refused, lastError verbatim: {json.dumps(errors, indent=1)}")
        print({k: round(v, 1) for k, v in env.figures.items() if "TLS" in k or k.startswith("->")})
        assert {job: t["health"] for job, t in down.items()} == {job: "down" for job in REFUSED}, errors
        assert all(t["labels"]["pod"] == pod for t in down.values()), down
        for job in REFUSED:
            [up] = env.prom.query(f'up{{job="{job}"}}')
            assert up["value"][1] == "0", up
        # Each error is on the row of the docs' table that explains it: refused before any HTTP answer, or 401.
        rows = last_error_rows()
        for job, (_, row) in REFUSED.items():
            assert any(s in errors[job] for s in rows[row]), (job, errors[job], rows[row])
            assert ("HTTP status" in errors[job]) == (row == UNAUTHORIZED_ROW), (job, errors[job])

        # From here, a client that is not Prometheus: plain HTTP to /metrics is refused, the kubelet's health port
        # answers in the clear.
        plain = asyncio.run(refused(f"http://{pod_ip}:{METRICS_PORT}/metrics"))
        assert plain is not None, "plain HTTP /metrics answered"
        health = asyncio.run(get(f"http://{pod_ip}:{HEALTH_PORT}/healthz"))
        assert health.status == 200, health

        # The NOTES' curl line, run as a user would run it through `kubectl port-forward` (which the test node
        # cannot do: its connection to 127.0.0.1:10047 goes to the Pod's port instead).
        host, resolved, line = notes_scrape(upgraded.stdout)
        assert f"get secret {TOKEN_SECRET} -o jsonpath='{{.data.token}}'" in line, line
        assert (resolved or {"localhost": "127.0.0.1"}.get(host)) == "127.0.0.1", \
            f"curl would not connect to the port-forward: {line}"
        context = ssl.create_default_context(cadata=next(s for s in made if s["metadata"]["name"] == TLS_SECRET)
                                             ["stringData"]["ca.crt"])
        client = next(s for s in made if s["metadata"]["name"] == CLIENT_CERT_SECRET)["stringData"]
        (tmp_path / "client.pem").write_text(client["tls.crt"] + client["tls.key"])
        context.load_cert_chain(tmp_path / "client.pem")
        answer = asyncio.run(get(f"https://{pod_ip}:{METRICS_PORT}/metrics", tls=context, server_name=host,
                                 headers={"Authorization": f"Bearer {token}"}))
        assert answer.status == 200 and "admission_webhook_exporter_build_info" in answer.body, answer.status
    finally:
        for monitor in monitors:
            env.stack.delete(monitor)
        # As test 1 left it: plain HTTP, then the Secrets go.
        m2 = time.monotonic()
        upgrade(env, *UNSECURED)
        Switch(env, "http", m2).wait()
        for obj in made:
            env.stack.delete(obj)
