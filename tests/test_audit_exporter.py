"""`fail_policy_gates_exporter`: a Fail webhook on the Pods of the namespace the exporter runs in (issue 10,
test 4). Where that namespace comes from: `audit --exporter-namespace`, and for `serve` the flag or the Pod's
service account; unknown, the rule does not run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import kubeconfig
from exporter.app import Exporter
from exporter.audit import GATES_EXPORTER, OWN_BACKEND, Finding, audit
from exporter.cli import _exporter_namespace, build_parser, main
from exporter.model import Inventory, Webhook
from exporter.parse import parse_label_selector
from tests import factories as f
from tests.helpers import inventory_of
from tests.test_audit import unreachable

EXCLUDE = "admission-webhook-exporter.io/exclude"
README_SELECTOR = {"matchExpressions": [{"key": EXCLUDE, "operator": "NotIn", "values": ["true"]}]}
PODS = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}]


def hook(*, policy: str = "Fail", rules: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A policy engine's webhook served from `policy`, on every namespace's Pods unless told otherwise."""
    return f.webhook("pods.guard.example.com", f.service_client("policy", "guard", ""), policy=policy,
                     rules=rules or PODS, **extra)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def gating(inventory: Inventory, exporter_namespace: str | None = "monitoring") -> list[Finding]:
    return [x for x in audit(inventory, exporter_namespace=exporter_namespace) if x.id == GATES_EXPORTER]


def with_fix(hook_: Webhook, finding: Finding) -> Webhook:
    snippet = yaml.safe_load(finding.fix)  # the README alternative is a YAML comment
    return dataclasses.replace(hook_, namespace_selector=parse_label_selector(snippet["namespaceSelector"], "fix"))


def test_a_fail_webhook_on_the_exporters_pods_is_a_warning_with_its_fix() -> None:
    inventory = inventory_of(f.configuration("guard", hook()))
    (finding,) = gating(inventory)
    assert finding.severity == "warning"
    assert finding.why.startswith("failurePolicy Fail and it intercepts pods in monitoring, the namespace the "
                                  "exporter runs in: while its backend is down the exporter's Pod cannot be recreated")
    assert "the cluster is no worse for it and AdmissionWebhookExporterDown still fires" in finding.why
    assert f"kubectl label namespace monitoring {EXCLUDE}=true" in finding.fix  # the README's exclusion
    assert yaml.safe_load(finding.fix) == {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["monitoring"]}]}}
    fixed = dataclasses.replace(inventory, webhooks=tuple(with_fix(h, finding) for h in inventory.webhooks))
    assert gating(fixed) == []
    assert OWN_BACKEND in {x.id for x in audit(fixed)}  # the fix excludes the exporter only, nothing else


def test_the_namespace_unknown_the_rule_does_not_run() -> None:
    inventory = inventory_of(f.configuration("guard", hook()))
    assert gating(inventory, None) == []
    assert GATES_EXPORTER not in {x.id for x in audit(inventory)}  # the default: not known


