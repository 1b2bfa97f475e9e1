"""Run every target's probe on its own schedule, in one bounded pool.

Each target gets a small task: probe at once, then every `interval` seconds with jitter (so a thousand
targets added together do not stay in lock-step). A semaphore bounds how many probes are in flight. When
the plans change, only the targets that changed are restarted, and they are probed at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping

from .log import event
from .probe import ProbeResult, probe
from .reasons import Reason
from .results import ResultStore
from .targets import Target, TargetKey, WebhookPlan

log = logging.getLogger("exporter.scheduler")

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]


class ProbeStats:
    """Counters of probes run; read by the collector, written only from the event loop."""

    def __init__(self) -> None:
        self.by_result: Counter[str] = Counter({"success": 0, "failure": 0})
        self.failures: Counter[str] = Counter({r.value: 0 for r in Reason})

    def record(self, result: ProbeResult) -> None:
        self.by_result["success" if result.success else "failure"] += 1
        if result.reason is not None:
            self.failures[result.reason.value] += 1


def targets_of(plans: Iterable[WebhookPlan]) -> dict[TargetKey, Target]:
    return {t.key: t for p in plans for t in p.targets}


class ProbeScheduler:
    def __init__(
        self,
        *,
        results: ResultStore,
        stats: ProbeStats | None = None,
        probe_fn: ProbeFn = probe,
        concurrency: int = 64,
        interval: float = 30.0,
        jitter: float = 0.1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._results = results
        self.stats = stats or ProbeStats()
        self._probe = probe_fn
        self._semaphore = asyncio.Semaphore(concurrency)
        self._interval = interval
        self._jitter = jitter
        self._targets: dict[TargetKey, Target] = {}
        self._tasks: dict[TargetKey, asyncio.Task[None]] = {}
        self._awaiting_first: set[TargetKey] = set()
        self._first_round = asyncio.Event()
        self._first_round.set()

    @property
    def targets(self) -> Mapping[TargetKey, Target]:
        return self._targets

    @property
    def first_round_done(self) -> bool:
        return self._first_round.is_set()

    async def wait_first_round(self) -> None:
        await self._first_round.wait()

    def update(self, plans: Iterable[WebhookPlan]) -> None:
        """Adopt a new set of targets: cancel the gone, start the new and the changed at once."""
        wanted = targets_of(plans)
        for key in [k for k in self._targets if k not in wanted or wanted[k] != self._targets[k]]:
            self._tasks.pop(key).cancel()
            self._awaiting_first.discard(key)
            del self._targets[key]
        for key, target in wanted.items():
            if key not in self._targets:
                self._targets[key] = target
                self._awaiting_first.add(key)
                self._tasks[key] = asyncio.create_task(self._run(target), name=f"probe {key.endpoint}")
        self._results.retain(wanted)
        if self._awaiting_first:
            self._first_round.clear()
        else:
            self._first_round.set()

    async def _probe_once(self, target: Target) -> None:
        async with self._semaphore:
            result = await self._probe(target)
        if self._targets.get(target.key) is not target:
            return  # replaced while in flight: the newer target's result wins
        self._results.put(target.key, result)
        self.stats.record(result)
        self._awaiting_first.discard(target.key)
        if not self._awaiting_first:
            self._first_round.set()
        if not result.success:
            event(log, logging.INFO, "probe_failed", configuration=target.key.webhook.configuration,
                  name=target.key.webhook.name, type=target.key.webhook.type, endpoint=target.key.endpoint,
                  reason=result.reason, duration=f"{result.duration_seconds:.3f}", detail=result.detail)

    async def _run(self, target: Target) -> None:
        while True:
            try:
                await self._probe_once(target)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not end this target's schedule
                log.exception("probe_crashed", extra={"awe_fields": {"endpoint": target.key.endpoint}})
            spread = self._interval * self._jitter
            await asyncio.sleep(max(0.0, self._interval + random.uniform(-spread, spread)))

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._targets.clear()


async def probe_once(
    plans: Iterable[WebhookPlan], *, concurrency: int = 64, probe_fn: ProbeFn = probe
) -> dict[TargetKey, ProbeResult]:
    """One round over every target, bounded in concurrency: what `check` runs."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> tuple[TargetKey, ProbeResult]:
        async with semaphore:
            return target.key, await probe_fn(target)

    pairs = await asyncio.gather(*(one(t) for t in targets_of(plans).values()))
    return dict(pairs)
