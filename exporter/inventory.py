"""Assemble parsed objects into one immutable `Inventory` snapshot.

Manifest files and the live watch both hand raw objects here; nothing downstream knows where they came from.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .model import EndpointSlice, InvalidObject, Inventory, Namespace, RawObject, Service, Webhook
from .parse import (
    WEBHOOK_KINDS,
    ParseError,
    object_kind,
    object_name,
    parse_endpoint_slice,
    parse_namespace,
    parse_service,
    parse_webhook_configuration,
)

SUPPORTED_KINDS = WEBHOOK_KINDS | {"Service", "EndpointSlice", "Namespace"}


@dataclass(frozen=True)
class SourcedObject:
    """A raw object and where it came from (a file path, or "api"), for error messages."""

    source: str
    raw: RawObject


def build_inventory(objects: Iterable[SourcedObject], *, now: float | None = None) -> Inventory:
    webhooks: list[Webhook] = []
    services: dict[tuple[str, str], Service] = {}
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    namespaces: dict[str, Namespace] = {}
    invalid: list[InvalidObject] = []
    for obj in objects:
        kind = object_kind(obj.raw)
        if kind not in SUPPORTED_KINDS:
            continue
        try:
            if kind in WEBHOOK_KINDS:
                hooks, bad = parse_webhook_configuration(obj.raw, source=obj.source)
                webhooks.extend(hooks)
                invalid.extend(bad)
            elif kind == "Service":
                svc = parse_service(obj.raw)
                services[(svc.namespace, svc.name)] = svc
            elif kind == "EndpointSlice":
                eps = parse_endpoint_slice(obj.raw)
                slices[(eps.namespace, eps.service_name)].append(eps)
            else:
                ns = parse_namespace(obj.raw)
                namespaces[ns.name] = ns
        except ParseError as err:
            invalid.append(InvalidObject(source=obj.source, kind=kind, name=object_name(obj.raw), reason=str(err)))
    # Two configurations of different kinds may share a name; (configuration, name, type) stays unique.
    unique: dict[object, Webhook] = {}
    for hook in webhooks:
        if hook.key in unique:
            invalid.append(
                InvalidObject(source="inventory", kind="webhook", name=f"{hook.key.configuration}/{hook.key.name}",
                              reason="duplicate webhook: the same configuration is defined twice; keeping the last")
            )
        unique[hook.key] = hook
    return Inventory(
        webhooks=tuple(sorted(unique.values(), key=lambda h: h.key)),
        services=services,
        endpoint_slices={k: tuple(sorted(v, key=lambda s: s.name)) for k, v in slices.items()},
        namespaces=namespaces,
        invalid=tuple(invalid),
        loaded_at=time.time() if now is None else now,
    )
