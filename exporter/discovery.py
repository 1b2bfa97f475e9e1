"""Follow every webhook in a live cluster: list once, then watch, and feed the same inventory as manifests.

Watched: both webhook configuration kinds and Namespaces (for their labels) cluster-wide; and, only for the
namespaces that hold a webhook's backend Service, that namespace's Services and the EndpointSlices of the
referenced Services (label selector `kubernetes.io/service-name in (...)`). Those backend watches are added,
narrowed and dropped as webhooks come and go. Above `CLUSTER_WIDE_ABOVE` backend namespaces, one cluster-wide
Services watch and one cluster-wide EndpointSlices watch (the selector naming every referenced Service) replace
the pair per namespace: each watch holds a connection, its buffers and a task, for as long as it runs. Only the
referenced Services and their slices are kept, in either mode. Each watch resumes from its last resourceVersion
(bookmarks keep it fresh) and lists again only after `410 Gone`; errors back off. Changes reach the inventory
after a short debounce, so a burst of events costs one rebuild. How the watches fare is plain data (`status()`); the
collector makes the metric families of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .inventory import ParseCache, SourcedObject, build_inventory
from .kubeapi import (
    ENDPOINT_SLICES,
    MUTATING_CONFIGS,
    NAMESPACES,
    SERVICES,
    VALIDATING_CONFIGS,
    ApiError,
    Gone,
    KubeApi,
    Resource,
    sleep_backoff,
)
from .log import event
from .model import Inventory
from .parse import SERVICE_NAME_LABEL

log = logging.getLogger("exporter.discovery")

ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Keep = Callable[[Mapping[str, Any]], bool]  # which listed or watched objects are kept
DEBOUNCE_SECONDS = 0.05
# Backend namespaces above which their Services and EndpointSlices are watched cluster-wide: a pair of watches
# per namespace costs two connections, each with its TLS buffers, per namespace; past ten namespaces the
# pair of cluster-wide watches costs less, and a webhook change relists every Service once (not per namespace).
CLUSTER_WIDE_ABOVE = 10
ALL_NAMESPACES = "*"  # the key of the cluster-wide backend watches (no namespace is named so)
EMPTY_WATCH_SECONDS = 1.0  # a watch closed cleanly sooner than this, with no event, counts as a failure


WATCHED = (VALIDATING_CONFIGS, MUTATING_CONFIGS, NAMESPACES, SERVICES, ENDPOINT_SLICES)


def _key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass(frozen=True)
class WatchStatus:
    """How discovery's watches fare, by resource (plural), as one copy: what the watch metrics show."""

    up: Mapping[str, bool]  # resources watched now: True while every watch of it is established
    restarts: Mapping[str, int]  # every watched resource, 0 when never restarted
    last_event: Mapping[str, float]  # resources whose watches delivered an event or bookmark, Unix time
    requests: Mapping[tuple[str, str], int]  # requests made to the Kubernetes API, by (verb, resource)


@dataclass
class WatchHealth:
    """Per-resource watch health, written by the watches; several namespaced watches share one resource."""

    up: dict[str, bool] = field(default_factory=dict)  # per watch id
    restarts: dict[str, int] = field(default_factory=dict)  # per resource
    last_event: dict[str, float] = field(default_factory=dict)  # per resource
    last_error: str = ""


