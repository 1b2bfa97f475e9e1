"""The chart's canary values (deploy/helm/admission-webhook-exporter, `canary.*`): off by default, and when on, a
Role (never a ClusterRole) with `create` on the canary's resources in its one namespace, bound to the exporter's
ServiceAccount, and the flags that turn the canary on. tests/test_canary_apiserver.py runs the exporter with
exactly these objects on a real apiserver; here only the rendering is checked (helm, no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import build_parser
from tests.chart import NAMESPACE, kinds, only, require_helm, template, template_error


@pytest.fixture(scope="module")
def helm() -> Path:
    return require_helm()


def test_off_by_default_nothing_extra(helm: Path) -> None:
    docs = template(helm)
    assert "Role" not in kinds(docs) and "RoleBinding" not in kinds(docs)
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--canary")]


def test_on_a_role_with_create_on_the_canarys_resources_in_its_namespace_only(helm: Path) -> None:
    docs = template(helm, "canary.enabled=true", "canary.namespace=awe-canary", "canary.interval=120")
    role, binding = only(docs, "Role"), only(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "awe-canary"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps", "pods"], "verbs": ["create"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    account = only(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}]
    clusterrole = only(docs, "ClusterRole")  # unchanged: read-only, and never create
    assert all(set(rule["verbs"]) == {"list", "watch"} for rule in clusterrole["rules"])
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    canary = [a for a in args if a.startswith("--canary")]
    assert canary == ["--canary-namespace=awe-canary", "--canary-interval=120", "--canary-resources=configmaps,pods"]
    parsed = build_parser().parse_args(["serve", *canary])  # the exporter accepts what the chart renders
    assert (parsed.canary_namespace, parsed.canary_interval, parsed.canary_resources) == (
        "awe-canary", 120, "configmaps,pods")


def test_resources_narrow_the_role_and_the_flag(helm: Path) -> None:
    docs = template(helm, "canary.enabled=true", "canary.namespace=awe-canary", "canary.resources={configmaps}")
    assert only(docs, "Role")["rules"][0]["resources"] == ["configmaps"]
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--canary-resources=configmaps" in args


def test_without_rbac_create_the_flags_stay_and_the_role_goes(helm: Path) -> None:
    docs = template(helm, "canary.enabled=true", "canary.namespace=awe-canary", "rbac.create=false")
    assert "Role" not in kinds(docs)
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--canary-namespace=awe-canary" in args


@pytest.mark.parametrize(("sets", "message"), [
    (("canary.enabled=true",), "canary.namespace: the canary dry-runs its objects in one existing namespace"),
    (("canary.enabled=true", "canary.namespace=x", "canary.resources={secrets}"),
     'canary.resources: "secrets"; the canary may create (dry run) configmaps and pods only'),
])
def test_bad_canary_values_fail_the_render(helm: Path, sets: tuple[str, ...], message: str) -> None:
    assert message in template_error(helm, *sets)
