"""The canary's added load on the kube-apiserver at 2,000 webhooks (a real kube-apiserver + etcd on loopback).

Creates 500 validating webhook configurations holding 2,000 `failurePolicy: Fail` url webhooks on ConfigMap
CREATE in one canary namespace, served by 4 real TLS backends on 127.0.0.1 (`bench/backends.py`, a process of its
own). Each webhook's objectSelector selects only the objects labelled with its own name, so each dry run calls
exactly the one webhook it is for (the apiserver's work per dry run, not 2,000 webhooks': where webhooks overlap,
each dry run also calls every other webhook that selects its object, and those calls add to the figures).

Then runs the exporter as its own process (`python -m bench.canary_cost worker`: the real Exporter + Discovery
+ Canary, `--canary-interval` 60 s; its probe function answers without dialling, so the probes add no load here)
and measures, from /proc, the kube-apiserver's CPU (utime+stime), etcd's, and the exporter's:

1. baseline: the exporter following the cluster with the canary off, for --window seconds;
2. canary: the same with the canary on, after one interval of warm-up (its first round is spread over one
   interval), for --window seconds.

It prints the requests/s the canary sent (from the exporter's `admission_webhook_exporter_api_requests_total
{verb="create"}` and the apiserver's own `apiserver_request_total{verb="POST", dry_run="All"}`), the webhook calls
the apiserver made for them (`apiserver_admission_webhook_request_total`), the canary's outcomes, the CPU of each
process in both phases as a share of one core, and the difference: the added load.
Usage: python -m bench.canary_cost [--configs 500] [--interval 60] [--window 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.discovery_cost import Api, end_child, fetch, requests_of, rss_mib

HOOKS_PER_CONFIG = 4
BACKENDS = 4
NAMESPACE = "bench-canary"
SELECTOR_LABEL = "bench.example.com/hook"
TICKS = 100  # clock ticks per second of /proc/<pid>/stat (os.sysconf("SC_CLK_TCK") is 100 on Linux)


# -- the measured process ---------------------------------------------------------------------------------
async def _worker(kubeconfig: str, canary_on: bool, interval: float) -> None:
    from exporter.app import Exporter
    from exporter.canary import Canary, CanaryConfig
    from exporter.discovery import Discovery
    from exporter.kubeapi import KubeApi, load_credentials
    from exporter.probe import ProbeResult
    from exporter.targets import Target

    async def no_dial(target: Target) -> ProbeResult:
        return ProbeResult(success=True, reason=None, detail="", duration_seconds=0.0, finished_at=time.time())

    discovery = Discovery(KubeApi(load_credentials(kubeconfig)))
    canary = Canary(discovery.api, CanaryConfig(namespace=NAMESPACE, interval=interval)) if canary_on else None
    exporter = Exporter(probe_fn=no_dial, interval=30.0, discovery=discovery, canary=canary)
    await exporter.start()
    port = await exporter.serve("127.0.0.1", 0)
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await exporter.close()


# -- populating the control plane -------------------------------------------------------------------------
async def populate(api: Api, configs: int, ca_bundle: str, ports: list[int]) -> None:
    t0 = time.perf_counter()
    await api.send("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})

    def config(c: int) -> dict[str, Any]:
        hooks = []
        for w in range(HOOKS_PER_CONFIG):
            n = c * HOOKS_PER_CONFIG + w
            hooks.append({
                "name": f"hook-{n}.bench.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail", "timeoutSeconds": 5,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "objectSelector": {"matchLabels": {SELECTOR_LABEL: f"hook-{n}"}},
                "clientConfig": {"caBundle": ca_bundle, "url": f"https://127.0.0.1:{ports[n % len(ports)]}/{n}"},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["configmaps"]}]})
        return {"metadata": {"name": f"bench-canary-{c}"}, "webhooks": hooks}

    await asyncio.gather(*(api.send("POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                                    config(c)) for c in range(configs)))
    print(f"   created {configs} configurations ({configs * HOOKS_PER_CONFIG} webhooks) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


# -- measuring --------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat(5))


def apiserver_counts(text: str) -> tuple[float, float]:
    """(dry-run POSTs, webhook calls) from the apiserver's own /metrics, cumulative."""
    dry = sum(float(m[1]) for m in re.finditer(
        r'^apiserver_request_total\{[^}]*dry_run="All"[^}]*verb="POST"[^}]*\} ([\d.e+]+)$', text, re.M))
    calls = sum(float(m[1]) for m in re.finditer(
        r'^apiserver_admission_webhook_request_total\{[^}]*name="hook-\d+\.bench\.example\.com"[^}]*\} ([\d.e+]+)$',
        text, re.M))
    return dry, calls


OUTCOMES = re.compile(r'^admission_webhook_exporter_canary_requests_total\{outcome="(\w+)"\} ([\d.e+]+)$', re.M)