class Watch:
    """One list+watch loop for one resource (optionally one namespace and label selector)."""

    def __init__(self, api: KubeApi, resource: Resource, *, health: WatchHealth,
                 on_reset: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, Mapping[str, Any]], None],
                 namespace: str | None = None, label_selector: str | None = None,
                 keep: Keep | None = None, server_timeout: int = 290, idle_timeout: float = 330) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.keep = keep
        self.health = health
        self.on_reset = on_reset
        self.on_event = on_event
        self.server_timeout = server_timeout
        self.idle_timeout = idle_timeout
        self.id = f"{resource.plural}/{namespace or '*'}"
        self.synced = asyncio.Event()

    def _set_up(self, up: bool) -> None:
        self.health.up[self.id] = up

    def _restarted(self, why: str, level: int = logging.WARNING) -> None:
        plural = self.resource.plural
        self.health.last_error = f"{plural}: {why}"
        self.health.restarts[plural] = self.health.restarts.get(plural, 0) + 1
        event(log, level, "watch_restart", resource=plural, namespace=self.namespace or "", why=why)

    async def run(self) -> None:
        version: str | None = None
        failures = 0
        try:
            while True:
                try:
                    if version is None:
                        items, version = await self.api.list(self.resource, namespace=self.namespace,
                                                             label_selector=self.label_selector, keep=self.keep)
                        self.on_reset(items)
                        self.synced.set()
                        self._set_up(True)  # the API just answered; the watch below follows at once
                    # Otherwise up only once the server accepts the watch, not when we ask: a request into a
                    # black hole must not read as an established watch until its idle timeout says otherwise.
                    opened, events = time.monotonic(), 0
                    async for kind, obj in self.api.watch(
                            self.resource, resource_version=version, namespace=self.namespace,
                            label_selector=self.label_selector, server_timeout=self.server_timeout,
                            idle_timeout=self.idle_timeout, on_open=lambda: self._set_up(True)):
                        failures, events = 0, events + 1
                        self.health.last_event[self.resource.plural] = time.time()
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if kind != "BOOKMARK":
                            # One no longer kept (relabelled, say) is gone for us, as if it had been deleted.
                            self.on_event("DELETED" if self.keep and not self.keep(obj) else kind, obj)
                    # The server ended the watch at its timeout: resume from where we are, no list. One that
                    # ends at once with nothing said is a server refusing quietly: back off, do not spin.
                    if events == 0 and time.monotonic() - opened < EMPTY_WATCH_SECONDS:
                        failures += 1
                        await sleep_backoff(failures)
                except Gone:
                    version = None
                    self._restarted("410 Gone: resourceVersion compacted; listing again", logging.INFO)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                    self._set_up(False)
                    failures += 1
                    self._restarted(f"{type(err).__name__}: {err}")
                    await sleep_backoff(failures)
        finally:
            self.health.up.pop(self.id, None)


def _name(obj: Mapping[str, Any]) -> str:
    return _key(obj)[1]


def _service_name(obj: Mapping[str, Any]) -> str:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(labels.get(SERVICE_NAME_LABEL) or "")


def _named(names: frozenset[str]) -> Keep:
    return lambda obj: _name(obj) in names


def _for_services(names: frozenset[str]) -> Keep:
    return lambda obj: _service_name(obj) in names


def _referenced_by(wanted: Mapping[str, frozenset[str]], service: Callable[[Mapping[str, Any]], str]) -> Keep:
    return lambda obj: service(obj) in wanted.get(_key(obj)[0], ())


@dataclass
class _BackendWatches:
    names: frozenset[str]  # the referenced Services: names in one namespace, or "namespace/name" cluster-wide
    tasks: list[asyncio.Task[None]]
    watches: list[Watch]


def _ignore(_: Inventory) -> None:
    pass


