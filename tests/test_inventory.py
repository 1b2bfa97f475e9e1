"""Manifests to inventory to targets: parsing, one bad object skipped, service resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import load_inventory
from exporter.manifests import ManifestError, load_manifests
from exporter.model import WebhookKey
from exporter.reasons import Reason
from exporter.targets import plan
from tests import factories as f
from tests.helpers import inventory_of, only_plan

FIXTURES = Path(__file__).parent / "fixtures"


def test_folder_with_list_multidoc_json_and_bad_objects() -> None:
    inventory = load_inventory([str(FIXTURES / "manifests-mixed")])
    assert [w.key for w in inventory.webhooks] == [
        WebhookKey("injector", "inject.sidecar.example.com", "admit"),
        WebhookKey("policy", "validate.policy.example.com", "validating"),
    ]
    reasons = sorted((b.name, b.reason) for b in inventory.invalid)
    assert reasons == [
        ("no-client", "webhook 'missing.example.com': clientConfig needs exactly one of url or service"),
        ("policy", "webhook 'broken.policy.example.com': failurePolicy 'Sometimes' is not Fail or Ignore"),
    ]
    injector = inventory.webhooks[0]
    assert (injector.failure_policy, injector.timeout_seconds) == ("Ignore", 3)
    assert injector.reinvocation_policy == "IfNeeded"
    policy = inventory.webhooks[1]
    assert (policy.failure_policy, policy.timeout_seconds, policy.match_policy) == ("Fail", 10, "Equivalent")


def test_service_resolves_named_target_port_through_slices() -> None:
    inventory = load_inventory([str(FIXTURES / "manifests-mixed")])
    plans = {p.key.name: p for p in plan(inventory)}
    policy = plans["validate.policy.example.com"]
    assert policy.endpoints_ready == 2  # ready: true, and ready unset (read as ready)
    assert [(t.host, t.port, t.server_name, t.path) for t in policy.targets] == [
        ("10.244.1.7", 9443, "policy-webhook.policy-system.svc", "/validate"),
        ("10.244.3.4", 9443, "policy-webhook.policy-system.svc", "/validate"),
    ]
    injector = plans["inject.sidecar.example.com"]
    assert [(t.host, t.port, t.server_name, t.path) for t in injector.targets] == [
        ("injector.example.com", 8443, "injector.example.com", "/inject")]
    assert injector.endpoints_ready is None


def test_unreadable_and_malformed_files_are_fatal(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        load_manifests([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad.yaml: not valid YAML: "):
        load_manifests([bad])


def test_document_that_is_not_an_object_is_reported_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("just a sentence\n---\nkind: Service\nmetadata: {name: s, namespace: n}\n")
    objects, invalid = load_manifests([path])
    assert [o.raw["kind"] for o in objects] == ["Service"]
    assert [(i.source, i.reason) for i in invalid] == [(str(path), "document is a str, not an object")]


def svc_objects(ready: list[tuple[str, bool | None]], target_port: object = "https-port") -> list[dict[str, object]]:
    return [
        f.configuration("c", f.webhook("w.example.com", f.service_client("ns", "svc", ""))),
        f.service("ns", "svc", [{"name": "web", "port": 443, "targetPort": target_port}]),
        f.endpoint_slice("ns", "svc", [{"name": "web", "port": 8443}], ready),
    ]


def test_zero_ready_endpoints_is_a_verdict() -> None:
    p = only_plan(*svc_objects([("10.0.0.1", False)]))
    assert (p.targets, p.endpoints_ready) == ((), 0)
    assert p.verdict is not None and p.verdict.reason is Reason.NO_ENDPOINTS
    assert p.verdict.detail == 'no endpoints available for service "svc"'


def test_missing_service_and_missing_port() -> None:
    p = only_plan(f.configuration("c", f.webhook("w.example.com", f.service_client("ns", "gone", ""))))
    assert p.verdict is not None and p.verdict.reason is Reason.SERVICE_NOT_FOUND
    objs = svc_objects([("10.0.0.1", True)])
    objs[0] = f.configuration("c", f.webhook("w.example.com", f.service_client("ns", "svc", "", port=8080)))
    p = only_plan(*objs)
    assert p.verdict is not None and p.verdict.reason is Reason.INVALID_CONFIG
    assert p.verdict.detail == 'no service port 8080 found for service "svc"'


def test_address_in_two_slices_is_probed_once_and_ipv6_is_bracketed() -> None:
    objs = svc_objects([("fd00::5", True)])
    objs.append(f.endpoint_slice("ns", "svc", [{"name": "web", "port": 8443}], [("fd00::5", True)], name="svc-2",
                                 address_type="IPv6"))
    p = only_plan(*objs)
    assert [t.key.endpoint for t in p.targets] == ["[fd00::5]:8443"]
    assert p.endpoints_ready == 1


def test_slice_without_ports_uses_numeric_target_port() -> None:
    objs = svc_objects([("10.0.0.9", True)], target_port=9000)
    objs[2]["ports"] = []
    p = only_plan(*objs)
    assert [(t.host, t.port) for t in p.targets] == [("10.0.0.9", 9000)]


def test_external_name_service_is_dialled_by_name() -> None:
    p = only_plan(f.configuration("c", f.webhook("w.example.com", f.service_client("ns", "ext", ""))),
                  f.service("ns", "ext", [{"port": 443}], type="ExternalName", externalName="hooks.example.net"))
    assert [(t.host, t.port, t.server_name) for t in p.targets] == [("hooks.example.net", 443, "ext.ns.svc")]


@pytest.mark.parametrize("url", ["http://plain.example.com/x", "https://", "https://host:99999/x"])
def test_bad_urls_are_invalid_config(url: str) -> None:
    p = only_plan(f.configuration("c", f.webhook("w.example.com", {"url": url})))
    assert p.verdict is not None and p.verdict.reason is Reason.INVALID_CONFIG


def test_same_webhook_name_in_both_kinds_is_two_webhooks() -> None:
    inv = inventory_of(
        f.configuration("same", f.webhook("w.example.com", {"url": "https://a.example.com"})),
        f.configuration("same", f.webhook("w.example.com", {"url": "https://a.example.com"}),
                        kind="MutatingWebhookConfiguration"),
    )
    assert sorted(w.key.type for w in inv.webhooks) == ["admit", "validating"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.update(timeoutSeconds=31), "webhook 'w.example.com': timeoutSeconds 31 is outside 1-30"),
        (lambda h: h.update(timeoutSeconds="5"), "webhook 'w.example.com': timeoutSeconds must be an integer, got '5'"),
        (lambda h: h.update(rules="all"), "webhook 'w.example.com': rules must be a list, got str"),
        (lambda h: h["clientConfig"].update(service={"name": "x"}),
         "webhook 'w.example.com': clientConfig.service.namespace is required"),
        (lambda h: h.update(namespaceSelector={"matchExpressions": [{"key": "a", "operator": "Maybe"}]}),
         "webhook 'w.example.com': namespaceSelector.matchExpressions[0].operator 'Maybe' is not In, NotIn, "
         "Exists or DoesNotExist"),
    ],
)
def test_invalid_webhooks_have_exact_errors(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    hook = f.webhook("w.example.com", {"url": "https://a.example.com"})
    mutate(hook)
    good = f.webhook("ok.example.com", {"url": "https://a.example.com"})
    inv = inventory_of(f.configuration("c", hook, good))
    assert [w.key.name for w in inv.webhooks] == ["ok.example.com"]
    assert [b.reason for b in inv.invalid] == [reason]


def test_parse_cache_reuses_untouched_objects_and_forgets_deleted_ones() -> None:
    from exporter.inventory import ParseCache, SourcedObject, build_inventory

    first = f.configuration("a", f.webhook("a.example.com", {"url": "https://a.example.com"}))
    second = f.configuration("b", f.webhook("b.example.com", {"url": "https://b.example.com"}))
    cache = ParseCache()
    one = build_inventory([SourcedObject("api", first), SourcedObject("api", second)], cache=cache)
    edited = f.configuration("b", f.webhook("b.example.com", {"url": "https://b.example.com"}, timeoutSeconds=7))
    two = build_inventory([SourcedObject("api", first), SourcedObject("api", edited)], cache=cache)
    assert two.webhooks[0] is one.webhooks[0]  # the same dict: parsed once
    assert two.webhooks[1].timeout_seconds == 7  # a replaced dict: parsed again
    three = build_inventory([SourcedObject("api", edited)], cache=cache)
    assert [w.key.configuration for w in three.webhooks] == ["b"]
    assert len(cache._entries) == 1  # the deleted object's parse is not kept
