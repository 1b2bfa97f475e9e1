"""Kubernetes objects (as decoded JSON/YAML) to the typed model.

One parser serves manifests on disk and objects from the API, so both feed identical data downstream.
A malformed object raises `ParseError` with a sentence an operator can act on; a malformed webhook inside
an otherwise good configuration is reported on its own and its siblings are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import (
    DEFAULT_SERVICE_PORT,
    DEFAULT_TIMEOUT_SECONDS,
    KIND_TO_TYPE,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    InvalidObject,
    LabelSelector,
    LabelSelectorRequirement,
    MatchCondition,
    Namespace,
    Provenance,
    RawObject,
    Rule,
    Service,
    ServicePort,
    ServiceReference,
    SkippedWebhook,
    Webhook,
    WebhookKey,
)

WEBHOOK_KINDS = frozenset(KIND_TO_TYPE)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class ParseError(ValueError):
    """The object cannot be used as written; the message says which field and why."""


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ParseError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ParseError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _str(value: Any, where: str, *, required: bool = False, default: str = "") -> str:
    if value is None:
        if required:
            raise ParseError(f"{where} is required")
        return default
    if not isinstance(value, str):
        raise ParseError(f"{where} must be a string, got {type(value).__name__}")
    if required and not value:
        raise ParseError(f"{where} must not be empty")
    return value


def _int(value: Any, where: str, *, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(f"{where} must be an integer, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    # Empty strings are meaningful here: apiGroups [""] is the core group.
    return tuple(_str(v, f"{where}[{i}]") if v is not None else "" for i, v in enumerate(_list(value, where)))


def object_kind(raw: RawObject) -> str:
    return raw.get("kind", "") if isinstance(raw.get("kind"), str) else ""


def object_name(raw: RawObject) -> str:
    meta = raw.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
        return str(meta["name"])
    return ""


def parse_label_selector(raw: Any, where: str) -> LabelSelector:
    sel = _mapping(raw, where)
    labels = _mapping(sel.get("matchLabels"), f"{where}.matchLabels")
    match_labels = tuple(sorted((str(k), _str(v, f"{where}.matchLabels.{k}")) for k, v in labels.items()))
    exprs = []
    for i, item in enumerate(_list(sel.get("matchExpressions"), f"{where}.matchExpressions")):
        ewhere = f"{where}.matchExpressions[{i}]"
        expr = _mapping(item, ewhere)
        op = _str(expr.get("operator"), f"{ewhere}.operator", required=True)
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ParseError(f"{ewhere}.operator {op!r} is not In, NotIn, Exists or DoesNotExist")
        exprs.append(
            LabelSelectorRequirement(
                key=_str(expr.get("key"), f"{ewhere}.key", required=True),
                operator=op,
                values=_strings(expr.get("values"), f"{ewhere}.values"),
            )
        )
    return LabelSelector(match_labels=match_labels, match_expressions=tuple(exprs))


def _parse_rules(raw: Any, where: str) -> tuple[Rule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, where)):
        rwhere = f"{where}[{i}]"
        rule = _mapping(item, rwhere)
        rules.append(
            Rule(
                operations=_strings(rule.get("operations"), f"{rwhere}.operations"),
                api_groups=_strings(rule.get("apiGroups"), f"{rwhere}.apiGroups"),
                api_versions=_strings(rule.get("apiVersions"), f"{rwhere}.apiVersions"),
                resources=_strings(rule.get("resources"), f"{rwhere}.resources"),
                scope=_str(rule.get("scope"), f"{rwhere}.scope", default="*"),
            )
        )
    return tuple(rules)


def parse_webhook(raw: Any, *, configuration: str, kind: str, provenance: Provenance | None = None) -> Webhook:
    """One webhook; a `ParseError` names the field relative to the webhook (the caller names the webhook)."""
    hook = _mapping(raw, "the webhook")
    name = _str(hook.get("name"), "name", required=True)
    client = _mapping(hook.get("clientConfig"), "clientConfig")
    svc_raw = client.get("service")
    url = _str(client.get("url"), "clientConfig.url") or None
    service = None
    if svc_raw is not None:
        svc = _mapping(svc_raw, "clientConfig.service")
        port = _int(svc.get("port"), "clientConfig.service.port", default=DEFAULT_SERVICE_PORT)
        if not 1 <= port <= 65535:
            raise ParseError(f"clientConfig.service.port {port} is outside 1-65535")
        service = ServiceReference(
            namespace=_str(svc.get("namespace"), "clientConfig.service.namespace", required=True),
            name=_str(svc.get("name"), "clientConfig.service.name", required=True),
            port=port,
            path=_str(svc.get("path"), "clientConfig.service.path") or None,
        )
    if (service is None) == (url is None):
        raise ParseError("clientConfig needs exactly one of url or service")
    policy = _str(hook.get("failurePolicy"), "failurePolicy", default="Fail")
    if policy not in ("Fail", "Ignore"):
        raise ParseError(f"failurePolicy {policy!r} is not Fail or Ignore")
    timeout = _int(hook.get("timeoutSeconds"), "timeoutSeconds", default=DEFAULT_TIMEOUT_SECONDS)
    if not 1 <= timeout <= 30:
        raise ParseError(f"timeoutSeconds {timeout} is outside 1-30")
    conditions = []
    for i, item in enumerate(_list(hook.get("matchConditions"), "matchConditions")):
        cond = _mapping(item, f"matchConditions[{i}]")
        conditions.append(
            MatchCondition(
                name=_str(cond.get("name"), f"matchConditions[{i}].name", required=True),
                expression=_str(cond.get("expression"), f"matchConditions[{i}].expression", required=True),
            )
        )
    return Webhook(
        key=WebhookKey(configuration=configuration, name=name, type=KIND_TO_TYPE[kind]),
        failure_policy=policy,
        side_effects=_str(hook.get("sideEffects"), "sideEffects"),
        match_policy=_str(hook.get("matchPolicy"), "matchPolicy", default="Equivalent"),
        timeout_seconds=timeout,
        admission_review_versions=_strings(hook.get("admissionReviewVersions"), "admissionReviewVersions")
        or ("v1",),
        service=service,
        url=url,
        ca_bundle=_str(client.get("caBundle"), "clientConfig.caBundle"),
        rules=_parse_rules(hook.get("rules"), "rules"),
        namespace_selector=parse_label_selector(hook.get("namespaceSelector"), "namespaceSelector"),
        object_selector=parse_label_selector(hook.get("objectSelector"), "objectSelector"),
        match_conditions=tuple(conditions),
        reinvocation_policy=_str(hook.get("reinvocationPolicy"), "reinvocationPolicy",
                                 default="Never" if KIND_TO_TYPE[kind] == "admit" else ""),
        provenance=provenance or Provenance(),
    )


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_ANNOTATION_CHARS = 512  # a provenance hint is short; a whole object in an annotation is not one


def parse_provenance(raw: RawObject) -> Provenance:
    """Labels, annotations and owners of an object, for advice only: anything malformed is left out, not fatal."""
    meta = raw.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}

    def pairs(value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, Mapping):
            return ()
        return tuple(sorted((str(k), str(v)[:MAX_ANNOTATION_CHARS]) for k, v in value.items() if k != LAST_APPLIED))

    owners = tuple((str(o.get("kind", "")), str(o.get("name", ""))) for o in meta.get("ownerReferences") or ()
                   if isinstance(o, Mapping))
    return Provenance(labels=pairs(meta.get("labels")), annotations=pairs(meta.get("annotations")), owners=owners)


def parse_webhook_configuration(raw: RawObject, *, source: str) -> tuple[list[Webhook], list[InvalidObject]]:
    """All usable webhooks of one configuration and, when some are not, one InvalidObject naming each of them.

    One per configuration, not per webhook: `inventory_invalid_objects` counts objects.
    """
    kind = object_kind(raw)
    name = object_name(raw)
    if not name:
        raise ParseError(f"{kind} without metadata.name")
    webhooks: list[Webhook] = []
    skipped: list[SkippedWebhook] = []
    seen: set[str] = set()
    provenance = parse_provenance(raw)
    for i, item in enumerate(_list(raw.get("webhooks"), "webhooks")):
        given = item.get("name") if isinstance(item, Mapping) else None
        try:
            hook = parse_webhook(item, configuration=name, kind=kind, provenance=provenance)
            if hook.key.name in seen:
                raise ParseError("appears twice in the configuration")
            seen.add(hook.key.name)
            webhooks.append(hook)
        except ParseError as err:
            skipped.append(SkippedWebhook(name=given if isinstance(given, str) else "", index=i, reason=str(err)))
    if not skipped:
        return webhooks, []
    reason = "; ".join(f"{w.label}: {w.reason}" for w in skipped)
    return webhooks, [InvalidObject(source=source, kind=kind, name=name, reason=reason, webhooks=tuple(skipped))]


def _target_port(value: Any, where: str) -> int | str | None:
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    raise ParseError(f"{where} must be an integer or a name")


def parse_service(raw: RawObject) -> Service:
    meta = _mapping(raw.get("metadata"), "metadata")
    spec = _mapping(raw.get("spec"), "spec")
    ports = []
    for i, item in enumerate(_list(spec.get("ports"), "spec.ports")):
        port = _mapping(item, f"spec.ports[{i}]")
        ports.append(
            ServicePort(
                name=_str(port.get("name"), f"spec.ports[{i}].name"),
                port=_int(port.get("port"), f"spec.ports[{i}].port", default=0),
                target_port=_target_port(port.get("targetPort"), f"spec.ports[{i}].targetPort"),
                protocol=_str(port.get("protocol"), f"spec.ports[{i}].protocol", default="TCP"),
            )
        )
    return Service(
        namespace=_str(meta.get("namespace"), "metadata.namespace", default="default"),
        name=_str(meta.get("name"), "metadata.name", required=True),
        type=_str(spec.get("type"), "spec.type", default="ClusterIP"),
        ports=tuple(ports),
        cluster_ip=_str(spec.get("clusterIP"), "spec.clusterIP"),
        external_name=_str(spec.get("externalName"), "spec.externalName"),
    )


def parse_endpoint_slice(raw: RawObject) -> EndpointSlice:
    meta = _mapping(raw.get("metadata"), "metadata")
    labels = _mapping(meta.get("labels"), "metadata.labels")
    ports = []
    for i, item in enumerate(_list(raw.get("ports"), "ports")):
        port = _mapping(item, f"ports[{i}]")
        number = port.get("port")
        ports.append(
            EndpointPort(
                name=_str(port.get("name"), f"ports[{i}].name"),
                port=None if number is None else _int(number, f"ports[{i}].port", default=0),
                protocol=_str(port.get("protocol"), f"ports[{i}].protocol", default="TCP"),
            )
        )
    endpoints = []
    for i, item in enumerate(_list(raw.get("endpoints"), "endpoints")):
        ep = _mapping(item, f"endpoints[{i}]")
        conditions = _mapping(ep.get("conditions"), f"endpoints[{i}].conditions")
        ready = conditions.get("ready")
        endpoints.append(
            Endpoint(addresses=_strings(ep.get("addresses"), f"endpoints[{i}].addresses"), ready=ready is not False)
        )
    return EndpointSlice(
        namespace=_str(meta.get("namespace"), "metadata.namespace", default="default"),
        name=_str(meta.get("name"), "metadata.name", required=True),
        service_name=_str(labels.get(SERVICE_NAME_LABEL), f"metadata.labels[{SERVICE_NAME_LABEL}]", required=True),
        address_type=_str(raw.get("addressType"), "addressType", default="IPv4"),
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def parse_namespace(raw: RawObject) -> Namespace:
    meta = _mapping(raw.get("metadata"), "metadata")
    name = _str(meta.get("name"), "metadata.name", required=True)
    labels = dict(_mapping(meta.get("labels"), "metadata.labels"))
    # The apiserver sets this label on every namespace (1.21+); manifests on disk often lack it.
    labels.setdefault("kubernetes.io/metadata.name", name)
    return Namespace(name=name, labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))


def flatten_lists(objects: Iterable[Any]) -> Iterable[Any]:
    """Expand `kind: List` (and `*List`, as `kubectl get -o yaml` writes) into their items."""
    for obj in objects:
        is_list = isinstance(obj, Mapping) and str(obj.get("kind", "")).endswith("List")
        if is_list and isinstance(obj.get("items"), list):
            yield from flatten_lists(obj["items"])
        else:
            yield obj