@pytest.mark.parametrize(("case", "found"), [
    ("ignore", False),
    ("other-kinds", False),  # ConfigMaps only: the exporter's Pods get in
    ("readme-exclusion-labeled", False),
    ("readme-exclusion-not-labeled", True),  # the selector alone is not enough: the namespace needs the label
    ("name-excluded", False),
    ("other-namespace-only", False),
    ("object-selector-opt-in", False),  # a Pod's labels are unknown: an opt-in objectSelector does not match
    ("object-selector-opt-out", True),
    ("match-condition-skips-it", False),
    ("match-condition-undecidable", True),
])
def test_what_takes_the_exporters_pods_in(case: str, found: bool) -> None:
    extra: dict[str, Any] = {}
    objects: list[dict[str, Any]] = []
    if case == "ignore":
        extra["policy"] = "Ignore"
    elif case == "other-kinds":
        extra["rules"] = [{**PODS[0], "resources": ["configmaps"]}]
    elif case.startswith("readme-exclusion"):
        extra["namespaceSelector"] = README_SELECTOR
        objects.append(namespace("monitoring", **({EXCLUDE: "true"} if case == "readme-exclusion-labeled" else {})))
    elif case == "name-excluded":
        extra["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "monitoring"]}]}
    elif case == "other-namespace-only":
        extra["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}
    elif case == "object-selector-opt-in":
        extra["objectSelector"] = {"matchLabels": {"policy.example.com/enforce": "true"}}
    elif case == "object-selector-opt-out":
        extra["objectSelector"] = {"matchExpressions": [{"key": "policy.example.com/skip", "operator": "DoesNotExist"}]}
    elif case == "match-condition-skips-it":
        extra["matchConditions"] = [{"name": "not-monitoring", "expression": "request.namespace != 'monitoring'"}]
    elif case == "match-condition-undecidable":
        extra["matchConditions"] = [{"name": "not-admins",
                                     "expression": "!authorizer.group('').resource('pods').check('create').allowed()"}]
    findings = gating(inventory_of(f.configuration("guard", hook(**extra)), *objects))
    assert bool(findings) is found, findings
    if case == "match-condition-undecidable":
        assert "(matchConditions not evaluated: matchCondition 'not-admins' uses authorizer" in findings[0].why


def test_offline_an_opt_in_selector_is_latent_until_the_namespace_carries_its_labels() -> None:
    selector = {"matchLabels": {"policy.example.com/enforce": "true"}}
    offline = inventory_of(f.configuration("guard", hook(namespaceSelector=selector)))
    (finding,) = gating(offline)
    assert finding.severity == "latent"
    assert finding.why.startswith("latent, warning once namespace monitoring is labeled "
                                  "policy.example.com/enforce=true")
    live = inventory_of(f.configuration("guard", hook(namespaceSelector=selector)), namespace("monitoring"))
    assert gating(live) == []  # its labels are known: it does not carry the one the selector wants


def test_the_exporters_namespace_shared_with_the_backend_is_both_findings() -> None:
    """Each says what it takes down: the backend (critical) and the monitoring (warning); one fix removes both."""
    findings = {x.id: x for x in audit(inventory_of(f.configuration("guard", hook())), exporter_namespace="policy")}
    assert findings[OWN_BACKEND].severity == "critical" and findings[GATES_EXPORTER].severity == "warning"
    assert yaml.safe_load(findings[GATES_EXPORTER].fix) == yaml.safe_load(findings[OWN_BACKEND].fix)


async def test_the_running_exporter_exposes_it_for_its_own_namespace() -> None:
    labels = {"configuration": "guard", "name": "pods.guard.example.com", "type": "validating",
              "risk": GATES_EXPORTER, "severity": "warning"}
    for where, value in (("monitoring", 1), (None, None)):
        exporter = Exporter(probe_fn=unreachable, exporter_namespace=where)
        try:
            exporter.adopt(inventory_of(f.configuration("guard", hook())))
            await exporter.wait_audited()
            assert exporter.registry.get_sample_value("admission_webhook_risk_info", labels) == value
        finally:
            await exporter.close()


# -- Where the namespace comes from ---------------------------------------------------------------------------
def test_the_pods_namespace_is_its_service_accounts(tmp_path: Path) -> None:
    assert kubeconfig.pod_namespace(tmp_path) is None  # outside a Pod: no such file
    (tmp_path / "namespace").write_text("")
    assert kubeconfig.pod_namespace(tmp_path) is None
    (tmp_path / "namespace").write_text("monitoring\n")
    assert kubeconfig.pod_namespace(tmp_path) == "monitoring"


@pytest.mark.parametrize(("flag", "in_pod", "expected"), [
    (None, None, None),
    (None, "monitoring", "monitoring"),
    ("observability", "monitoring", "observability"),  # the flag wins
    ("observability", None, "observability"),
])
def test_serve_takes_the_flag_else_the_pods_namespace(monkeypatch: pytest.MonkeyPatch, flag: str | None,
                                                      in_pod: str | None, expected: str | None) -> None:
    monkeypatch.setattr(kubeconfig, "pod_namespace", lambda: in_pod)
    argv = ["serve", *(["--exporter-namespace", flag] if flag else [])]
    assert _exporter_namespace(build_parser().parse_args(argv)) == expected


def test_audit_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "hooks.yaml"
    manifests.write_text(json.dumps(f.configuration("guard", hook())))

    def ids(*flags: str) -> set[str]:
        assert main(["audit", "--manifests", str(manifests), "--output", "json", "--fail-on", "never", *flags]) == 0
        return {x["id"] for x in json.loads(capsys.readouterr().out)["findings"]}

    assert GATES_EXPORTER not in ids()
    assert GATES_EXPORTER in ids("--exporter-namespace", "monitoring")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["audit", "--help"])
    assert "the namespace the exporter runs in, e.g. monitoring" in " ".join(capsys.readouterr().out.split())
    for bad in ("Monitoring", "-monitoring", "a" * 64, "mon_itoring", ""):
        assert main(["audit", "--manifests", str(manifests), f"--exporter-namespace={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--exporter-namespace: expected a namespace name" in err, err

