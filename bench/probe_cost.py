"""Probe cost: N loopback TLS backends (in another process), probed by the exporter's engine.

Prints probes per second at saturation (a round of every endpoint with --probe-concurrency in flight), CPU
seconds per probe of the prober process (user + system, from getrusage), and peak RSS.
Usage: python -m bench.probe_cost [--counts 100,500] [--key ecdsa|rsa] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

from exporter.inventory import SourcedObject, build_inventory
from exporter.scheduler import probe_once
from exporter.targets import plan


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inventory_for(ports: list[int], ca_bundle: str) -> list[SourcedObject]:
    hooks = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
              "timeoutSeconds": 10, "clientConfig": {"url": f"https://127.0.0.1:{p}/validate", "caBundle": ca_bundle},
              "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                         "resources": ["configmaps"]}]} for i, p in enumerate(ports)]
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
              "metadata": {"name": "bench"}, "webhooks": hooks}
    return [SourcedObject("bench", config)]


async def probe_rounds(spec: dict[str, Any], rounds: int, concurrency: int) -> dict[str, float]:
    count = len(spec["ports"])
    plans = plan(build_inventory(inventory_for(spec["ports"], spec["ca_bundle"])))
    await probe_once(plans, concurrency=concurrency)  # warm-up: contexts cached, code paths hot
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    failures = 0
    for _ in range(rounds):
        results = await probe_once(plans, concurrency=concurrency)
        failures += sum(not r.success for r in results.values())
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    probes = count * rounds
    return {"endpoints": count, "probes": probes, "failures": failures, "probes_per_s": probes / wall,
            "cpu_ms_per_probe": cpu / probes * 1000,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(count: int, key: str, rounds: int, concurrency: int) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, concurrency * 4 + 256)), hard))
    proc = subprocess.Popen([sys.executable, "-m", "bench.backends", "--count", str(count), "--key", key],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        spec = json.loads(proc.stdout.readline())
        return asyncio.run(probe_rounds(spec, rounds, concurrency))
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="100,500")
    parser.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(f"{'endpoints':>9} {'key':>5} {'probes':>7} {'failed':>6} {'probes/s':>9} {'CPU ms/probe':>13} "
          f"{'peak RSS MiB':>12}")
    for count in (int(c) for c in args.counts.split(",")):
        r = measure(count, args.key, args.rounds, args.concurrency)
        print(f"{count:>9} {args.key:>5} {r['probes']:>7.0f} {r['failures']:>6.0f} {r['probes_per_s']:>9.0f} "
              f"{r['cpu_ms_per_probe']:>13.3f} {r['peak_rss_mib']:>12.1f}")


if __name__ == "__main__":
    main()
