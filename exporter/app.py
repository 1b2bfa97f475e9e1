"""Wire the pipeline together: state, scheduler, audit, collector, registry, HTTP server.

One `Exporter` serves every entry point that runs continuously (`serve`, `demo`, the tests). Its inventory
comes either from the caller (`adopt`, e.g. manifest files) or from a live `Discovery` given at construction
and started by `start()`. Every adopted inventory becomes a snapshot (`exporter.state`); the exporter hands
its plans to the scheduler, and audits it in the background: one audit at a time, on a worker thread, always
of the latest snapshot (a burst of inventories costs one audit, not one each), so neither the event loop nor
a scrape waits on it.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from .audit import audit
from .canary import Canary
from .collector import ExporterCollector, Scrape
from .discovery import Discovery
from .model import Inventory
from .probe import probe
from .results import ResultStore
from .scheduler import ProbeFn, ProbeScheduler
from .server import MetricsServer
from .state import ExporterState
from .webconfig import WebSecurity

log = logging.getLogger("exporter.app")


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
    ) -> None:
        self.state = ExporterState()
        self.results = ResultStore()
        self.scheduler = ProbeScheduler(results=self.results, probe_fn=probe_fn or probe, concurrency=concurrency,
                                        interval=interval, jitter=jitter)
        self.exporter_namespace = exporter_namespace  # where this exporter runs: the audit asks if its Pods get in
        self.discovery = discovery
        self.canary = canary  # opt-in: dry-run creates through the apiserver (exporter.canary)
        self.registry = CollectorRegistry(auto_describe=False)  # never the global registry
        self.registry.register(ExporterCollector(self.scrape))
        self.server: MetricsServer | None = None
        self._audit_wanted = asyncio.Event()
        self._audited = asyncio.Event()
        self._audited.set()  # the empty snapshot has nothing to audit
        self._auditor: asyncio.Task[None] | None = None

    def adopt(self, inventory: Inventory) -> None:
        """A new inventory: a new snapshot, its plans to the scheduler, its audit queued."""
        snapshot = self.state.adopt(inventory)
        self.scheduler.update(snapshot.plans)
        if self.canary is not None:
            self.canary.adopt(inventory)
        self._audited.clear()
        self._audit_wanted.set()
        if self._auditor is None:
            self._auditor = asyncio.create_task(self._audit_latest(), name="audit")

    async def _audit_latest(self) -> None:
        while True:
            await self._audit_wanted.wait()
            self._audit_wanted.clear()
            snapshot = self.state.snapshot
            try:
                findings = await asyncio.to_thread(audit, snapshot.inventory, snapshot.plans,
                                                   exporter_namespace=self.exporter_namespace)
            except Exception:  # a bug in a rule must not stop auditing; the last findings stay in force
                log.exception("audit_failed")
                continue
            if not self.state.publish_findings(snapshot, findings).audit_pending:
                self._audited.set()

    async def wait_audited(self) -> None:
        """Until the current snapshot's findings are its own (not carried over from an earlier one)."""
        await self._audited.wait()

    def scrape(self) -> Scrape:
        """What a scrape formats: each source read once (called on the scrape's worker thread)."""
        return Scrape(snapshot=self.state.snapshot, results=self.results.snapshot(), probes=self.scheduler.counts(),
                      watches=self.discovery.status() if self.discovery is not None else None,
                      canary=self.canary.status() if self.canary is not None else None)

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
        if security is not None:
            self.registry.register(security)
        self.server = MetricsServer(self.registry, ready=self.ready, host=host, port=port, security=security,
                                    health_host=health_host, health_port=health_port)
        return await self.server.start()

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
