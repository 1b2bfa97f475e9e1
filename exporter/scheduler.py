"""Run every target's probe on its own schedule, in one bounded pool.

Each target gets a small task: probe at once, then `interval` seconds (with jitter, so a thousand targets
added together do not stay in lock-step) after each probe ends. A semaphore bounds how many probes are in
flight. When the plans change, only the targets that changed are restarted, and they are probed at once.

The scheduler reads time only through its `clock` and waits only through its `sleep` (both injectable), so a
test can drive a schedule deterministically; it exposes plain data: the targets, when each is next due, and
counts of probes run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from .log import event
from .probe import ProbeResult, probe
from .reasons import Reason
from .results import ResultStore
from .targets import Target, TargetKey, WebhookPlan

log = logging.getLogger("exporter.scheduler")

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class ProbeCounts:
    """Probes run since start: by result (`success`, `failure`) and failures by reason, every reason present."""

    by_result: Mapping[str, int]
    failures: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_result.values())


class _Counts:
    """The counters behind `ProbeCounts`; written only from the event loop."""

    def __init__(self) -> None:
        self.by_result: Counter[str] = Counter({"success": 0, "failure": 0})
        self.failures: Counter[str] = Counter({r.value: 0 for r in Reason})

    def record(self, result: ProbeResult) -> None:
        self.by_result["success" if result.success else "failure"] += 1
        if result.reason is not None:
            self.failures[result.reason.value] += 1

    def read(self) -> ProbeCounts:
        # dict() of a dict is one C-level copy: whole under the GIL when read from a scrape's worker thread.
        return ProbeCounts(by_result=dict(self.by_result), failures=dict(self.failures))


def targets_of(plans: Iterable[WebhookPlan]) -> dict[TargetKey, Target]:
    return {t.key: t for p in plans for t in p.targets}


class ProbeScheduler:
    def __init__(
        self,
        *,
        results: ResultStore,
        probe_fn: ProbeFn = probe,
        concurrency: int = 64,
        interval: float = 30.0,
        jitter: float = 0.1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._results = results
        self._counts = _Counts()
        self._probe = probe_fn
        self._semaphore = asyncio.Semaphore(concurrency)
        self._interval = interval
        self._jitter = jitter
        self._clock = clock
        self._sleep = sleep
        self._due: dict[TargetKey, float] = {}
        self._targets: dict[TargetKey, Target] = {}
        self._tasks: dict[TargetKey, asyncio.Task[None]] = {}
        self._awaiting_first: set[TargetKey] = set()
        self._first_round = asyncio.Event()
        self._first_round.set()

    @property
    def targets(self) -> Mapping[TargetKey, Target]:
        return self._targets

    def due(self) -> Mapping[TargetKey, float]:
        """When each target's next probe is due, on the scheduler's clock (absent while it is being probed)."""
        return dict(self._due)

    def counts(self) -> ProbeCounts:
        return self._counts.read()

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
            self._due.pop(key, None)
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
        self._counts.record(result)
        self._awaiting_first.discard(target.key)
        if not self._awaiting_first:
            self._first_round.set()
        if not result.success:
            event(log, logging.INFO, "probe_failed", configuration=target.key.webhook.configuration,
                  name=target.key.webhook.name, type=target.key.webhook.type, endpoint=target.key.endpoint,
                  reason=result.reason, duration=f"{result.duration_seconds:.3f}", detail=result.detail)

    async def _run(self, target: Target) -> None:
        key = target.key
        while True:
            self._due.pop(key, None)
            try:
                await self._probe_once(target)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not end this target's schedule
                log.exception("probe_crashed", extra={"awe_fields": {"endpoint": key.endpoint}})
            spread = self._interval * self._jitter
            delay = max(0.0, self._interval + random.uniform(-spread, spread))
            self._due[key] = self._clock() + delay
            await self._sleep(delay)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._targets.clear()
        self._due.clear()


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
