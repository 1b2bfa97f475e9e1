"""Wire the pipeline together: state, scheduler, collector, registry, HTTP server.

One `Exporter` serves every entry point that runs continuously (`serve`, `demo`, the tests); inventory
sources (manifest files, the live watch) only call `state.adopt()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from .audit import risk_metrics
from .collector import WebhookCollector
from .discovery import Discovery
from .results import ResultStore
from .scheduler import ProbeFn, ProbeScheduler, ProbeStats
from .server import MetricsServer
from .state import ExporterState


class Exporter:
    def __init__(
        self,
        *,
        concurrency: int = 64,
        interval: float = 30.0,
        jitter: float = 0.1,
        probe_fn: ProbeFn | None = None,
        extra_metrics: Iterable[Callable[[], Iterable[Metric]]] = (),
    ) -> None:
        self.results = ResultStore()
        self.stats = ProbeStats()
        kwargs = {} if probe_fn is None else {"probe_fn": probe_fn}
        self.scheduler = ProbeScheduler(results=self.results, stats=self.stats, concurrency=concurrency,
                                        interval=interval, jitter=jitter, **kwargs)
        self.state = ExporterState(scheduler=self.scheduler, results=self.results, stats=self.stats)
        self.registry = CollectorRegistry(auto_describe=False)  # never the global registry
        self.collector = WebhookCollector(self.state, extra=extra_metrics)
        self.registry.register(self.collector)
        self.collector.add_source(risk_metrics(self.state))  # the audit, recomputed when the inventory changes
        self.sources_ready: Callable[[], bool] = lambda: True
        self.server: MetricsServer | None = None
        self.on_close: list[Callable[[], Awaitable[None]]] = []  # sources to stop, before the scheduler

    def attach(self, discovery: Discovery) -> None:
        """Make a live discovery this exporter's source: its readiness, its metrics, its shutdown."""
        self.sources_ready = lambda: discovery.synced
        self.collector.add_source(discovery.metrics)
        self.on_close.append(discovery.close)

    def ready(self) -> bool:
        return self.sources_ready() and self.scheduler.first_round_done

    async def serve(self, host: str = "", port: int = 0) -> int:
        self.server = MetricsServer(self.registry, ready=self.ready, host=host, port=port)
        return await self.server.start()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
        for close in self.on_close:
            await close()
        await self.scheduler.close()
