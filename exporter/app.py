"""Wire the pipeline together: state, scheduler, audit, collector, registry, HTTP server.

One `Exporter` serves every entry point that runs continuously (`serve`, `demo`, the tests). Its inventory
comes either from the caller (`adopt`, e.g. manifest files) or from a live `Discovery` given at construction
and started by `start()`. Every adopted inventory becomes a snapshot (`exporter.state`); the exporter hands
its plans to the scheduler, and audits it in the background: one audit at a time, on a worker thread, always
of the latest snapshot (a burst of inventories costs one audit, not one each), so neither the event loop nor
a scrape waits on it. An audit costs seconds of CPU at a few thousand webhooks, and in a live cluster every
EndpointSlice change is a new inventory: so under churn audits are throttled, the next starting no sooner
than `audit_interval` seconds after the last ended (the first at once, and those of a discovery still
listing do not count), and scrapes serve the last findings.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from .audit import Finding, audit
from .canary import Canary
from .collector import ExporterCollector, Scrape
from .discovery import Discovery
from .exposition import EOF
from .kubeapi import small_tls_read_buffers
from .model import Inventory
from .probe import probe
from .results import ResultStore
from .scheduler import Clock, ProbeFn, ProbeScheduler, Sleep
from .server import MetricsServer
from .state import ExporterState, Snapshot
from .webconfig import WebSecurity

log = logging.getLogger("exporter.app")

# At 2,000 webhooks an audit takes 5-15 s of CPU (bench/audit_cost.py): a minute's rest after each bounds it to
# a fraction of a core under constant churn, and a risk still shows within about a minute of the change.
AUDIT_INTERVAL_SECONDS = 60.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc; elsewhere there is none
    except (AttributeError, OSError):
        return None
    return trim


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's `malloc_trim`).

    An audit's working set at 2,000 webhooks is 70 MiB, mostly dicts, lists and strings larger than pymalloc's
    512 bytes, so glibc's heap: freed, it stays in the process's RSS (111 MiB after an audit, 48 MiB after a
    trim; bench/memory_cost.py). The trim walks the heap once: milliseconds, once per audit.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _audit(snapshot: Snapshot, exporter_namespace: str | None) -> tuple[Finding, ...]:
    """The audit, on a worker thread, and its working set given back to the OS there (off the event loop)."""
    findings = audit(snapshot.inventory, snapshot.plans, exporter_namespace=exporter_namespace)
    release_free_memory()
    return findings


class Exporter:
    def __init__(
        self,
        *,
        concurrency: int = 64,
        interval: float = 30.0,
        jitter: float = 0.1,
        exporter_namespace: str | None = None,
        probe_fn: ProbeFn | None = None,
        discovery: Discovery | None = None,
        canary: Canary | None = None,
        audit_interval: float = AUDIT_INTERVAL_SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        small_tls_read_buffers()  # watches and probes: 32 KiB per TLS connection, not 256 KiB
        self.state = ExporterState()
        self.collector = ExporterCollector(self.scrape)
        self.results = ResultStore(on_put=self.collector.result_changed)
        self.scheduler = ProbeScheduler(results=self.results, probe_fn=probe_fn or probe, concurrency=concurrency,
                                        interval=interval, jitter=jitter)
        self.exporter_namespace = exporter_namespace  # where this exporter runs: the audit asks if its Pods get in
        self.discovery = discovery
        self.canary = canary  # opt-in: dry-run creates through the apiserver (exporter.canary)
        self.registry = CollectorRegistry(auto_describe=False)  # never the global registry
        self.registry.register(self.collector)
        self.security: WebSecurity | None = None  # serve's --web.config.file: its reloads are on /metrics too
        self.server: MetricsServer | None = None
        self._audit_interval = audit_interval
        self._clock = clock
        self._sleep = sleep
        self._audit_wanted = asyncio.Event()
        self._audited = asyncio.Event()
        self._audited.set()  # the empty snapshot has nothing to audit
        self._auditor: asyncio.Task[None] | None = None
        self.audits = 0  # audits run: a test reads how the throttle folded a burst of inventories

    def adopt(self, inventory: Inventory) -> None:
        """A new inventory: a new snapshot, its plans to the scheduler and its text rendered, its audit queued."""
        snapshot = self.state.adopt(inventory)
        self.scheduler.update(snapshot.plans)
        self.collector.prepare(snapshot.plans, self.results.snapshot())
        if self.canary is not None:
            self.canary.adopt(inventory)
        self._audited.clear()
        self._audit_wanted.set()
        if self._auditor is None:
            self._auditor = asyncio.create_task(self._audit_latest(), name="audit")

    async def _audit_latest(self) -> None:
        ended: float | None = None
        while True:
            await self._audit_wanted.wait()
            if ended is not None and (rest := ended + self._audit_interval - self._clock()) > 0:
                await self._sleep(rest)  # inventories adopted meanwhile fold into the one audit below
            self._audit_wanted.clear()
            snapshot = self.state.snapshot
            # An inventory from watches still listing is partial: its audit must not hold back the next.
            complete = self.discovery is None or self.discovery.synced
            try:
                findings = await asyncio.to_thread(_audit, snapshot, self.exporter_namespace)
            except Exception:  # a bug in a rule must not stop auditing; the last findings stay in force
                log.exception("audit_failed")
                continue
            finally:
                ended = self._clock() if complete else None
                self.audits += 1
            if not self.state.publish_findings(snapshot, findings).audit_pending:
                self._audited.set()

    async def wait_audited(self) -> None:
        """Until the current snapshot's findings are its own (not carried over from an earlier one)."""
        await self._audited.wait()

    def scrape(self) -> Scrape:
        """What a scrape formats: each source read once (called on the scrape's worker thread)."""
        return Scrape(snapshot=self.state.snapshot, results=self.results.snapshot(), probes=self.scheduler.counts(),
                      watches=self.discovery.status() if self.discovery is not None else None,
                      canary=self.canary.status() if self.canary is not None else None,
                      web_config=self.security.status() if self.security is not None else None)

    async def start(self) -> None:
        """Start following the live discovery, if there is one."""
        if self.discovery is not None:
            await self.discovery.start(self.adopt)

    def ready(self) -> bool:
        synced = self.discovery is None or self.discovery.synced
        return synced and self.scheduler.first_round_done

    async def serve(self, host: str = "", port: int = 0, *, security: WebSecurity | None = None,
                    health_host: str = "", health_port: int | None = None) -> int:
        """Serve /metrics; `security` (a --web.config.file) adds TLS and authentication, and its reload metrics."""
        self.security = security
        self.server = MetricsServer(self.registry, ready=self.ready, host=host, port=port, security=security,
                                    health_host=health_host, health_port=health_port, text=self.text)
        return await self.server.start()

    def text(self, openmetrics: bool = False) -> bytes:
        """The registry's exposition (text format, or OpenMetrics): the collector's text kept ready."""
        return self.collector.text(openmetrics=openmetrics) + (EOF.encode() if openmetrics else b"")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.canary is not None:  # before discovery, which closes the API session the canary sends on
            await self.canary.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self._auditor is not None:
            self._auditor.cancel()
            await asyncio.gather(self._auditor, return_exceptions=True)
            self._auditor = None
        await self.scheduler.close()
