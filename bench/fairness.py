"""Fairness: do healthy webhooks keep their schedule while one webhook's 100 endpoints are black-holed?

The real `serve --manifests` probes, every `--interval` seconds:
- H healthy url webhooks, each on its own nginx backend (`bench.nginx`);
- one service webhook whose EndpointSlice lists 100 endpoints, 127.0.0.2 ... 127.0.0.101, each a listening
  socket that is never accepted from: once its accept queue is full the kernel drops further SYNs, so the
  probes get no answer at all and run to the webhook's timeoutSeconds (10 s, longer than the interval).
After a warm-up, this process reads `/metrics` every `--poll` seconds for a window and keeps each endpoint's
`admission_webhook_probe_timestamp_seconds` (when its last probe finished, on the exporter's clock). The gaps
between a healthy endpoint's successive probes are compared with the interval: printed are the median, p99 and
worst gap, and the share of gaps within 10% of the interval (the target: all of them), plus how many probes of
the black-holed webhook were seen ending meanwhile (timeouts). Loopback only; bounded.
Usage: python -m bench.fairness [--healthy 50] [--blackholed 100] [--interval 5] [--window 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.equal_load import Serve, prioritise
from bench.nginx import NginxBackends
from bench.probe_cost import raise_fd_limit

FINISHED = re.compile(r'^admission_webhook_probe_timestamp_seconds\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')
BLACKHOLED = "blackholed.bench.example.com"


class BlackHoles:
    """`count` listening sockets on 127.0.0.2.. (one port), never accepted from: further SYNs are dropped."""

    def __init__(self, count: int) -> None:
        self.addresses = [f"127.0.0.{2 + i}" for i in range(count)]
        for _ in range(20):  # the port must be free on every address; another try on a collision
            self.sockets: list[socket.socket] = []
            try:
                first = self._listen(self.addresses[0], 0)
                self.port = int(first.getsockname()[1])
                for address in self.addresses[1:]:
                    self._listen(address, self.port)
                return
            except OSError:
                self.close()
        raise RuntimeError("no port free on every black-hole address")

    def _listen(self, address: str, port: int) -> socket.socket:
        s = socket.socket()
        self.sockets.append(s)
        s.bind((address, port))
        s.listen(0)  # the smallest accept queue: full after a connection or two, then silence
        return s

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []


def manifests(spec: dict[str, Any], holes: BlackHoles) -> list[dict[str, Any]]:
    rule = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]
    healthy = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10, "rules": rule,
                "clientConfig": {"url": f"https://127.0.0.1:{p}/validate", "caBundle": spec["ca_bundle"]}}
               for i, p in enumerate(spec["ports"])]
    blackholed = {"name": BLACKHOLED, "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10,
                  "rules": rule, "clientConfig": {"service": {"namespace": "bench", "name": "blackholed", "port": 443,
                                                              "path": "/validate"}, "caBundle": spec["ca_bundle"]}}
    configuration = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                     "metadata": {"name": "fairness"}, "webhooks": [blackholed, *healthy]}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": "blackholed"},
               "spec": {"ports": [{"name": "https", "port": 443, "targetPort": holes.port}]}}
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"namespace": "bench", "name": "blackholed-1",
                           "labels": {"kubernetes.io/service-name": "blackholed"}},
              "addressType": "IPv4", "ports": [{"name": "https", "port": holes.port, "protocol": "TCP"}],
              "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in holes.addresses]}
    return [configuration, service, slice_]


def finished_times(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {}
    for match in FINISHED.finditer(text):
        labels = dict(LABEL.findall(match["labels"]))
        out[(labels.get("name", ""), labels.get("endpoint", ""))] = float(match["value"])
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(healthy: int, blackholed: int, interval: float, warmup: float, window: float, poll: float,
        serve_args: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    raise_fd_limit(healthy * 4 + blackholed * 4 + 1024)
    holes = BlackHoles(blackholed)
    try:
        with tempfile.TemporaryDirectory(prefix="awe-bench-fair-") as tmp, \
                NginxBackends(healthy, workers=2) as backends:
            path = Path(tmp) / "webhooks.yaml"
            path.write_text("\n---\n".join(json.dumps(d) for d in manifests(backends.spec, holes)))
            serve = Serve(path, interval=interval, core=None, extra=serve_args, env=env)
            seen: dict[tuple[str, str], list[float]] = defaultdict(list)
            try:
                time.sleep(warmup)
                end = time.monotonic() + window
                while time.monotonic() < end:
                    for key, at in finished_times(serve.port).items():
                        if not seen[key] or seen[key][-1] != at:
                            seen[key].append(at)
                    time.sleep(poll)
            finally:
                serve.close()
    finally:
        holes.close()
    gaps = [b - a for (name, _), times in seen.items() if name != BLACKHOLED for a, b in itertools.pairwise(times)]
    holed = sum(max(0, len(times) - 1) for (name, _), times in seen.items() if name == BLACKHOLED)
    if not gaps:
        raise RuntimeError("no healthy endpoint was probed twice in the window")
    within = sum(abs(g - interval) <= 0.1 * interval for g in gaps) / len(gaps)
    return {"gaps": len(gaps), "median": statistics.median(gaps), "p99": quantile(gaps, 0.99), "worst": max(gaps),
            "within": within, "blackholed_probes": holed,
            "healthy_probed": sum(1 for (name, _), t in seen.items() if name != BLACKHOLED and len(t) > 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, default=50)
    parser.add_argument("--blackholed", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for serve (repeatable)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the exporter of another checkout (PYTHONPATH=DIR), e.g. a worktree of main")
    parser.add_argument("--nice", type=int, help="as bench.equal_load --nice")
    args = parser.parse_args(argv)
    if args.nice is not None:
        prioritise(args.nice)
    engines: list[tuple[str, dict[str, str]]] = [("exporter", {})]
    if args.baseline is not None:
        engines.append(("baseline", {"PYTHONPATH": str(args.baseline.resolve())}))
    i = args.interval
    for label, env in engines:
        r = run(args.healthy, args.blackholed, i, args.warmup, args.window, args.poll, args.serve_arg, env)
        print(f"== fairness ({label}): `serve`, {args.healthy} healthy url webhooks + 1 webhook with "
              f"{args.blackholed} black-holed endpoints (timeoutSeconds 10), every {i:g} s, {args.window:g} s window: "
              f"healthy gaps between probes median {r['median']:.2f} s ({r['median'] / i * 100:.0f}% of the "
              f"interval), p99 {r['p99']:.2f} s ({r['p99'] / i * 100:.0f}%), worst {r['worst']:.2f} s "
              f"({r['worst'] / i * 100:.0f}%); {r['within'] * 100:.1f}% of {r['gaps']:.0f} gaps within 10% of the "
              f"interval (target 100%); {r['healthy_probed']:.0f}/{args.healthy} healthy endpoints probed again; "
              f"black-holed probes seen ending in the window (each endpoint's first reading not counted): "
              f"{r['blackholed_probes']:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
