"""Scrape cost: /metrics render time and size at 1k/10k/100k series, idle and WHILE probes run.

Builds an inventory of url webhooks with synthetic results (a result per endpoint, as after a probe round;
only the collector is built, no scheduler, so nothing of it is ever dialled) and renders the registry the way the HTTP
handler does: `exporter.exposition.render` (the text format) on a worker thread of the event loop. It is
measured twice: with the loop idle, and while the same loop runs real probes back to back against loopback TLS
backends (`bench.backends`, another process) with `--concurrency` in flight: render and probes then share
the GIL, as they do in the exporter. Printed: series, bytes, median and p90 render ms in each case, and the
probe rate meanwhile.
Usage: python -m bench.scrape_cost [--series 1000,10000,100000] [--repeats 15] [--probe-backends 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from prometheus_client import CollectorRegistry

from exporter.collector import ExporterCollector, Scrape
from exporter.exposition import render
from exporter.inventory import SourcedObject, build_inventory
from exporter.probe import ProbeResult
from exporter.reasons import Reason
from exporter.results import ResultStore
from exporter.scheduler import ProbeCounts, ProbeScheduler
from exporter.state import ExporterState

SERIES_PER_WEBHOOK = 7  # info, timeout, success, duration, timestamp, cert; failure_info for half


def scrape_of(webhooks: int) -> Scrape:
    # Loopback addresses: these are labels only (no scheduler here), but a benchmark names nothing else.
    hooks = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None",
              "clientConfig": {"url": f"https://127.0.{i // 250}.{i % 250 + 1}:443/validate"}}
             for i in range(webhooks)]
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
              "metadata": {"name": "bench"}, "webhooks": hooks}
    snapshot = ExporterState().adopt(build_inventory([SourcedObject("bench", config)]))
    results = ResultStore()
    now = time.time()
    for i, p in enumerate(snapshot.plans):
        for t in p.targets:
            ok = i % 2 == 0
            results.put(t.key, ProbeResult(success=ok, reason=None if ok else Reason.TIMEOUT, detail="",
                                           duration_seconds=0.01, finished_at=now, cert_not_after=now + 1e6))
    counts = ProbeCounts(by_result={"success": 0, "failure": 0}, failures={})
    return Scrape(snapshot=snapshot, results=results.snapshot(), probes=counts)


def registry_for(series: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    scrape = scrape_of(max(1, series // SERIES_PER_WEBHOOK))
    registry.register(ExporterCollector(lambda: scrape))
    return registry


async def render_times(registry: CollectorRegistry, repeats: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await loop.run_in_executor(None, lambda: render(registry.collect()))  # as exporter.server does
        times.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.05)
    return sorted(times)


def p90(times: list[float]) -> float:
    return times[max(0, int(len(times) * 0.9) - 1)]


async def measure(series_list: list[int], repeats: int, backends: int, concurrency: int) -> None:
    from bench.probe_cost import Backends, plans_for, raise_fd_limit

    raise_fd_limit(backends * 2 + 1024)
    probing = Backends(backends, "ecdsa") if backends else None
    header = (f"{'target series':>13} {'series':>8} {'bytes':>10} {'idle median ms':>14} {'idle p90':>8} "
              f"{'probing median ms':>17} {'probing p90':>11} {'probes/s meanwhile':>18}")
    print(header)
    print("-" * len(header))
    try:
        for target in series_list:
            registry = registry_for(target)
            body = render(registry.collect())
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            idle = await render_times(registry, repeats)
            busy: list[float] = []
            rate = 0.0
            if probing is not None:
                scheduler = ProbeScheduler(results=ResultStore(), concurrency=concurrency, interval=0.0, jitter=0.0)
                scheduler.update(plans_for(probing.spec))  # back to back: the loop never rests
                await asyncio.sleep(1.0)
                before, t0 = scheduler.counts().total, time.perf_counter()
                busy = await render_times(registry, repeats)
                rate = (scheduler.counts().total - before) / (time.perf_counter() - t0)
                await scheduler.close()
            busy_cols = (f"{statistics.median(busy):>17.1f} {p90(busy):>11.1f} {rate:>18.0f}" if busy else "")
            print(f"{target:>13} {series:>8} {len(body):>10} {statistics.median(idle):>14.1f} {p90(idle):>8.1f} "
                  f"{busy_cols}", flush=True)
    finally:
        if probing is not None:
            probing.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--probe-backends", type=int, default=200,
                        help="loopback backends probed back to back during the 'probing' renders (0: idle only)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"== scrape cost: /metrics render (exporter.exposition.render on a worker thread), median of {args.repeats}; "
          f"'probing' = meanwhile {args.probe_backends} loopback backends probed back to back, "
          f"{args.concurrency} in flight")
    asyncio.run(measure([int(s) for s in args.series.split(",")], args.repeats, args.probe_backends,
                        args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
