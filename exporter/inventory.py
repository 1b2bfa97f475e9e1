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


@dataclass(frozen=True)
class Parsed:
    """What one raw object contributes to an inventory."""

    webhooks: tuple[Webhook, ...] = ()
    service: Service | None = None
    endpoint_slice: EndpointSlice | None = None
    namespace: Namespace | None = None
    invalid: tuple[InvalidObject, ...] = ()


def parse_object(obj: SourcedObject) -> Parsed:
    kind = object_kind(obj.raw)
    try:
        if kind in WEBHOOK_KINDS:
            hooks, bad = parse_webhook_configuration(obj.raw, source=obj.source)
            return Parsed(webhooks=tuple(hooks), invalid=tuple(bad))
        if kind == "Service":
            return Parsed(service=parse_service(obj.raw))
        if kind == "EndpointSlice":
            return Parsed(endpoint_slice=parse_endpoint_slice(obj.raw))
        if kind == "Namespace":
            return Parsed(namespace=parse_namespace(obj.raw))
    except ParseError as err:
        return Parsed(invalid=(InvalidObject(source=obj.source, kind=kind, name=object_name(obj.raw),
                                             reason=str(err)),))
    return Parsed()


class ParseCache:
    """Parsed objects by identity of their raw dict, for repeated builds over a live store.

    The watch store keeps the same dict for an object until an event replaces it, so a rebuild after one event
    parses one object, not all of them. Each build keeps only the entries it used: nothing outlives its object.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[RawObject, Parsed]] = {}
        self._next: dict[int, tuple[RawObject, Parsed]] = {}

    def parse(self, obj: SourcedObject) -> Parsed:
        entry = self._entries.get(id(obj.raw))
        if entry is None or entry[0] is not obj.raw:
            entry = (obj.raw, parse_object(obj))
        self._next[id(obj.raw)] = entry
        return entry[1]

    def finish_build(self) -> None:
        self._entries, self._next = self._next, {}


def build_inventory(objects: Iterable[SourcedObject], *, now: float | None = None,
                    cache: ParseCache | None = None) -> Inventory:
    webhooks: dict[tuple[str, str], tuple[str, Parsed]] = {}  # (kind, name) -> (source, parsed)
    services: dict[tuple[str, str], Service] = {}
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    namespaces: dict[str, Namespace] = {}
    invalid: list[InvalidObject] = []
    for obj in objects:
        kind = object_kind(obj.raw)
        if kind not in SUPPORTED_KINDS:
            continue
        parsed = cache.parse(obj) if cache is not None else parse_object(obj)
        if kind in WEBHOOK_KINDS and (name := object_name(obj.raw)):
            # The API holds one object per kind and name; manifests can hold two. The later one is used whole
            # (never a mix of both), and the earlier one is reported as one skipped object.
            earlier = webhooks.pop((kind, name), None)
            if earlier is not None:
                invalid.append(InvalidObject(source=earlier[0], kind=kind, name=name,
                                             reason=f"defined again in {obj.source}; the later definition is used"))
            webhooks[(kind, name)] = (obj.source, parsed)
            continue
        invalid.extend(parsed.invalid)
        if parsed.service is not None:
            services[(parsed.service.namespace, parsed.service.name)] = parsed.service
        if parsed.endpoint_slice is not None:
            eps = parsed.endpoint_slice
            slices[(eps.namespace, eps.service_name)].append(eps)
        if parsed.namespace is not None:
            namespaces[parsed.namespace.name] = parsed.namespace
    if cache is not None:
        cache.finish_build()
    for _, parsed in webhooks.values():
        invalid.extend(parsed.invalid)
    return Inventory(
        webhooks=tuple(sorted((hook for _, parsed in webhooks.values() for hook in parsed.webhooks),
                              key=lambda h: h.key)),
        services=services,
        endpoint_slices={k: tuple(sorted(v, key=lambda s: s.name)) for k, v in slices.items()},
        namespaces=namespaces,
        invalid=tuple(invalid),
        loaded_at=time.time() if now is None else now,
    )
