"""The audit's blind spots: a Fail webhook on any namespaced kind in kube-system, and the risks a
namespaceSelector hides while no namespace it matches exists (or while the manifests do not say what the
namespaces carry), reported as latent findings beside the ones the existing namespaces give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.audit import KUBE_SYSTEM, OWN_BACKEND, TIMEOUT_BUDGET, Finding, audit
from exporter.cli import main
from tests import factories as f
from tests.helpers import inventory_of


def rule(groups: list[str], resources: list[str], operations: tuple[str, ...] = ("CREATE", "UPDATE")
         ) -> dict[str, Any]:
    return {"apiGroups": groups, "apiVersions": ["v1"], "operations": list(operations), "resources": resources}


def hook(name: str, rules: list[dict[str, Any]], *, policy: str = "Fail", timeout: int = 5, **extra: Any
         ) -> dict[str, Any]:
    return f.webhook(name, f.service_client("hooks", "backend", ""), policy=policy, timeout=timeout, rules=rules,
                     **extra)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def found(findings: tuple[Finding, ...], rule_id: str) -> dict[str, Finding]:
    return {x.webhook.name: x for x in findings if x.id == rule_id}


# -- kube-system, every kind ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rules", "severity", "kinds"), [
    ([rule(["batch"], ["jobs"])], "warning", "jobs"),  # before: not flagged at all
    ([rule(["batch"], ["cronjobs"])], "warning", "cronjobs"),
    ([rule(["example.com"], ["widgets"])], "warning", "widgets"),  # a custom resource the rules name
    ([rule(["monitoring.example.com"], ["*"])], "warning", "monitoring.example.com/*"),  # every kind of a group
    ([rule([""], ["persistentvolumeclaims"])], "warning", "persistentvolumeclaims"),
    ([rule([""], ["pods"])], "critical", "pods"),  # the listed kinds stay critical
    ([rule(["apps"], ["deployments"]), rule(["batch"], ["jobs"])], "critical", "deployments"),
])
def test_a_fail_webhook_on_any_namespaced_kind_in_kube_system_is_flagged(rules: list[dict[str, Any]],
                                                                          severity: str, kinds: str) -> None:
    findings = found(audit(inventory_of(f.configuration("c", hook("h.example.com", rules)))), KUBE_SYSTEM)
    finding = findings["h.example.com"]
    assert finding.severity == severity
    assert f"intercepts {kinds} in kube-system" in finding.why


@pytest.mark.parametrize("case", ["ignore", "excluded", "cluster-scoped"])
def test_only_a_fail_webhook_that_reaches_kube_system_is(case: str) -> None:
    kwargs: dict[str, Any] = {}
    rules = [rule(["batch"], ["jobs"])]
    if case == "ignore":
        kwargs["policy"] = "Ignore"
    elif case == "excluded":
        kwargs["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
    else:
        rules = [rule(["rbac.authorization.k8s.io"], ["clusterroles"])]
    assert not found(audit(inventory_of(f.configuration("c", hook("h.example.com", rules, **kwargs)))), KUBE_SYSTEM)


# -- Latent: a selector that no namespace matches now -----------------------------------------------------------
SLOW = {"matchLabels": {"team": "slow"}}


def slow_webhooks() -> list[dict[str, Any]]:
    """Four webhooks one write in a `team: slow` namespace waits on: 12 + 12 + 12 (mutating) + 10 = 46 s > 34 s."""
    mutating = f.configuration("slow-mutators", *(hook(f"m{i}.slow.example.com", [rule([""], ["pods"])], timeout=12,
                                                      namespaceSelector=SLOW) for i in range(3)),
                               kind="MutatingWebhookConfiguration")
    validating = f.configuration("slow-validator", hook("v.slow.example.com", [rule([""], ["pods"])], timeout=10,
                                                        namespaceSelector=SLOW))
    return [mutating, validating]


def cluster(*namespaces: dict[str, Any]) -> list[dict[str, Any]]:
    """A live cluster's view: its Namespaces (with their labels) and the webhooks' backend Service."""
    return [namespace("default"), namespace("kube-system"), namespace("hooks"), *namespaces,
            f.service("hooks", "backend", [{"port": 443, "targetPort": 443}])]  # a port control planes reach


def test_the_timeout_budget_a_selector_hides_is_a_latent_finding() -> None:
    """Before: with no `team: slow` namespace, nothing was reported."""
    findings = audit(inventory_of(*slow_webhooks(), *cluster(namespace("web", team="fast"))))
    budget = found(findings, TIMEOUT_BUDGET)
    assert set(budget) == {"m0.slow.example.com", "m1.slow.example.com", "m2.slow.example.com",
                           "v.slow.example.com"}
    for x in budget.values():
        assert x.severity == "latent"
        assert x.why.startswith("latent, warning once a namespace labeled team=slow exists (none does now): on "
                                "CREATE pods in (a new namespace labeled team=slow) the apiserver may wait "
                                "12 + 12 + 12 (mutating) + 10 (validating, the longest) = 46 s"), x.why


def test_once_such_a_namespace_exists_the_finding_is_real() -> None:
    findings = audit(inventory_of(*slow_webhooks(), *cluster(namespace("batch", team="slow"))))
    assert {x.severity for x in found(findings, TIMEOUT_BUDGET).values()} == {"warning"}
    assert all("in batch the apiserver" in x.why for x in found(findings, TIMEOUT_BUDGET).values())


def test_existing_namespaces_are_still_considered() -> None:
    """A real finding in an existing namespace, and a latent one for the namespace that does not exist yet."""
    fast = f.configuration("fast", *(hook(f"f{i}.fast.example.com", [rule([""], ["configmaps"])], timeout=20,
                                          namespaceSelector={"matchLabels": {"team": "fast"}}) for i in range(2)),
                           kind="MutatingWebhookConfiguration")
    findings = audit(inventory_of(fast, *slow_webhooks(), *cluster(namespace("web", team="fast"))))
    severities = {name: x.severity for name, x in found(findings, TIMEOUT_BUDGET).items()}
    assert severities == {"f0.fast.example.com": "warning", "f1.fast.example.com": "warning",
                          "m0.slow.example.com": "latent", "m1.slow.example.com": "latent",
                          "m2.slow.example.com": "latent", "v.slow.example.com": "latent"}


def test_selectors_no_namespace_matches_add_up_in_one_namespace_that_matches_them_all() -> None:
    """Two teams' webhooks, each under budget alone, exceed it in a namespace labeled for both."""
    a = f.configuration("a", hook("a.example.com", [rule([""], ["pods"])], timeout=20,
                                  namespaceSelector={"matchLabels": {"team": "slow"}}),
                        kind="MutatingWebhookConfiguration")
    b = f.configuration("b", hook("b.example.com", [rule([""], ["pods"])], timeout=20,
                                  namespaceSelector={"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
                        kind="MutatingWebhookConfiguration")
    budget = found(audit(inventory_of(a, b, *cluster())), TIMEOUT_BUDGET)
    assert {x.severity for x in budget.values()} == {"latent"} and set(budget) == {"a.example.com", "b.example.com"}
    assert "labeled team=slow, tier=true" in budget["a.example.com"].why


def test_offline_manifests_without_namespaces_report_what_a_labeled_kube_system_would_hit() -> None:
    """The same blind spot offline: without Namespace objects kube-system's and the backend's labels are unknown."""
    opt_in = f.configuration("policy", hook("p.example.com", [rule([""], ["pods"])],
                                            namespaceSelector={"matchLabels": {"policy": "enforced"}}))
    offline = found(audit(inventory_of(opt_in)), KUBE_SYSTEM)["p.example.com"]
    assert offline.severity == "latent" and offline.why.startswith(
        "latent, critical once namespace kube-system is labeled policy=enforced (no Namespace object says what it "
        "carries): failurePolicy Fail and it intercepts pods in kube-system")
    assert found(audit(inventory_of(opt_in)), OWN_BACKEND)["p.example.com"].severity == "latent"
    live = audit(inventory_of(opt_in, *cluster()))  # the labels are known: nothing latent about kube-system
    assert not found(live, KUBE_SYSTEM) and not found(live, OWN_BACKEND)


def test_a_real_finding_wins_over_a_latent_one() -> None:
    everywhere = f.configuration("all", hook("all.example.com", [rule([""], ["pods"])]))
    assert found(audit(inventory_of(everywhere)), KUBE_SYSTEM)["all.example.com"].severity == "critical"


def test_latent_findings_are_their_own_severity_in_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump_all([*slow_webhooks(), *cluster()]))
    assert main(["audit", "--manifests", str(path)]) == 0  # --fail-on critical: latent does not fail it
    text = capsys.readouterr().out
    assert text.startswith("4 findings in 4 webhooks: 0 critical, 0 warning, 4 latent, 0 info\n\nLATENT (4)\n")
    assert main(["audit", "--manifests", str(path), "--fail-on", "warning"]) == 0
    capsys.readouterr()
    assert main(["audit", "--manifests", str(path), "--fail-on", "latent"]) == 1
