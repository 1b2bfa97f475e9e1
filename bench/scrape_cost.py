"""Scrape cost: /metrics render time and size at a given number of series (median of repeated renders).

Builds an inventory of url webhooks with synthetic results (a result per endpoint, as after a probe round)
and renders the registry the way the HTTP handler does. Usage: python -m bench.scrape_cost [--series 1000,10000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from prometheus_client.exposition import generate_latest

from exporter.collector import WebhookCollector
from exporter.inventory import SourcedObject, build_inventory
from exporter.probe import ProbeResult
from exporter.reasons import Reason
from exporter.results import ResultStore
from exporter.scheduler import ProbeStats
from exporter.state import ExporterState
from exporter.targets import plan

SERIES_PER_WEBHOOK = 9  # info, timeout, ca, success, duration, timestamp, cert, (failure for half) ...


def state_with(webhooks: int) -> ExporterState:
    hooks = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None",
              "clientConfig": {"url": f"https://10.0.{i // 250}.{i % 250}:443/validate"}} for i in range(webhooks)]
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
              "metadata": {"name": "bench"}, "webhooks": hooks}
    state = ExporterState(scheduler=None, results=ResultStore(), stats=ProbeStats())
    state.adopt(build_inventory([SourcedObject("bench", config)]))
    now = time.time()
    for i, p in enumerate(plan(state.inventory)):
        for t in p.targets:
            ok = i % 2 == 0
            state.results.put(t.key, ProbeResult(success=ok, reason=None if ok else Reason.TIMEOUT, detail="",
                                                 duration_seconds=0.01, finished_at=now, cert_not_after=now + 1e6))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"{'target series':>13} {'series':>8} {'bytes':>10} {'median ms':>10} {'p90 ms':>8}")
    for target in (int(s) for s in args.series.split(",")):
        state = state_with(max(1, target // 7))
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(WebhookCollector(state))
        body = generate_latest(registry)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            generate_latest(registry)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        print(f"{target:>13} {series:>8} {len(body):>10} {statistics.median(times):>10.1f} "
              f"{times[int(len(times) * 0.9) - 1]:>8.1f}")


if __name__ == "__main__":
    main()
