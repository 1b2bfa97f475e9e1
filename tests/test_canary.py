"""The canary's pure parts and its schedule (exporter/canary.py).

Planning: which object reaches each webhook (rules, namespaceSelector, objectSelector, matchConditions as CEL,
through the audit's matcher), or why none does. Reading: the kube-apiserver's answers, in its own words (the texts
are the ones k8s.io/apiserver builds: `failed calling webhook %q: failed to call webhook: ...`, `admission webhook
%q denied the request: ...`, RBAC's `cannot create resource`, ResourceQuota's `exceeded quota`). The schedule: on a
ManualClock, so "never two dry runs for one webhook within an interval" is checked as a property, not timed.

The schedule tests give the canary a recording `CanaryApi` (a plain object answering 201): the real one is the
kube-apiserver, which tests/controlplane/test_canary.py uses; here only the timing is under test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from exporter.canary import (
    CANARY_LABEL,
    FOR_ANNOTATION,
    Canary,
    CanaryConfig,
    CanaryPlan,
    CanaryResult,
    CanaryStatus,
    CanaryTarget,
    Identity,
    Inconclusive,
    NotCanaried,
    Skipped,
    parse_resources,
    plan_canary,
    plan_webhook,
    read_answer,
    selector_labels,
)
from exporter.collector import canary_families
from exporter.model import LabelSelector, LabelSelectorRequirement, WebhookKey
from exporter.reasons import Reason
from exporter.resources import CONFIG_MAPS, DEPLOYMENTS, PODS, Resource
from exporter.state import ExporterState
from tests import factories as f
from tests.helpers import ManualClock, eventually, inventory_of

NS = "canary"
BUNDLE = ""
CONFIG = CanaryConfig(namespace=NS)
ME = Identity("system:serviceaccount:monitoring:awe", ("system:serviceaccounts", "system:authenticated"))


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def hook(name: str = "v.example.com", **extra: Any) -> dict[str, Any]:
    return f.webhook(name, f.url_client(8443, BUNDLE), **extra)


def planned(*hooks: dict[str, Any], config: CanaryConfig = CONFIG, identity: Identity = ME,
            namespaces: tuple[dict[str, Any], ...] = (namespace(NS, team="canary"),)) -> CanaryTarget | Skipped:
    inventory = inventory_of(f.configuration("c", *hooks), *namespaces)
    [one] = [plan_webhook(h, inventory, config, identity) for h in inventory.webhooks][:1]
    return one


def body(target: CanaryTarget | Skipped) -> dict[str, Any]:
    assert isinstance(target, CanaryTarget), target
    return dict(json.loads(target.body))


# -- planning ----------------------------------------------------------------------------------------------
def test_a_configmap_webhook_gets_a_labelled_configmap_in_the_named_namespace() -> None:
    target = planned(hook())
    assert isinstance(target, CanaryTarget) and target.resource == CONFIG_MAPS and target.namespace == NS
    obj = body(target)
    assert obj["kind"] == "ConfigMap" and obj["metadata"]["namespace"] == NS
    assert obj["metadata"]["labels"] == {CANARY_LABEL: "true"}
    assert obj["metadata"]["name"].startswith("awe-canary-")


def test_a_pod_webhook_gets_a_pod_the_restricted_level_admits() -> None:
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}]
    obj = body(planned(hook(rules=rules)))
    assert obj["kind"] == "Pod"
    spec = obj["spec"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]
    [container] = spec["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_a_wildcard_webhook_gets_the_preferred_resource_and_the_order_is_the_users() -> None:
    rules = [{"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]}]
    assert body(planned(hook(rules=rules)))["kind"] == "ConfigMap"
    pods_first = CanaryConfig(namespace=NS, resources=(PODS, CONFIG_MAPS))
    assert body(planned(hook(rules=rules), config=pods_first))["kind"] == "Pod"


def test_the_object_satisfies_the_object_selector() -> None:
    selector = {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]},
                                     {"key": "canary-ok", "operator": "Exists"},
                                     {"key": "legacy", "operator": "DoesNotExist"},
                                     {"key": "env", "operator": "NotIn", "values": ["prod"]}]}
    labels = body(planned(hook(objectSelector=selector)))["metadata"]["labels"]
    assert labels == {"app": "web", "tier": "front", "canary-ok": "canary", CANARY_LABEL: "true"}


def test_the_canary_label_is_left_out_where_the_selector_forbids_it() -> None:
    selector = {"matchExpressions": [{"key": CANARY_LABEL, "operator": "DoesNotExist"}]}
    assert body(planned(hook(objectSelector=selector)))["metadata"]["labels"] == {}


@pytest.mark.parametrize("selector", [
    LabelSelector(match_expressions=(LabelSelectorRequirement("a", "In", ("x",)),
                                     LabelSelectorRequirement("a", "NotIn", ("x",)))),
    LabelSelector(match_labels=(("a", "x"),), match_expressions=(LabelSelectorRequirement("a", "DoesNotExist"),)),
    LabelSelector(match_labels=(("a", "x"),), match_expressions=(LabelSelectorRequirement("a", "In", ("y",)),)),
])
def test_a_selector_no_labels_satisfy_has_none(selector: LabelSelector) -> None:
    assert selector_labels(selector) is None


@pytest.mark.parametrize(("extra", "reason", "detail"), [
    ({"side_effects": "Some"}, NotCanaried.SIDE_EFFECTS, "sideEffects Some"),
    ({"side_effects": "Unknown"}, NotCanaried.SIDE_EFFECTS, "sideEffects Unknown"),
    ({"policy": "Ignore"}, NotCanaried.FAILURE_POLICY_IGNORE, "tells the client nothing"),
    ({"rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"],
                 "resources": ["deployments"]}]}, NotCanaried.RESOURCE_NOT_ALLOWED, "configmaps, pods"),
    ({"rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE", "DELETE"],
                 "resources": ["configmaps"]}]}, NotCanaried.RESOURCE_NOT_ALLOWED, "no CREATE"),
    ({"rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"],
                 "scope": "Cluster"}]}, NotCanaried.RESOURCE_NOT_ALLOWED, "no CREATE"),
    ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}}},
     NotCanaried.NAMESPACE_NOT_SELECTED, f"does not select namespace {NS}"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["canary"]}]}},
     NotCanaried.NAMESPACE_NOT_SELECTED, f"does not select namespace {NS}"),
    ({"objectSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]},
                                              {"key": "a", "operator": "NotIn", "values": ["x"]}]}},
     NotCanaried.OBJECT_NOT_SELECTED, "objectSelector"),
    ({"matchConditions": [{"name": "only-deployments", "expression": "request.kind.kind == 'Deployment'"}]},
     NotCanaried.OBJECT_NOT_SELECTED, "matchCondition 'only-deployments' is false"),
    ({"matchConditions": [{"name": "no-dry-run", "expression": "!request.dryRun"}]},
     NotCanaried.OBJECT_NOT_SELECTED, "matchCondition 'no-dry-run' is false"),
    ({"matchConditions": [{"name": "not-me", "expression":
                           "!request.userInfo.username.startsWith('system:serviceaccount:monitoring:')"}]},
     NotCanaried.OBJECT_NOT_SELECTED, "matchCondition 'not-me' is false"),
    ({"matchConditions": [{"name": "authz", "expression": "authorizer.group('').resource('pods').check('get')"
                                                          ".allowed()"}]},
     NotCanaried.MATCH_CONDITIONS_UNDECIDED, "Kubernetes-only"),
])
def test_a_webhook_the_canary_cannot_reach_says_why(extra: dict[str, Any], reason: NotCanaried, detail: str) -> None:
    result = planned(hook(**extra))
    assert isinstance(result, Skipped) and result.reason is reason, result
    assert detail in result.detail


def test_match_conditions_see_the_object_and_the_canarys_user() -> None:
    conditions = [{"name": "labelled", "expression": f"'{CANARY_LABEL}' in object.metadata.labels"},
                  {"name": "dry", "expression": "request.dryRun"},
                  {"name": "who", "expression": f"request.userInfo.username == '{ME.username}'"},
                  {"name": "where", "expression": f"request.namespace == '{NS}' && object.data.size() > 0"}]
    assert isinstance(planned(hook(matchConditions=conditions)), CanaryTarget)


def test_the_most_telling_reason_wins_across_resources() -> None:
    """Pods match the rules but not the namespace: that, not "resource not allowed" (ConfigMaps), is said."""
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    result = planned(hook(rules=rules, namespaceSelector={"matchLabels": {"team": "other"}}))
    assert isinstance(result, Skipped) and result.reason is NotCanaried.NAMESPACE_NOT_SELECTED


def test_only_the_allowed_resources_are_used() -> None:
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    result = planned(hook(rules=rules), config=CanaryConfig(namespace=NS, resources=(CONFIG_MAPS,)))
    assert isinstance(result, Skipped) and result.reason is NotCanaried.RESOURCE_NOT_ALLOWED
    assert "configmaps" in result.detail and "pods" not in result.detail


def test_a_missing_namespace_is_said_for_every_webhook() -> None:
    result = planned(hook(), namespaces=(namespace("other"),))
    assert isinstance(result, Skipped) and result.reason is NotCanaried.NAMESPACE_MISSING


def test_every_webhook_is_planned_or_skipped() -> None:
    inventory = inventory_of(f.configuration("c", hook("a.example.com"), hook("b.example.com", policy="Ignore"),
                                             hook("c.example.com", side_effects="Some")), namespace(NS))
    plan = plan_canary(inventory, CONFIG, ME)
    assert [t.key.name for t in plan.targets] == ["a.example.com"]
    assert sorted((s.key.name, s.reason) for s in plan.skipped) == [
        ("b.example.com", NotCanaried.FAILURE_POLICY_IGNORE), ("c.example.com", NotCanaried.SIDE_EFFECTS)]


@pytest.mark.parametrize("bad", [{"namespace": ""}, {"resources": ()}, {"resources": (DEPLOYMENTS,)},
                                 {"interval": 0}, {"concurrency": 0}])
def test_a_bad_config_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="canary"):
        CanaryConfig(**{"namespace": NS, **bad})


def test_resources_parse_in_the_order_given() -> None:
    assert parse_resources(["pods", "configmaps", "pods"]) == (PODS, CONFIG_MAPS)
    with pytest.raises(ValueError, match="'secrets'"):
        parse_resources(["secrets"])
    with pytest.raises(ValueError, match="at least one"):
        parse_resources([])


# -- reading the answer --------------------------------------------------------------------------------------
HOOK = "v.example.com"
POST = 'Post "https://hook.ns.svc:443/validate?timeout=5s"'


def status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


@pytest.mark.parametrize(("code", "message", "outcome", "reason"), [
    (201, "", "admitted", ""),
    (403, f'admission webhook "{HOOK}" denied the request: no canaries here', "denied", ""),
    (400, f'admission webhook "{HOOK}" denied the request without explanation', "denied", ""),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: {POST}: proxy error '
          "from 127.0.0.1:0 while dialing 10.0.0.5:443, code 503: 503 Service Unavailable", "failed",
     Reason.UNREACHABLE),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: {POST}: context '
          "deadline exceeded", "failed", Reason.TIMEOUT),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: {POST}: dial tcp '
          "10.1.0.5:8443: connect: connection refused", "failed", Reason.CONNECTION_REFUSED),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: {POST}: tls: failed '
          'to verify certificate: x509: certificate signed by unknown authority', "failed",
     Reason.X509_UNKNOWN_AUTHORITY),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: {POST}: no endpoints '
          'available for service "hook"', "failed", Reason.NO_ENDPOINTS),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": could not get REST client: unable to load '
          "root certificates: unable to parse bytes as PEM block", "failed", Reason.INVALID_CONFIG),
    (500, f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: something new',
     "failed", "unrecognised"),
    (500, 'Internal error occurred: failed calling webhook "other.example.com": failed to call webhook: '
          f"{POST}: context deadline exceeded", "inconclusive", Inconclusive.OTHER_WEBHOOK),
    (403, 'admission webhook "other.example.com" denied the request: nope', "inconclusive",
     Inconclusive.OTHER_WEBHOOK),
    (400, 'admission webhook "other.example.com" does not support dry run', "inconclusive",
     Inconclusive.OTHER_WEBHOOK),
    (403, 'configmaps is forbidden: User "system:serviceaccount:monitoring:awe" cannot create resource '
          '"configmaps" in API group "" in the namespace "canary"', "inconclusive", Inconclusive.FORBIDDEN),
    (403, 'pods "awe-canary-1" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: '
          "pods=0", "inconclusive", Inconclusive.QUOTA),
    (403, 'pods "awe-canary-1" is forbidden: violates PodSecurity "restricted:latest": ...', "inconclusive",
     Inconclusive.REJECTED),
    (401, "Unauthorized", "inconclusive", Inconclusive.UNAUTHORIZED),
    (404, 'namespaces "canary" not found', "inconclusive", Inconclusive.NAMESPACE_NOT_FOUND),
    (409, 'configmaps "awe-canary-1" already exists', "inconclusive", Inconclusive.CONFLICT),
    (422, 'ConfigMap "awe-canary-1" is invalid: metadata.labels: Invalid value', "inconclusive",
     Inconclusive.INVALID),
    (429, "Too many requests, please try again later.", "inconclusive", Inconclusive.THROTTLED),
    (503, "the server is currently unable to handle the request", "inconclusive", Inconclusive.APISERVER_ERROR),
])
def test_the_answer_is_read_in_the_apiservers_words(code: int, message: str, outcome: str, reason: str) -> None:
    answer = {"kind": "ConfigMap"} if code < 300 else status(code, message)
    got = read_answer(HOOK, code, answer)
    assert got == (outcome, reason, message)


def test_another_webhook_failing_on_the_way_to_the_same_backend_is_this_ones_failure() -> None:
    """Two validating webhooks of one backend (a policy engine's): the apiserver returns whichever error comes
    first; a failure of the way to the same host:port is this webhook's too, any other is not."""
    other = 'Internal error occurred: failed calling webhook "other.example.com": failed to call webhook: '
    timeout = other + f"{POST}: context deadline exceeded"
    assert read_answer(HOOK, 500, status(500, timeout), "hook.ns.svc:443") == ("failed", Reason.TIMEOUT, timeout)
    assert read_answer(HOOK, 500, status(500, timeout), "other.ns.svc:443")[:2] == (
        "inconclusive", Inconclusive.OTHER_WEBHOOK)
    answer = other + f'{POST}: the server responded with the status code 500 but did not return more information'
    assert read_answer(HOOK, 500, status(500, answer), "hook.ns.svc:443")[:2] == (  # its answer, not the way
        "inconclusive", Inconclusive.OTHER_WEBHOOK)


def test_the_backend_is_what_the_apiserver_prints() -> None:
    from exporter.canary import backend_of

    inventory = inventory_of(f.configuration("c", f.webhook("s.example.com", f.service_client("ns", "hook", "")),
                                             f.webhook("u.example.com", f.url_client(8443, ""))))
    assert [backend_of(h) for h in inventory.webhooks] == ["hook.ns.svc:443", "127.0.0.1:8443"]


def test_no_answer_is_inconclusive_with_the_error() -> None:
    assert read_answer(HOOK, 0, "ClientConnectorError: cannot connect") == (
        "inconclusive", Inconclusive.APISERVER_UNREACHABLE, "ClientConnectorError: cannot connect")


def test_a_result_is_a_success_only_when_the_webhook_was_called() -> None:
    def result(outcome: Any) -> CanaryResult:
        return CanaryResult(outcome, "", "", 0, "configmaps", 0.0, 0.0)

    assert [result(o).success for o in ("admitted", "denied", "failed", "inconclusive")] == [True, True, False, None]


# -- the schedule ------------------------------------------------------------------------------------------
class RecordingApi:
    """Answers every dry run with 201 (or `answers[name]`) and records when each was sent, on the test's clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[tuple[str, float]] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold: asyncio.Event | None = None

    async def dry_run_create(self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None,
                             request_seconds: float = 60) -> tuple[int, Any]:
        meta = body.get("metadata") or {}
        name = (meta.get("annotations") or {}).get(FOR_ANNOTATION, "/").split("/", 1)[1]  # "" for whoami
        self.sent.append((name, self.clock.now()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            return self.answers.get(name, (201, dict(body)))
        finally:
            self.in_flight -= 1


def targets(*names: str) -> CanaryPlan:
    inventory = inventory_of(f.configuration("c", *(hook(n) for n in names)), namespace(NS))
    return plan_canary(inventory, CONFIG, ME)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_never_two_dry_runs_for_one_webhook_within_an_interval() -> None:
    clock = ManualClock()
    api = RecordingApi(clock)
    canary = Canary(api, CanaryConfig(namespace=NS, interval=60, jitter=0.1), clock=clock.now, sleep=clock.sleep,
                    rng=random.Random(7))
    try:
        names = [f"h{i}.example.com" for i in range(20)]
        canary.apply(targets(*names))
        for _ in range(600):  # 10 simulated minutes in 1 s steps
            clock.advance(1)
            await settle()
        per_hook: dict[str, list[float]] = {}
        for name, at in api.sent:
            per_hook.setdefault(name, []).append(at)
        assert set(per_hook) == set(names)
        for name, times in per_hook.items():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(60 <= g <= 60 * 1.1 + 1 for g in gaps), (name, gaps)  # +1: the clock moves in 1 s steps
            assert times[0] <= 61, (name, times)  # the first round spread over one interval
            assert 9 <= len(times) <= 10, (name, times)
        first = sorted(times[0] for times in per_hook.values())
        assert first[-1] - first[0] > 20, first  # spread, not a burst
        assert canary.status().requests["admitted"] == len(api.sent)
    finally:
        await canary.close()


async def test_a_replanned_webhook_keeps_its_place_in_the_schedule() -> None:
    clock = ManualClock()
    api = RecordingApi(clock)
    canary = Canary(api, CanaryConfig(namespace=NS, interval=60, jitter=0.0), clock=clock.now, sleep=clock.sleep,
                    rng=random.Random(1))
    try:
        canary.apply(targets("a.example.com"))
        while not api.sent:
            clock.advance(1)
            await settle()
        sent_at = api.sent[-1][1]
        clock.advance(5)
        await settle()
        # the webhook's selector changes: a new object, a new task; the gap still holds
        inventory = inventory_of(f.configuration("c", hook("a.example.com", objectSelector={
            "matchLabels": {"x": "y"}})), namespace(NS))
        canary.apply(plan_canary(inventory, CONFIG, ME))
        await settle()
        assert len(api.sent) == 1
        while len(api.sent) == 1:
            clock.advance(1)
            await settle()
        assert api.sent[-1][1] - sent_at >= 60
        assert json.loads(canary.targets[next(iter(canary.targets))].body)["metadata"]["labels"]["x"] == "y"
    finally:
        await canary.close()


async def test_dry_runs_in_flight_are_bounded() -> None:
    clock = ManualClock()
    api = RecordingApi(clock)
    api.hold = asyncio.Event()
    canary = Canary(api, CanaryConfig(namespace=NS, interval=10, concurrency=3), clock=clock.now, sleep=clock.sleep)
    try:
        canary.apply(targets(*(f"h{i}.example.com" for i in range(12))))
        await settle()  # every task asleep until its first (spread) turn
        clock.advance(11)
        await settle()
        assert api.in_flight == 3
        api.hold.set()
        await eventually(lambda: len(api.sent) == 12, 5, "every webhook canaried once")
        assert api.most_in_flight == 3
    finally:
        await canary.close()


async def test_results_and_skips_follow_the_plan() -> None:
    clock = ManualClock()
    api = RecordingApi(clock)
    proxy = f'{POST}: proxy error from 127.0.0.1:0 while dialing 10.0.0.5:443, code 503: 503 Service Unavailable'
    api.answers["b.example.com"] = (500, status(500, 'Internal error occurred: failed calling webhook '
                                                     f'"b.example.com": failed to call webhook: {proxy}'))
    canary = Canary(api, CanaryConfig(namespace=NS, interval=10), clock=clock.now, sleep=clock.sleep)
    try:
        inventory = inventory_of(f.configuration("c", hook("a.example.com"), hook("b.example.com"),
                                                 hook("c.example.com", side_effects="Some")), namespace(NS))
        canary.apply(plan_canary(inventory, canary.config, ME))
        await settle()
        clock.advance(11)
        await eventually(lambda: len(canary.status().results) == 2, 5, "both canaried")
        state = ExporterState()
        snapshot = state.adopt(inventory)
        registry = registry_of(canary_families(snapshot, canary.status()))

        def value(metric: str, name: str, **labels: str) -> float | None:
            return registry.get_sample_value(metric, {"configuration": "c", "name": name, "type": "validating",
                                                      **labels})

        assert value("admission_webhook_canary_success", "a.example.com") == 1
        assert value("admission_webhook_canary_success", "b.example.com") == 0
        assert value("admission_webhook_canary_failure_info", "b.example.com", reason="unreachable") == 1
        assert value("admission_webhook_not_canaried_info", "c.example.com", reason="side_effects") == 1
        assert value("admission_webhook_canary_success", "c.example.com") is None
        assert registry.get_sample_value("admission_webhook_exporter_canary_requests_total", {"outcome": "failed"}) == 1
        # a webhook gone from the inventory: its series go at once, before the canary re-plans
        smaller = inventory_of(f.configuration("c", hook("a.example.com")), namespace(NS))
        text = families_text(canary_families(state.adopt(smaller), canary.status()))
        assert "b.example.com" not in text and "c.example.com" not in text
        canary.apply(plan_canary(smaller, canary.config, ME))
        assert set(canary.status().results) == {WebhookKey("c", "a.example.com", "validating")}
        assert canary.status().skipped == ()
    finally:
        await canary.close()


async def test_adopt_plans_in_the_background_with_the_exporters_identity() -> None:
    clock = ManualClock()
    api = RecordingApi(clock)
    api.answers[""] = (201, {"status": {"userInfo": {"username": ME.username, "groups": list(ME.groups)}}})
    canary = Canary(api, CanaryConfig(namespace=NS, interval=10), clock=clock.now, sleep=clock.sleep)
    try:
        conditions = [{"name": "me", "expression": f"request.userInfo.username == '{ME.username}'"}]
        canary.adopt(inventory_of(f.configuration("c", hook(matchConditions=conditions)), namespace(NS)))
        await asyncio.wait_for(canary.planned.wait(), 10)
        assert canary.identity == ME
        assert list(canary.targets) == [WebhookKey("c", "v.example.com", "validating")]
    finally:
        await canary.close()


def registry_of(families: Any) -> CollectorRegistry:
    metrics = list(families)

    class Fixed(Collector):
        def collect(self) -> Any:
            return iter(metrics)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return registry


def families_text(families: Any) -> str:
    return generate_latest(registry_of(families)).decode()


def test_an_empty_status_makes_only_the_counter() -> None:
    snapshot = ExporterState().adopt(inventory_of(f.configuration("c", hook())))
    text = families_text(canary_families(snapshot, CanaryStatus(NS, {}, (), {})))
    assert "admission_webhook_exporter_canary_requests_total" in text
    assert Counter(line.split("{")[0] for line in text.splitlines() if not line.startswith("#")) == Counter(
        {"admission_webhook_exporter_canary_requests_total": 4})


# -- the command line ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--manifests", "tests/fixtures/audit/cycle.yaml", "--canary-namespace", "c"],
     "--canary-namespace needs a cluster"),
    (["--canary-namespace", "c", "--canary-resources", "configmaps,secrets"],
     "--canary-resources: the canary's resources are configmaps and pods; got 'secrets'"),
    (["--canary-namespace", "c", "--canary-resources", ","], "--canary-resources: the canary needs at least one"),
    (["--canary-namespace", "c", "--canary-interval", "0"], "--canary-interval: expected a number of seconds from 1"),
])
def test_bad_canary_flags_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.cli import main

    source = [] if "--manifests" in args else ["--kubeconfig", "/nonexistent"]  # never read: refused before
    assert main(["serve", "--listen-address", "127.0.0.1:0", *source, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
