"""The configuration audit: real-world configurations with their exact findings, the fixes it proposes, the
apiserver's matching semantics, the metric, the CLI, and a risky configuration in a real kube-apiserver."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import app as app_module
from exporter import resources
from exporter.app import Exporter
from exporter.audit import (
    BOOTSTRAP,
    CYCLE,
    FAIL_OPEN,
    FIREWALL_PORT,
    GATES_EXPORTER,
    KUBE_SYSTEM,
    LONG_TIMEOUT,
    MATCH_CONDITION,
    OWN_BACKEND,
    PORT_MISSING,
    RULE_IDS,
    SERVICE_MISSING,
    SIDE_EFFECTS,
    SINGLE_ENDPOINT,
    TIMEOUT_BUDGET,
    VIRTUAL_RESOURCE,
    Finding,
    Request,
    audit,
    rule_matches,
    selector_matches,
)
from exporter.cli import load_inventory, main
from exporter.inventory import SourcedObject, build_inventory
from exporter.model import Inventory, LabelSelector, LabelSelectorRequirement, MatchCondition, Rule, Webhook
from exporter.parse import parse_label_selector
from exporter.pki import CertificateAuthority
from exporter.probe import ProbeResult
from exporter.reasons import Reason
from exporter.targets import Target
from tests import factories as f
from tests.helpers import ManualClock, eventually

FIXTURES = Path(__file__).parent / "fixtures" / "audit"
DOCS = Path(__file__).parent.parent / "docs" / "audit.md"

KYVERNO_V = ("kyverno-resource-validating-webhook-cfg", "validate.kyverno.svc-fail", "validating")
KYVERNO_M = ("kyverno-resource-mutating-webhook-cfg", "mutate.kyverno.svc-fail", "admit")
CERT_MANAGER_V = ("cert-manager-webhook", "webhook.cert-manager.io", "validating")
CERT_MANAGER_M = ("cert-manager-webhook", "webhook.cert-manager.io", "admit")

# fixture -> the exact findings: (configuration, name, type, id, severity)
EXPECTED: dict[str, set[tuple[str, str, str, str, str]]] = {
    "policy-engine-all-resources.yaml": {
        (*hook, rule, "critical") for hook in (KYVERNO_V, KYVERNO_M) for rule in (KUBE_SYSTEM, OWN_BACKEND, BOOTSTRAP)}
    | {(*hook, FIREWALL_PORT, "warning") for hook in (KYVERNO_V, KYVERNO_M)},  # Kyverno serves on 9443
    # Audited as the exporter in `monitoring` sees it: the usual first fix leaves the exporter's Pods gated.
    "policy-engine-kube-system-excluded.yaml": {(*hook, rule, severity) for hook in (KYVERNO_V, KYVERNO_M)
                                                for rule, severity in ((BOOTSTRAP, "critical"),
                                                                       (FIREWALL_PORT, "warning"),
                                                                       (GATES_EXPORTER, "warning"))},
    "servicecidr-no-exclusion.yaml": {("netpol-guard", "validate.netpol-guard.example.com", "validating", BOOTSTRAP,
                                       "critical"),
                                      ("netpol-guard", "validate.netpol-guard.example.com", "validating",
                                       FIREWALL_PORT, "warning")},
    "servicecidr-excluded.yaml": {("netpol-guard", "validate.netpol-guard.example.com", "validating",
                                   FIREWALL_PORT, "warning")},
    # Offline, without Namespace objects: kube-system's labels are unknown, and the opt-in selector would take it
    # in once kube-system carries the label: latent (in a live cluster its labels are known).
    "istio-sidecar-injector.yaml": {("istio-sidecar-injector", f"{hook}.sidecar-injector.istio.io", "admit",
                                     FIREWALL_PORT, "warning") for hook in ("namespace", "object")}  # istiod: 15017
    | {("istio-sidecar-injector", "namespace.sidecar-injector.istio.io", "admit", KUBE_SYSTEM, "latent")},
    # kube-system: cert-manager's own kinds there (any namespaced kind is a warning; the listed ones critical)
    "cert-manager.yaml": {(*hook, rule, "warning") for hook in (CERT_MANAGER_V, CERT_MANAGER_M)
                          for rule in (LONG_TIMEOUT, SINGLE_ENDPOINT, TIMEOUT_BUDGET, KUBE_SYSTEM)},
    "gatekeeper-ignore.yaml": {  # Gatekeeper serves on 8443
        ("gatekeeper-validating-webhook-configuration", "validation.gatekeeper.sh", "validating", FAIL_OPEN, "info"),
        ("gatekeeper-validating-webhook-configuration", "check-ignore-label.gatekeeper.sh", "validating", BOOTSTRAP,
         "critical"),
        ("gatekeeper-validating-webhook-configuration", "validation.gatekeeper.sh", "validating", FIREWALL_PORT,
         "info"),
        ("gatekeeper-mutating-webhook-configuration", "mutation.gatekeeper.sh", "admit", FIREWALL_PORT, "info"),
        ("gatekeeper-validating-webhook-configuration", "check-ignore-label.gatekeeper.sh", "validating",
         FIREWALL_PORT, "warning")},
    "match-condition-invalid.yaml": {
        ("team-policy", "labels.team-policy.example.com", "validating", MATCH_CONDITION, "critical"),
        ("team-policy", "deletes.team-policy.example.com", "validating", MATCH_CONDITION, "critical"),
        ("team-policy", "labels.team-policy.example.com", "validating", FIREWALL_PORT, "warning"),
        ("team-policy", "deletes.team-policy.example.com", "validating", FIREWALL_PORT, "warning")},
    "cycle.yaml": {(conf, name, "admit", rule, severity)
                   for conf, name in (("mesh-sidecar", "inject.mesh.example.com"),
                                      ("log-agent", "inject.log-agent.example.com"))
                   for rule, severity in ((CYCLE, "critical"), (FIREWALL_PORT, "warning"), (KUBE_SYSTEM, "latent"))},
    "misc-backends.yaml": {
        ("authn-audit", "tokenreviews.authn-audit.example.com", "validating", VIRTUAL_RESOURCE, "warning"),
        ("authn-audit", "tokenreviews.authn-audit.example.com", "validating", SIDE_EFFECTS, "warning"),
        ("authn-audit", "tokenreviews.authn-audit.example.com", "validating", FIREWALL_PORT, "info"),
        ("legacy-quota", "quota.legacy.example.com", "validating", SERVICE_MISSING, "warning"),
        ("team-quota", "quota.team.example.com", "validating", PORT_MISSING, "critical"),
        ("team-quota", "quota.team.example.com", "validating", KUBE_SYSTEM, "latent")},
}

# fixture -> the namespace the exporter runs in, for the audits that know it (`serve` in a Pod, --exporter-namespace)
EXPORTER_NAMESPACE: dict[str, str] = {"policy-engine-kube-system-excluded.yaml": "monitoring"}


def rows(findings: tuple[Finding, ...]) -> set[tuple[str, str, str, str, str]]:
    return {(x.webhook.configuration, x.webhook.name, x.webhook.type, x.id, x.severity) for x in findings}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_real_world_configurations_have_exactly_the_expected_findings(fixture: str) -> None:
    inventory = load_inventory([str(FIXTURES / fixture)])
    assert not inventory.invalid, inventory.invalid
    findings = audit(inventory, exporter_namespace=EXPORTER_NAMESPACE.get(fixture))
    assert rows(findings) == EXPECTED[fixture]
    for finding in findings:  # every finding says why in one line and proposes a fix
        assert finding.why and "\n" not in finding.why and finding.fix


def test_fixtures_and_docs_cover_every_rule_id() -> None:
    covered = {row[3] for expected in EXPECTED.values() for row in expected}
    assert covered == set(RULE_IDS)
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)
    documented = {line.split("`")[1] for line in DOCS.read_text().splitlines() if line.startswith("| `")}
    assert documented == set(RULE_IDS)


def test_why_names_the_risk_precisely() -> None:
    by = {(x.webhook.name, x.id): x for x in audit(load_inventory([str(FIXTURES / "servicecidr-no-exclusion.yaml")]))}
    why = by[("validate.netpol-guard.example.com", BOOTSTRAP)].why
    assert "(servicecidrs, ipaddresses) through a wildcard rule" in why
    assert "no Service can be created (every ClusterIP allocation creates an IPAddress)" in why
    cert = {(x.webhook.type, x.id): x for x in audit(load_inventory([str(FIXTURES / "cert-manager.yaml")]))}
    assert cert[("validating", TIMEOUT_BUDGET)].why.startswith(
        "on CREATE certificaterequests in default the apiserver may wait 30 (mutating) + 30 (validating, the "
        "longest) = 60 s")
    assert cert[("admit", TIMEOUT_BUDGET)].fix.startswith("timeoutSeconds: 17")  # 17 + 17 fits 34
    bad = {x.webhook.name: x.why for x in audit(load_inventory([str(FIXTURES / "match-condition-invalid.yaml")]))
           if x.id == MATCH_CONDITION}
    assert bad["labels.team-policy.example.com"] == (
        "matchCondition 'not-kube-system' does not compile: ERROR: <input>:1:38: Syntax error: mismatched input "
        "'<EOF>': the apiserver rejects the request")
    assert bad["deletes.team-policy.example.com"] == (
        "matchCondition 'only-temporary' fails on DELETE configmaps in default: no such overload (object is null "
        "on DELETE): the apiserver rejects the request")


def _port_findings(*objects: dict[str, Any]) -> dict[str, Finding]:
    inventory = build_inventory([SourcedObject("test", o) for o in objects])
    return {x.webhook.name: x for x in audit(inventory) if x.id == FIREWALL_PORT}


@pytest.mark.parametrize(("target_port", "slice_port", "policy", "expected"), [
    (8443, None, "Fail", ("warning", "8443")),  # numeric targetPort, no EndpointSlice seen
    ("webhook", 9443, "Fail", ("warning", "9443")),  # a named targetPort, resolved through the EndpointSlice
    (15017, 15017, "Ignore", ("info", "15017")),
    (443, 443, "Fail", None),
    (10250, 10250, "Fail", None),  # cert-manager's choice, for exactly this reason
    (None, None, "Fail", None),  # targetPort defaults to the port: 443
    ("webhook", None, "Fail", None),  # a named port nobody resolved: unknown, not guessed
])
def test_a_backend_port_managed_control_planes_block_is_named(target_port: int | str | None, slice_port: int | None,
                                                              policy: str, expected: tuple[str, str] | None) -> None:
    ca = CertificateAuthority.create("ports")
    port: dict[str, Any] = {"name": "https", "port": 443}
    if target_port is not None:
        port["targetPort"] = target_port
    objects = [f.configuration("c", f.webhook("w.example.com", f.service_client("team", "hook", ca.ca_bundle),
                                              policy=policy)),
               f.service("team", "hook", [port])]
    if slice_port is not None:
        objects.append(f.endpoint_slice("team", "hook", [{"name": "https", "port": slice_port, "protocol": "TCP"}],
                                        [("10.1.0.5", True)]))
    found = _port_findings(*objects)
    if expected is None:
        assert found == {}
        return
    finding = found["w.example.com"]
    severity, shown = expected
    assert finding.severity == severity
    assert finding.why.startswith(f"Service team/hook sends the apiserver's calls to container port {shown}: ")
    assert "GKE private clusters admit 443 and 10250" in finding.why and "EKS" in finding.why
    assert f"--allow tcp:{shown}" in finding.fix and f"--port {shown} --source-group" in finding.fix
    assert yaml.safe_load(finding.fix) == {"spec": {"ports": [{"name": "https", "port": 443, "targetPort": 10250}]}}


def test_url_webhooks_have_no_port_finding() -> None:
    ca = CertificateAuthority.create("ports")
    assert _port_findings(f.configuration("c", f.webhook("u.example.com", f.url_client(8443, ca.ca_bundle)))) == {}


def apply_fix(hook: Webhook, finding: Finding) -> Webhook:
    """The webhook as it is after an operator pastes the finding's snippet into it."""
    snippet = yaml.safe_load(finding.fix)
    if "namespaceSelector" in snippet:
        return dataclasses.replace(hook, namespace_selector=parse_label_selector(snippet["namespaceSelector"], "fix"))
    added = tuple(MatchCondition(c["name"], c["expression"]) for c in snippet["matchConditions"])
    return dataclasses.replace(hook, match_conditions=hook.match_conditions + added)


