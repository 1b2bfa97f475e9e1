"""Scrape cost: /metrics render time and size at 1k/10k/100k series, idle and WHILE probes run.

Builds an inventory of url webhooks with synthetic results (a result per endpoint, as after a probe round;
only the collector is built, no scheduler of them, so nothing of it is ever dialled), wired as the exporter
wires it: results stored in a `ResultStore` that tells the collector, the text prepared when the plans are
adopted. Two renderings are timed on a worker thread, wall time from the request to the rendered body on that
thread (/metrics is served from a thread and loop of its own, so a scrape waits for the GIL the busy event loop
holds, not for a turn of that loop to end):
- `text`: what /metrics serves (`ExporterCollector.text()`): the text kept ready, joined;
- `families`: rendering the collector's families at each scrape (`exposition.render(collect())`), what
  /metrics did before the text was kept ready; printed for comparison.
Each is measured twice: with the loop idle, and while the same loop runs real probes back to back against
loopback TLS backends (`bench.backends`, another process) with `--concurrency` in flight. While probing, every
probe result is also stored against one of the synthetic targets in turn, so the scraped results change at
the probe rate and their lines are re-rendered as they arrive, as in the exporter; render and probes share
the GIL. Printed: series, bytes, median and p90 wall ms of each rendering in each case and the median CPU ms of
the rendering thread, CPU ms per 10,000 series of `text`, the probe rate meanwhile, and what preparing the
text costs the event loop when an inventory is adopted.
Usage: python -m bench.scrape_cost [--series 1000,10000,100000] [--repeats 15] [--probe-backends 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.collector import ExporterCollector, Scrape
from exporter.exposition import render
from exporter.inventory import SourcedObject, build_inventory
from exporter.probe import ProbeResult
from exporter.reasons import Reason
from exporter.results import ResultStore
from exporter.scheduler import ProbeCounts, ProbeScheduler
from exporter.state import ExporterState, Snapshot
from exporter.targets import TargetKey

SERIES_PER_WEBHOOK = 7  # info, timeout, success, duration, timestamp, cert; failure_info for half
TARGET_MS_PER_10K = 10.0


class Scraped:
    """A synthetic exporter state: snapshot, results store and collector, wired as `exporter.app` wires them."""

    def __init__(self, webhooks: int) -> None:
        # Loopback addresses: these are labels only (no scheduler here), but a benchmark names nothing else.
        hooks = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None",
                  "clientConfig": {"url": f"https://127.0.{i // 250}.{i % 250 + 1}:443/validate"}}
                 for i in range(webhooks)]
        config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                  "metadata": {"name": "bench"}, "webhooks": hooks}
        self.snapshot: Snapshot = ExporterState().adopt(build_inventory([SourcedObject("bench", config)]))
        self.collector = ExporterCollector(self.read)
        self.results = ResultStore(on_put=self.collector.result_changed)
        self.counts = ProbeCounts(by_result={"success": 0, "failure": 0}, failures={})
        self.keys: list[TargetKey] = []
        now = time.time()
        for i, p in enumerate(self.snapshot.plans):
            for t in p.targets:
                ok = i % 2 == 0
                self.results.put(t.key, ProbeResult(success=ok, reason=None if ok else Reason.TIMEOUT, detail="",
                                                    duration_seconds=0.01, finished_at=now, cert_not_after=now + 1e6))
                self.keys.append(t.key)
        t0 = time.perf_counter()
        self.collector.prepare(self.snapshot.plans, self.results.snapshot())
        self.prepare_ms = (time.perf_counter() - t0) * 1000

    def read(self) -> Scrape:
        return Scrape(snapshot=self.snapshot, results=self.results.snapshot(), probes=self.counts)

    def text(self) -> bytes:
        return self.collector.text()  # as exporter.app.Exporter.text, which the server calls

    def families(self) -> bytes:
        return render(self.collector.collect())


def relay(scraped: Scraped) -> Callable[[TargetKey, ProbeResult], None]:
    """Each real probe result stored again for the next synthetic target in turn (its lines re-rendered)."""
    turn = itertools.cycle(scraped.keys)
    return lambda _, result: scraped.results.put(next(turn), result)


@dataclass
class Times:
    wall: list[float] = field(default_factory=list)  # ms from the request for a render to the rendered body
    cpu: list[float] = field(default_factory=list)  # ms of CPU the rendering thread spent


async def render_times(render_fn: Callable[[], bytes], repeats: int) -> Times:
    loop = asyncio.get_running_loop()
    times = Times()

    def timed(asked: float) -> tuple[float, float]:
        c0 = time.thread_time()
        render_fn()
        return (time.perf_counter() - asked) * 1000, (time.thread_time() - c0) * 1000

    for _ in range(repeats):
        # The wall time ends where the body is rendered, on the rendering thread: /metrics is served from a thread
        # and loop of its own (exporter.server), so a scrape does not wait for a turn of this busy loop to end,
        # only for the GIL it shares with it.
        wall, cpu = await loop.run_in_executor(None, timed, time.perf_counter())
        times.wall.append(wall)
        times.cpu.append(cpu)
        await asyncio.sleep(0.05)
    times.wall.sort()
    times.cpu.sort()
    return times


def p90(times: list[float]) -> float:
    return times[max(0, int(len(times) * 0.9) - 1)]


async def measure(series_list: list[int], repeats: int, backends: int, concurrency: int) -> None:
    from bench.probe_cost import Backends, plans_for, raise_fd_limit

    raise_fd_limit(backends * 2 + 1024)
    probing = Backends(backends, "ecdsa") if backends else None
    header = (f"{'series':>7} {'bytes':>10} {'prepare ms':>10} | {'idle: text ms':>13} {'p90':>6} {'CPU ms':>6} "
              f"{'families':>8} | {'probing: text ms':>16} {'p90':>6} {'CPU ms':>6} {'families':>8} "
              f"{'probes/s':>8} | {'text CPU ms/10k':>15}")
    print(header)
    print("-" * len(header))
    try:
        for target in series_list:
            scraped = Scraped(max(1, target // SERIES_PER_WEBHOOK))
            body = scraped.text()
            assert body == scraped.families(), "the text kept ready differs from the families' rendering"
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            idle = await render_times(scraped.text, repeats)
            idle_families = await render_times(scraped.families, max(3, repeats // 3))
            busy = busy_families = None
            rate = 0.0
            if probing is not None:
                store = ResultStore(on_put=relay(scraped))
                scheduler = ProbeScheduler(results=store, concurrency=concurrency, interval=0.0, jitter=0.0)
                scheduler.update(plans_for(probing.spec))  # back to back: the loop never rests
                await asyncio.sleep(1.0)
                before, t0 = scheduler.counts().total, time.perf_counter()
                busy = await render_times(scraped.text, repeats)
                busy_families = await render_times(scraped.families, max(3, repeats // 3))
                rate = (scheduler.counts().total - before) / (time.perf_counter() - t0)
                await scheduler.close()
            cpu = max(statistics.median(idle.cpu), statistics.median(busy.cpu) if busy else 0.0)
            busy_cols = (f"{statistics.median(busy.wall):>16.1f} {p90(busy.wall):>6.1f} "
                         f"{statistics.median(busy.cpu):>6.2f} {statistics.median(busy_families.wall):>8.0f} "
                         f"{rate:>8.0f}" if busy and busy_families else f"{'':>16} {'':>6} {'':>6} {'':>8} {'':>8}")
            print(f"{series:>7} {len(body):>10} {scraped.prepare_ms:>10.1f} | {statistics.median(idle.wall):>13.1f} "
                  f"{p90(idle.wall):>6.1f} {statistics.median(idle.cpu):>6.2f} "
                  f"{statistics.median(idle_families.wall):>8.0f} | {busy_cols} | {cpu / series * 10_000:>15.2f}",
                  flush=True)
    finally:
        if probing is not None:
            probing.close()
    print(f"   target: text <= {TARGET_MS_PER_10K:g} ms per 10,000 series, idle and while probing (the last "
          f"column: the rendering thread's CPU, the worse of the two medians; wall times also hold the wait for "
          f"the GIL and, on a busy machine, for a core)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--probe-backends", type=int, default=200,
                        help="loopback backends probed back to back during the 'probing' renders (0: idle only)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"== scrape cost: /metrics rendered on a worker thread, median of {args.repeats} (families: of "
          f"{max(3, args.repeats // 3)}); 'probing' = meanwhile {args.probe_backends} loopback backends probed back "
          f"to back, {args.concurrency} in flight (load average {load[0]:.1f} on {os.cpu_count()} cores)")
    asyncio.run(measure([int(s) for s in args.series.split(",")], args.repeats, args.probe_backends,
                        args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
