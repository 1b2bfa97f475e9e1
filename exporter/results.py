"""The latest probe result per target. Probes write, scrapes read; neither waits on the other.

Each write replaces one entry of a dict (atomic under the GIL) and `snapshot()` copies the dict in one C-level
call, so a scrape rendered on a worker thread always sees whole results, never a half-written one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .probe import ProbeResult
from .targets import TargetKey


class ResultStore:
    def __init__(self, on_put: Callable[[TargetKey, ProbeResult], None] | None = None) -> None:
        """`on_put` hears of each result as it is stored (the collector renders its lines then, not per scrape)."""
        self._latest: dict[TargetKey, ProbeResult] = {}
        self._on_put = on_put

    def put(self, key: TargetKey, result: ProbeResult) -> None:
        self._latest[key] = result
        if self._on_put is not None:
            self._on_put(key, result)

    def get(self, key: TargetKey) -> ProbeResult | None:
        return self._latest.get(key)

    def retain(self, keys: Iterable[TargetKey]) -> None:
        """Forget targets that no longer exist, so their series disappear."""
        keep = set(keys)
        for key in [k for k in self._latest if k not in keep]:
            self._latest.pop(key, None)

    def snapshot(self) -> Mapping[TargetKey, ProbeResult]:
        return self._latest.copy()