class Discovery:
    """Keeps the in-memory objects, the watches that feed them, and hands inventories to `adopt`."""

    def __init__(self, api: KubeApi, *, server_timeout: int = 290, idle_timeout: float = 330,
                 cluster_wide_above: int = CLUSTER_WIDE_ABOVE) -> None:
        self.api = api
        self._cluster_wide_above = cluster_wide_above
        self._adopt: Callable[[Inventory], None] = _ignore
        self._server_timeout = server_timeout
        self._idle_timeout = idle_timeout
        self.health = WatchHealth()
        self._objects: dict[str, dict[ObjectKey, Mapping[str, Any]]] = {r.plural: {} for r in WATCHED}
        self._config_watches: list[Watch] = []
        self._backends: dict[str, _BackendWatches] = {}
        self._dirty = asyncio.Event()
        self._parsed = ParseCache()
        self._synced_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.inventory = Inventory()

    # -- objects -----------------------------------------------------------------------------------------
    def _reset(self, plural: str, namespace: str | None) -> Callable[[list[dict[str, Any]]], None]:
        def reset(items: list[dict[str, Any]]) -> None:
            store = self._objects[plural]
            for key in [k for k in store if namespace is None or k[0] == namespace]:
                del store[key]
            for item in items:
                store[_key(item)] = item
            self._dirty.set()
        return reset

    def _apply(self, plural: str) -> Callable[[str, Mapping[str, Any]], None]:
        def apply(kind: str, obj: Mapping[str, Any]) -> None:
            store = self._objects[plural]
            if kind == "DELETED":
                store.pop(_key(obj), None)
            else:
                store[_key(obj)] = obj
            self._dirty.set()
        return apply

    def _watch(self, resource: Resource, namespace: str | None = None, selector: str | None = None,
               keep: Keep | None = None) -> Watch:
        return Watch(self.api, resource, health=self.health, on_reset=self._reset(resource.plural, namespace),
                     on_event=self._apply(resource.plural), namespace=namespace, label_selector=selector,
                     keep=keep, server_timeout=self._server_timeout, idle_timeout=self._idle_timeout)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, adopt: Callable[[Inventory], None] = _ignore) -> None:
        """Start watching; every rebuilt inventory goes to `adopt` (or is only kept in `self.inventory`)."""
        self._adopt = adopt
        # Namespaces (labels only) let the audit evaluate namespaceSelectors against the live cluster.
        self._config_watches = [self._watch(VALIDATING_CONFIGS), self._watch(MUTATING_CONFIGS),
                                self._watch(NAMESPACES)]
        self._tasks = [asyncio.create_task(w.run(), name=f"watch {w.id}") for w in self._config_watches]
        self._tasks.append(asyncio.create_task(self._rebuild_loop(), name="discovery rebuild"))

    @property
    def last_error(self) -> str:
        return self.health.last_error

    @property
    def synced(self) -> bool:
        """Every watch has listed once and the inventory is rebuilt from them: it reflects the cluster (until
        then /readyz says no).

        Read from the HTTP server's thread too, even while a rebuild runs on the event loop: the backends are
        copied in one step (`list()` of the values), and a rebuild clears `_dirty` only once it is over, so the
        configurations listed before their backends' watches are started never read as synced."""
        return self._watches_synced() and not self._dirty.is_set()

    def _watches_synced(self) -> bool:
        watches = [*self._config_watches, *(w for b in list(self._backends.values()) for w in b.watches)]
        return bool(watches) and all(w.synced.is_set() for w in watches)

    async def close(self) -> None:
        tasks = [*self._tasks, *(t for b in self._backends.values() for t in b.tasks)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._backends.clear()
        await self.api.close()

    # -- rebuild -----------------------------------------------------------------------------------------
    async def _rebuild_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            try:
                self.rebuild()  # no await inside: the events it has not seen arrive after it, and set _dirty again
            except Exception:  # a bug here must not stop discovery; the last inventory stays in force
                log.exception("rebuild_failed")
            finally:
                self._dirty.clear()

    def _objects_for_inventory(self, referenced: Mapping[str, frozenset[str]]) -> Iterator[SourcedObject]:
        for plural, store in self._objects.items():
            for (namespace, name), obj in store.items():
                if plural == "services" and name not in referenced.get(namespace, ()):
                    continue  # the namespace watch sees every Service; keep only webhook backends
                yield SourcedObject("api", obj)

    def _referenced(self) -> dict[str, frozenset[str]]:
        """The backend Services the webhook configurations name, by namespace."""
        refs: dict[str, set[str]] = {}
        for plural in (VALIDATING_CONFIGS.plural, MUTATING_CONFIGS.plural):
            for obj in self._objects[plural].values():
                for hook in self._parsed.parse(SourcedObject("api", obj)).webhooks:
                    if hook.service is not None:
                        refs.setdefault(hook.service.namespace, set()).add(hook.service.name)
        return {ns: frozenset(names) for ns, names in refs.items()}

    def rebuild(self) -> None:
        # Objects the last events did not touch are the same dicts as before, so their parse is reused: a change
        # costs one parse, not one per object in the cluster.
        referenced = self._referenced()
        self._reconcile_backends(referenced)
        self.inventory = build_inventory(self._objects_for_inventory(referenced), cache=self._parsed)
        self._adopt(self.inventory)
        if self._watches_synced():
            self._synced_event.set()

    async def wait_synced(self) -> None:
        await self._synced_event.wait()

    def _reconcile_backends(self, wanted: Mapping[str, frozenset[str]]) -> None:
        if len(wanted) > self._cluster_wide_above:
            self._reconcile_cluster_wide(wanted)
            return
        gone = [ns for ns in self._backends if ns not in wanted]  # the cluster-wide pair too, if it ran
        for namespace in gone:
            self._stop_backend(namespace)
        if gone:
            self._drop_backend_objects(lambda namespace: namespace not in wanted)
        for namespace, names in wanted.items():
            current = self._backends.get(namespace)
            if current is not None and current.names == names:
                continue
            if current is not None:
                self._stop_backend(namespace)
            selector = f"{SERVICE_NAME_LABEL} in ({','.join(sorted(names))})"
            watches = [self._watch(SERVICES, namespace, keep=_named(names)),
                       self._watch(ENDPOINT_SLICES, namespace, selector, keep=_for_services(names))]
            self._start_backend(namespace, names, watches)

    def _reconcile_cluster_wide(self, wanted: Mapping[str, frozenset[str]]) -> None:
        """One Services and one EndpointSlices watch for every backend namespace, restarted (relisted) when the
        referenced Services change: that is when a webhook configuration changes, not on endpoint churn."""
        pairs = frozenset(f"{ns}/{name}" for ns, names in wanted.items() for name in names)
        current = self._backends.get(ALL_NAMESPACES)
        if current is not None and current.names == pairs:
            return
        for namespace in list(self._backends):
            self._stop_backend(namespace)
        self._drop_backend_objects(lambda namespace: namespace not in wanted)
        names = sorted({name for names in wanted.values() for name in names})
        # Server-side, the selector leaves out the slices of every other Service; `keep` drops those of a
        # Service of the same name in another namespace.
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(names)})"
        watches = [self._watch(SERVICES, keep=_referenced_by(wanted, _name)),
                   self._watch(ENDPOINT_SLICES, selector=selector, keep=_referenced_by(wanted, _service_name))]
        self._start_backend(ALL_NAMESPACES, pairs, watches)

    def _start_backend(self, key: str, names: frozenset[str], watches: list[Watch]) -> None:
        tasks = [asyncio.create_task(w.run(), name=f"watch {w.id}") for w in watches]
        self._backends[key] = _BackendWatches(names=names, tasks=tasks, watches=watches)
        event(log, logging.DEBUG, "backend_watch", namespace=key, services=len(names))

    def _drop_backend_objects(self, gone: Callable[[str], bool]) -> None:
        """Forget the Services and slices of namespaces no longer watched."""
        for plural in (SERVICES.plural, ENDPOINT_SLICES.plural):
            store = self._objects[plural]
            for key in [k for k in store if gone(k[0])]:
                del store[key]

    def _stop_backend(self, namespace: str) -> None:
        backend = self._backends.pop(namespace)
        for task in backend.tasks:
            task.cancel()  # run()'s finally drops its health entry

    # -- status ----------------------------------------------------------------------------------------
    def status(self) -> WatchStatus:
        """A copy of the watch health; safe from a scrape's worker thread (each dict() is one C-level copy)."""
        per_resource: dict[str, bool] = {}
        for watch_id, ok in dict(self.health.up).items():
            plural = watch_id.split("/", 1)[0]
            per_resource[plural] = per_resource.get(plural, True) and ok
        restarts = dict(self.health.restarts)
        return WatchStatus(up=per_resource, restarts={r.plural: restarts.get(r.plural, 0) for r in WATCHED},
                           last_event=dict(self.health.last_event), requests=dict(self.api.requests))