@pytest.mark.parametrize("fixture", ["policy-engine-all-resources.yaml", "cycle.yaml", "servicecidr-no-exclusion.yaml",
                                     "gatekeeper-ignore.yaml"])
def test_each_selector_and_condition_fix_removes_its_finding(fixture: str) -> None:
    inventory = load_inventory([str(FIXTURES / fixture)])
    fixable = [x for x in audit(inventory) if x.id in (KUBE_SYSTEM, OWN_BACKEND, BOOTSTRAP, CYCLE)]
    assert fixable
    for finding in fixable:
        hooks = tuple(apply_fix(h, finding) if h.key == finding.webhook else h for h in inventory.webhooks)
        after = audit(dataclasses.replace(inventory, webhooks=hooks))
        assert (finding.webhook, finding.id) not in {(x.webhook, x.id) for x in after}, finding.fix


def test_namespace_selector_is_evaluated_against_live_labels() -> None:
    hook = f.webhook("opt-out.example.com", f.url_client(443, ""), rules=[
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        namespaceSelector={"matchExpressions": [{"key": "policy.example.com/ignore", "operator": "DoesNotExist"}]})
    offline = build_inventory([SourcedObject("t", f.configuration("opt-out", hook))])
    assert {x.id for x in audit(offline)} == {KUBE_SYSTEM}  # kube-system carries only its name label
    labelled = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "kube-system", "labels": {"policy.example.com/ignore": "true"}}}
    live = build_inventory([SourcedObject("t", f.configuration("opt-out", hook)), SourcedObject("api", labelled)])
    assert audit(live) == ()