async def phase(cp: Any, canary_on: bool, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.canary_cost", "worker", str(cp.kubeconfig_path), "1" if canary_on else "0",
        str(args.interval), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert worker.stdout is not None
        port = int(await worker.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            while (await fetch(session, base + "/readyz"))[0] != 200:
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError("exporter not ready within 300 s")
                await asyncio.sleep(0.2)
            warm = args.interval * 1.1 if canary_on else 10.0  # the first round is spread over one interval
            await asyncio.sleep(warm)
            pids = {"kube-apiserver": cp.pids["kube-apiserver"], "etcd": cp.pids["etcd"], "exporter": worker.pid}
            _, before_text = await fetch(session, base + "/metrics")
            before_api = apiserver_counts(await asyncio.to_thread(cp.metrics_text))
            cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
            t1 = time.perf_counter()
            await asyncio.sleep(args.window)
            elapsed = time.perf_counter() - t1
            cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
            after_api = apiserver_counts(await asyncio.to_thread(cp.metrics_text))
            _, after_text = await fetch(session, base + "/metrics")
        creates = sum(n for (verb, _), n in requests_of(after_text).items() if verb == "create") - sum(
            n for (verb, _), n in requests_of(before_text).items() if verb == "create")
        outcomes = {m[1]: float(m[2]) for m in OUTCOMES.finditer(after_text)}
        before_outcomes = {m[1]: float(m[2]) for m in OUTCOMES.finditer(before_text)}
        return {
            "seconds": elapsed,
            "cpu": {n: (cpu1[n] - cpu0[n]) / elapsed for n in pids},
            "creates_per_s": creates / elapsed,
            "dry_runs_per_s": (after_api[0] - before_api[0]) / elapsed,
            "webhook_calls_per_s": (after_api[1] - before_api[1]) / elapsed,
            "outcomes": {k: int(v - before_outcomes.get(k, 0)) for k, v in outcomes.items()},
            "exporter_rss": rss_mib(worker.pid),
            "apiserver_rss": rss_mib(pids["kube-apiserver"]),
        }
    finally:
        await end_child(worker)


async def measure(args: argparse.Namespace) -> None:
    from tests.controlplane.harness import ControlPlane  # run from the repository root, as `python -m bench`

    webhooks = args.configs * HOOKS_PER_CONFIG
    print(f"== canary cost: {webhooks} Fail webhooks ({args.configs} configurations), each selecting only its own "
          f"canary object, {BACKENDS} TLS backends on loopback; canary interval {args.interval:g} s, "
          f"measured over {args.window:g} s", flush=True)
    backends = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.backends", "--count", str(BACKENDS), "--seconds", "1800",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    cp = ControlPlane()
    try:
        assert backends.stdout is not None
        served = json.loads(await backends.stdout.readline())
        cp.start()
        api = Api(cp.server_url, cp.admin_token, cp.ssl_context())
        try:
            await populate(api, args.configs, served["ca_bundle"], served["ports"])
        finally:
            await api.close()
        off = await phase(cp, False, args)
        on = await phase(cp, True, args)
    finally:
        await end_child(backends)
        cp.stop()
    rows = [
        ("canary requests/s (exporter's count)", f"{on['creates_per_s']:.1f}",
         f"expected {webhooks / args.interval:.1f} = {webhooks} webhooks / {args.interval:g} s"),
        ("dry-run POSTs/s (apiserver's count)", f"{on['dry_runs_per_s']:.1f}", "apiserver_request_total{dry_run=All}"),
        ("webhook calls/s by the apiserver", f"{on['webhook_calls_per_s']:.1f}",
         "one per dry run: each object selects its own webhook only"),
        ("canary outcomes in the window", ", ".join(f"{k} {v}" for k, v in sorted(on["outcomes"].items())), ""),
    ]
    for name in ("kube-apiserver", "etcd", "exporter"):
        added = on["cpu"][name] - off["cpu"][name]
        rows.append((f"{name} CPU (share of one core)",
                     f"off {off['cpu'][name] * 100:.1f}%, on {on['cpu'][name] * 100:.1f}%",
                     f"added {added * 100:+.1f}% ({added * 1000 / max(on['creates_per_s'], 1e-9):.2f} ms "
                     "per dry run)" if name != "etcd" else f"added {added * 100:+.1f}% (a dry run stores nothing)"))
    rows.append(("RSS: kube-apiserver / exporter (canary on)",
                 f"{on['apiserver_rss']:.0f} / {on['exporter_rss']:.0f} MiB",
                 f"off: exporter {off['exporter_rss']:.0f} MiB"))
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"   {name:<{width}}  {value:<34} {note}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        asyncio.run(_worker(argv[1], argv[2] == "1", float(argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=500, help=f"webhook configurations ({HOOKS_PER_CONFIG} "
                                                                 "webhooks each)")
    parser.add_argument("--interval", type=float, default=60.0, help="the canary's interval, seconds")
    parser.add_argument("--window", type=float, default=120.0, help="seconds measured in each phase")
    asyncio.run(measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
