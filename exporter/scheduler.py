"""Run every target's probe on its own schedule, in one bounded pool where each webhook has its own share.

Each target gets a small task: probe at once, then once per `interval`, on a fixed grid of start times (its
slots), the way Prometheus scrapes a target. The targets that arrive together (one `update`) get their slots
spread evenly over the interval, so a thousand endpoints cost a steady trickle of probes, not one burst per
interval; `jitter` (a fraction of the interval) shifts each target's grid by a random amount, once, so two
exporters started together do not probe in lock-step. A slot is never earlier than one interval after the
previous start, and a probe that overruns its next slot (a hanging endpoint) skips to the first slot after it
ends: one probe per target at a time, and the rate of a healthy target stays exactly one per interval.

Probes in flight are bounded by `concurrency`, and per webhook by `per_webhook` (`FairLimiter`): one webhook
whose endpoints all hang to their timeout holds at most its own share, and a freed place goes to the waiting
webhook with the fewest probes in flight, so the others keep their schedule.

When the plans change, only the targets that changed are restarted, and they are probed at once. The
scheduler reads time only through its `clock` and waits only through its `sleep` (both injectable), so a test
can drive a schedule deterministically; it exposes plain data: the targets, when each is next due, and counts
of probes run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from contextlib import asynccontextmanager
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


def default_share(concurrency: int) -> int:
    """A webhook's share of the pool: a quarter, so that three webhooks hanging at once still leave a quarter.

    A smaller share protects against more hanging webhooks, but caps a webhook with many endpoints: with the
    defaults (64 in flight, 16 per webhook), 16 endpoints hanging to a 10 s timeout take 10 s per 16 probes.
    """
    return max(1, concurrency // 4)


class FairLimiter:
    """At most `total` holders at once, and at most `per_key` of one key.

    A freed place goes to a waiting key that holds the fewest places (below `per_key`), in turn among equals:
    a key with many waiters cannot crowd out one with a single waiter, and a key at its cap waits for its own
    places. Each operation costs O(per_key), however many keys wait. Plain data for a test: `held()`,
    `waiting()`.
    """

    def __init__(self, total: int, per_key: int) -> None:
        if total < 1 or per_key < 1:
            raise ValueError("a limiter needs at least one place, in total and per key")
        self._total = total
        self._per_key = per_key
        self._in_use = 0
        self._held: dict[Hashable, int] = {}
        self._queues: dict[Hashable, collections.deque[asyncio.Future[None]]] = {}
        # Keys with waiters and below the cap, by places held; each dict keeps the order they came in (turns).
        self._ready: list[dict[Hashable, None]] = [{} for _ in range(per_key)]

    def held(self) -> Mapping[Hashable, int]:
        return dict(self._held)

    def waiting(self) -> Mapping[Hashable, int]:
        return {k: sum(not f.done() for f in q) for k, q in self._queues.items()}

    @asynccontextmanager
    async def slot(self, key: Hashable) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    async def acquire(self, key: Hashable) -> None:
        if key not in self._queues and self._in_use < self._total and self._held.get(key, 0) < self._per_key:
            self._take(key)  # places are handed to waiters as they free: a free place has no eligible waiter
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
            self._mark(key)
        queue.append(future)
        self._dispatch()  # a place may be free behind waiters that were cancelled
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # granted, then cancelled before it ran: hand the place on
            elif self._queues.get(key) is queue:
                with contextlib.suppress(ValueError):  # already dropped by a dispatch
                    queue.remove(future)
                if not queue:
                    self._unmark(key)
                    del self._queues[key]
            raise

    def release(self, key: Hashable) -> None:
        waiting = key in self._queues
        if waiting:
            self._unmark(key)
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        self._in_use -= 1
        if waiting:
            self._mark(key)
        self._dispatch()

    def _take(self, key: Hashable) -> None:
        self._held[key] = self._held.get(key, 0) + 1
        self._in_use += 1

    def _mark(self, key: Hashable) -> None:
        held = self._held.get(key, 0)
        if held < self._per_key:
            self._ready[held][key] = None

    def _unmark(self, key: Hashable) -> None:
        held = self._held.get(key, 0)
        if held < self._per_key:
            self._ready[held].pop(key, None)

    def _dispatch(self) -> None:
        while self._in_use < self._total:
            bucket = next((b for b in self._ready if b), None)
            if bucket is None:
                return
            key = next(iter(bucket))
            del bucket[key]
            queue = self._queues.get(key)
            if queue is None:
                continue
            while queue and queue[0].done():  # cancelled while waiting: its task cleans up after itself
                queue.popleft()
            if not queue:
                del self._queues[key]
                continue
            future = queue.popleft()
            self._take(key)  # counted now, before the waiter runs: no one else can take this place meanwhile
            if queue:
                self._mark(key)  # its next turn comes after the other keys at its new count
            else:
                del self._queues[key]
            future.set_result(None)


def targets_of(plans: Iterable[WebhookPlan]) -> dict[TargetKey, Target]:
    return {t.key: t for p in plans for t in p.targets}


def next_slot(first: float, interval: float, after: float) -> float:
    """The first slot of the grid `first + k * interval` (k >= 0) not before `after`."""
    if interval <= 0 or after <= first:
        return max(first, after) if interval <= 0 else first
    return first + math.ceil((after - first) / interval) * interval


class ProbeScheduler:
    def __init__(
        self,
        *,
        results: ResultStore,
        probe_fn: ProbeFn = probe,
        concurrency: int = 64,
        per_webhook: int | None = None,
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
        self._limiter = FairLimiter(concurrency, per_webhook or default_share(concurrency))
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

    @property
    def limiter(self) -> FairLimiter:
        return self._limiter

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
        new = [(key, target) for key, target in wanted.items() if key not in self._targets]
        now = self._clock()
        for i, (key, target) in enumerate(new):
            # Slots spread evenly over one interval, after a first probe at once; the jitter shifts the grid.
            phase = (i / len(new) + random.uniform(0, self._jitter)) * self._interval
            self._targets[key] = target
            self._awaiting_first.add(key)
            self._tasks[key] = asyncio.create_task(self._run(target, now + self._interval + phase),
                                                   name=f"probe {key.endpoint}")
        self._results.retain(wanted)
        if self._awaiting_first:
            self._first_round.clear()
        else:
            self._first_round.set()

    async def _probe_once(self, target: Target) -> None:
        webhook = target.key.webhook
        async with self._limiter.slot(webhook):
            result = await self._probe(target)
        if self._targets.get(target.key) is not target:
            return  # replaced while in flight: the newer target's result wins
        self._results.put(target.key, result)
        self._counts.record(result)
        self._awaiting_first.discard(target.key)
        if not self._awaiting_first:
            self._first_round.set()
        if not result.success:
            event(log, logging.INFO, "probe_failed", configuration=webhook.configuration, name=webhook.name,
                  type=webhook.type, endpoint=target.key.endpoint, reason=result.reason,
                  duration=f"{result.duration_seconds:.3f}", detail=result.detail)

    async def _run(self, target: Target, first_slot: float) -> None:
        key = target.key
        slot = first_slot
        while True:
            self._due.pop(key, None)
            try:
                await self._probe_once(target)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not end this target's schedule
                log.exception("probe_crashed", extra={"awe_fields": {"endpoint": key.endpoint}})
            now = self._clock()
            slot = next_slot(slot, self._interval, now)
            self._due[key] = slot
            await self._sleep(slot - now)
            slot += self._interval

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
    """One round over every target, bounded in concurrency: what `check` runs.

    No share per webhook here: a round is done when its slowest probe is, so capping a webhook with many
    hanging endpoints would only make the whole round longer.
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> tuple[TargetKey, ProbeResult]:
        async with semaphore:
            return target.key, await probe_fn(target)

    pairs = await asyncio.gather(*(one(t) for t in targets_of(plans).values()))
    return dict(pairs)
