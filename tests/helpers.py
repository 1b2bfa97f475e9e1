"""Small helpers every test module shares: inventories from factories, bounded polling, unique names, a clock
that moves only when the test says so, and the skip (or, in CI, failure) of a test whose machinery is missing."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Generic, NoReturn, TypeVar

import pytest

from exporter.inventory import SourcedObject, build_inventory
from exporter.model import Inventory
from exporter.targets import WebhookPlan, plan


def inventory_of(*objects: dict[str, Any], now: float = 1_700_000_000.0) -> Inventory:
    return build_inventory([SourcedObject("test", o) for o in objects], now=now)


def plans_of(*objects: dict[str, Any]) -> tuple[WebhookPlan, ...]:
    return plan(inventory_of(*objects))


def only_plan(*objects: dict[str, Any]) -> WebhookPlan:
    plans = plans_of(*objects)
    assert len(plans) == 1, plans
    return plans[0]


def unavailable(what: str, reason: str, require_env: str) -> NoReturn:
    """Skip a test whose machinery cannot run here, or fail it when ``require_env`` is 1 (CI sets it, so that a
    broken install cannot turn a suite into silent skips)."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{what} unavailable but {require_env}=1: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")
    raise AssertionError("unreachable")


T = TypeVar("T")


class SessionShared(Generic[T]):
    """One instance for a session-scoped fixture however many modules import it (pytest sets the fixture up once
    per importing module): the first use starts it, the end of the last use stops it."""

    def __init__(self) -> None:
        self.instance: T | None = None
        self._users = 0

    @contextlib.contextmanager
    def use(self, start: Callable[[], T], stop: Callable[[T], None]) -> Iterator[T]:
        if self.instance is None:
            self.instance = start()
        self._users += 1
        try:
            yield self.instance
        finally:
            self._users -= 1
            if self._users == 0 and self.instance is not None:
                stop(self.instance)
                self.instance = None


def uid() -> str:
    """A short unique suffix for names in the shared control plane."""
    return uuid.uuid4().hex[:8]


async def eventually(predicate: Callable[[], bool], within: float, what: str = "", every: float = 0.02) -> float:
    """Seconds until `predicate()` held, polling every `every` s; fails the test after `within` s."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        await asyncio.sleep(every)
    return time.monotonic() - started


def poll(predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.5,
         describe: Callable[[], str] | None = None, error: type[Exception] = AssertionError) -> Any:
    """The blocking twin of `eventually`: poll until `predicate()` returns something truthy (returned); after
    `timeout_s`, raise `error` naming `what` (and `describe()`, what was seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; {describe()}" if describe else ""
            raise error(f"not within {timeout_s:g}s: {what}{seen}")
        time.sleep(every_s)


class ManualClock:
    """Time that moves only when the test calls `advance()`; `sleep()` returns once its deadline has passed.

    Given to `ProbeScheduler(clock=..., sleep=...)`, it makes a schedule deterministic: the test decides when
    an interval has elapsed, so a busy machine can delay what happens, never change it.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._order = itertools.count()  # ties wake in the order they slept
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.requested: list[float] = []  # every sleep asked for, in order

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._order), future))
        if seconds <= 0:
            self.advance(0)
        await future

    def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper whose deadline has come (they run at the loop's next turn)."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            future = heapq.heappop(self._sleepers)[2]
            if not future.done():  # a cancelled sleeper's future is done already
                future.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for *_, future in self._sleepers if not future.done())