def test_admission_configuration_objects_are_never_flagged() -> None:
    hook = f.webhook("meta.example.com", f.url_client(443, ""), rules=[
        {"apiGroups": ["admissionregistration.k8s.io"], "apiVersions": ["*"], "operations": ["*"],
         "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations",
                       "validatingadmissionpolicies", "validatingadmissionpolicybindings"]}])
    assert audit(build_inventory([SourcedObject("t", f.configuration("meta", hook))])) == ()


def test_undecidable_match_conditions_are_assumed_to_match_and_say_so() -> None:
    hook = f.webhook("authz.example.com", f.url_client(443, ""), rules=[
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["nodes"]}],
        matchConditions=[{"name": "not-admins",
                          "expression": "!authorizer.group('').resource('nodes').check('create').allowed()"}])
    (finding,) = audit(build_inventory([SourcedObject("t", f.configuration("authz", hook))]))
    assert finding.id == BOOTSTRAP
    assert "matchConditions not evaluated: matchCondition 'not-admins' uses authorizer" in finding.why


LABELS = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(("selector", "matches"), [
    (LabelSelector(), True),
    (LabelSelector(match_labels=(("app", "web"),)), True),
    (LabelSelector(match_labels=(("app", "db"),)), False),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("tier", "In", ("front", "back")),)), True),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("tier", "NotIn", ("front",)),)), False),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("zone", "NotIn", ("a",)),)), True),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("zone", "In", ("a",)),)), False),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("app", "Exists"),)), True),
    (LabelSelector(match_expressions=(LabelSelectorRequirement("app", "DoesNotExist"),)), False),
])
def test_label_selector_semantics(selector: LabelSelector, matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


POD_STATUS = Request(resources.PODS, "UPDATE", "default", subresource="status")
POD_CREATE = Request(resources.PODS, "CREATE", "default")
NODE = Request(resources.NODES, "CREATE")
NS = Request(resources.NAMESPACES, "CREATE", "team", "team")


def rule(resources: list[str], scope: str = "*", operations: tuple[str, ...] = ("*",),
         groups: tuple[str, ...] = ("*",)) -> Rule:
    return Rule(operations=operations, api_groups=groups, api_versions=("*",), resources=tuple(resources),
                scope=scope)


@pytest.mark.parametrize(("r", "request_", "matches"), [
    (rule(["*"]), POD_CREATE, True),
    (rule(["*"]), POD_STATUS, False),  # "*" is main resources only
    (rule(["*/*"]), POD_STATUS, True),
    (rule(["pods/*"]), POD_STATUS, True),
    (rule(["pods/*"]), POD_CREATE, True),  # the apiserver's matcher: sub "*" also matches no subresource
    (rule(["*/status"]), POD_STATUS, True),
    (rule(["*/status"]), POD_CREATE, False),
    (rule(["pods"], operations=("UPDATE",)), POD_CREATE, False),
    (rule(["pods"], groups=("apps",)), POD_CREATE, False),
    (rule(["*"], scope="Namespaced"), NODE, False),
    (rule(["*"], scope="Namespaced"), NS, False),  # a Namespace is cluster-scoped, though it has a namespace
    (rule(["*"], scope="Cluster"), NS, True),
    (rule(["*"], scope="Cluster"), POD_CREATE, False),
])
def test_rule_matching_follows_the_apiserver(r: Rule, request_: Request, matches: bool) -> None:
    assert rule_matches(r, request_) is matches


async def unreachable(target: Target) -> ProbeResult:
    """The fixtures' endpoints are pod IPs of a cluster that is not here, so they are never dialled: this
    probe function answers at once (these tests are about the audit, not probes)."""
    return ProbeResult(success=False, reason=Reason.UNREACHABLE, detail="not dialled by this test",
                       duration_seconds=0.0, finished_at=0.0)


async def test_metric_is_exposed_and_computed_once_per_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = Exporter(probe_fn=unreachable, audit_interval=0)  # the throttle has a test of its own, below
    calls: list[Inventory] = []
    real = app_module.audit

    def counting(inv: Inventory, plans: Any = None, **kwargs: Any) -> tuple[Finding, ...]:
        calls.append(inv)
        return real(inv, plans, **kwargs)

    monkeypatch.setattr(app_module, "audit", counting)
    labels = {"configuration": "mesh-sidecar", "name": "inject.mesh.example.com", "type": "admit", "risk": CYCLE,
              "severity": "critical"}
    try:
        exporter.adopt(load_inventory([str(FIXTURES / "cycle.yaml")]))
        await exporter.wait_audited()
        for _ in range(3):
            assert exporter.registry.get_sample_value("admission_webhook_risk_info", labels) == 1
        assert len(calls) == 1
        exporter.adopt(load_inventory([str(FIXTURES / "servicecidr-excluded.yaml")]))
        await exporter.wait_audited()
        assert exporter.registry.get_sample_value("admission_webhook_risk_info", labels) is None
        assert len(calls) == 2
    finally:
        await exporter.close()


async def test_audits_under_churn_are_throttled_and_scrapes_serve_the_last_findings() -> None:
    """A burst of inventories within the interval costs one audit, of the latest, when the interval is over;
    until then every scrape answers at once with the findings in force. The exporter's clock is a ManualClock."""
    clock = ManualClock()
    exporter = Exporter(probe_fn=unreachable, audit_interval=60, clock=clock.now, sleep=clock.sleep)
    cycle = load_inventory([str(FIXTURES / "cycle.yaml")])
    other = load_inventory([str(FIXTURES / "servicecidr-excluded.yaml")])
    labels = {"configuration": "mesh-sidecar", "name": "inject.mesh.example.com", "type": "admit", "risk": CYCLE,
              "severity": "critical"}

    def risk() -> float | None:
        return exporter.registry.get_sample_value("admission_webhook_risk_info", labels)

    try:
        exporter.adopt(cycle)  # the first audit runs at once
        await exporter.wait_audited()
        assert exporter.audits == 1 and risk() == 1
        for _ in range(4):  # churn: four inventories in a row (as EndpointSlice changes make them)
            exporter.adopt(load_inventory([str(FIXTURES / "cycle.yaml")]))
        await eventually(lambda: clock.sleeping == 1, 10, "the auditor resting")
        assert clock.requested == [60]
        snapshot = exporter.state.snapshot
        assert snapshot.audit_pending and exporter.audits == 1
        assert risk() == 1  # the findings of the first audit, for the webhooks the new inventory still has
        assert "admission_webhook_risk_info{" in exporter.text().decode()
        clock.advance(59)
        await asyncio.sleep(0.05)
        assert exporter.audits == 1 and exporter.state.snapshot.audit_pending
        exporter.adopt(other)  # the latest, adopted while the auditor rests: the one audited
        clock.advance(1)
        await exporter.wait_audited()
        assert exporter.audits == 2 and risk() is None  # one audit for five inventories
        assert exporter.state.snapshot.audited == exporter.state.snapshot.generation
    finally:
        await exporter.close()


def test_cli_report_json_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    cert_manager = str(FIXTURES / "cert-manager.yaml")
    assert main(["audit", "--manifests", cert_manager]) == 0  # warnings only; default --fail-on critical
    text = capsys.readouterr().out
    assert text.startswith("8 findings in 2 webhooks: 0 critical, 8 warning, 0 latent, 0 info\n\nWARNING (8)\n")
    assert "  [fail_policy_long_timeout] cert-manager-webhook/webhook.cert-manager.io (admit)\n" in text
    assert main(["audit", "--manifests", cert_manager, "--fail-on", "warning", "--output", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == {"critical": 0, "warning": 8, "latent": 0, "info": 0}
    assert {(r["type"], r["id"]) for r in report["findings"]} == {
        (t, i) for t in ("validating", "admit") for i in (LONG_TIMEOUT, SINGLE_ENDPOINT, TIMEOUT_BUDGET, KUBE_SYSTEM)}
    assert main(["audit", "--manifests", str(FIXTURES / "cycle.yaml")]) == 1
    capsys.readouterr()
    assert main(["audit", "--manifests", str(FIXTURES / "cycle.yaml"), "--fail-on", "never"]) == 0
    capsys.readouterr()
    assert main(["audit", "--manifests", str(FIXTURES), "--fail-on", "sometimes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fail-on" in err


# -- Against a real kube-apiserver -----------------------------------------------------------------------------
async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def run_cli(*args: str, limit: float = 120) -> tuple[int, str, str]:
    """The CLI as an operator runs it: its own process, so its event loop and connections are its own."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exporter", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.controlplane
async def test_audit_of_a_live_cluster_and_the_exporter_metric(kube_api: Any, control_plane: Any) -> None:
    from kubernetes import client

    from exporter.discovery import Discovery
    from exporter.kubeapi import KubeApi, load_credentials

    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    namespace, name = f"audit-{suffix}", f"audit-{suffix}"
    webhook = f"pods.{name}.example.com"
    await call(core.create_namespace, {"metadata": {"name": namespace}})
    service = f.service(namespace, "hook", [{"name": "https", "port": 443}])
    await call(core.create_namespaced_service, namespace, service)
    # Fail, on pods, in the namespace of its own backend: the classic self-deadlock. Scoped to that namespace
    # only, so it cannot touch anything else in the shared control plane.
    hook = f.webhook(webhook, f.service_client(namespace, "hook", ""), policy="Fail", rules=[
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}})
    await call(admission.create_validating_webhook_configuration, f.configuration(name, hook))
    discovery = Discovery(KubeApi(load_credentials(str(control_plane.kubeconfig_path))))
    exporter = Exporter(interval=60, discovery=discovery)
    try:
        code, out, err = await run_cli("audit", "--kubeconfig", str(control_plane.kubeconfig_path), "--output", "json")
        assert code == 1, err  # a critical finding: the default --fail-on
        report = json.loads(out)
        mine = {(r["id"], r["severity"]) for r in report["findings"] if r["configuration"] == name}
        assert mine == {(OWN_BACKEND, "critical")}

        await exporter.start()
        await asyncio.wait_for(discovery.wait_synced(), 10)
        labels = {"configuration": name, "name": webhook, "type": "validating", "risk": OWN_BACKEND,
                  "severity": "critical"}
        for _ in range(100):
            if exporter.registry.get_sample_value("admission_webhook_risk_info", labels) == 1:
                break
            await asyncio.sleep(0.05)
        assert exporter.registry.get_sample_value("admission_webhook_risk_info", labels) == 1
    finally:
        await exporter.close()
        await call(admission.delete_validating_webhook_configuration, name)
        await call(core.delete_namespace, namespace)


def test_cycle_search_survives_a_chain_longer_than_the_recursion_limit() -> None:
    import sys

    from exporter.audit import cycles
    from exporter.model import WebhookKey

    n = sys.getrecursionlimit() + 500
    keys = [WebhookKey("c", f"h{i:05d}", "validating") for i in range(n)]
    edges = {keys[i]: {keys[(i + 1) % n]} for i in range(n)}  # one ring through every webhook
    edges[keys[0]].add(keys[0])  # a self-loop is not a cycle between webhooks on its own
    assert cycles(edges) == [sorted(keys)]
    assert cycles({keys[0]: {keys[1]}, keys[1]: set()}) == []
