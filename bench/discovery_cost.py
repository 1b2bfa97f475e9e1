"""Discovery cost against the test control plane (a real kube-apiserver + etcd on loopback).

Creates 500 webhook configurations holding 2,000 service webhooks, their 2,000 Services and 2,000
referenced EndpointSlices, and 10,000 unrelated EndpointSlices in the same namespaces (the label selector
of the exporter's slice watches must leave them out). Then runs the exporter as its own process
(`python -m bench.discovery_cost worker`: the real Exporter + Discovery, serving /metrics on 127.0.0.1) and
prints: start-up time to /readyz, its RSS, the API requests it made to start and in a 60 s steady state
(from its own `admission_webhook_exporter_api_requests_total`), and the time from an EndpointSlice losing
its last ready endpoint to `admission_webhook_endpoints_ready` reading 0 on /metrics (median and worst of 20,
/metrics polled every 100 ms). Then churn (`--churn` seconds): a referenced EndpointSlice changes every
`--churn-every` seconds (each change is a new inventory, so a new audit is wanted), while /metrics is scraped
once a second as Prometheus does (its Accept header: OpenMetrics first); printed: those scrapes' durations,
the exporter's CPU meanwhile (share of one core), and how many audits it ran.

The worker's probe function answers at once without dialling: this measures discovery, not probing, and
the slices' addresses (10.213.7.0/24, the test network-namespace range) are never contacted.
Usage: python -m bench.discovery_cost [--configs 500] [--unrelated 10000] [--steady 60] [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from exporter.pki import CertificateAuthority

HOOKS_PER_CONFIG = 4
NAMESPACES = 50
CREATE_CONCURRENCY = 32
POLL_SECONDS = 0.1


# -- the measured process ---------------------------------------------------------------------------------
async def _worker(kubeconfig: str) -> None:
    from exporter.app import Exporter
    from exporter.discovery import Discovery
    from exporter.kubeapi import KubeApi, load_credentials
    from exporter.probe import ProbeResult
    from exporter.targets import Target

    async def no_dial(target: Target) -> ProbeResult:
        now = time.time()
        return ProbeResult(success=True, reason=None, detail="", duration_seconds=0.0, finished_at=now)

    exporter = Exporter(probe_fn=no_dial, interval=30.0, discovery=Discovery(KubeApi(load_credentials(kubeconfig))))
    await exporter.start()
    port = await exporter.serve("127.0.0.1", 0)
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline) == "audits?\n":
        print(json.dumps({"audits": getattr(exporter, "audits", None)}), flush=True)  # None: not counted there
    await exporter.close()  # stdin closed


# -- populating the control plane -------------------------------------------------------------------------
class Api:
    """Concurrent JSON requests to the apiserver as admin (aiohttp; loopback only)."""

    def __init__(self, server: str, token: str, ctx: ssl.SSLContext) -> None:
        import aiohttp

        self.server = server
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=CREATE_CONCURRENCY))
        self.semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def send(self, method: str, path: str, body: dict[str, Any],
                   content_type: str = "application/json") -> dict[str, Any]:
        async with self.semaphore:
            for attempt in range(5):
                async with self.session.request(method, self.server + path, data=json.dumps(body),
                                                headers={**self.headers, "Content-Type": content_type}) as r:
                    if r.status == 429 or r.status >= 500:  # overloaded apiserver: back off a little
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    text = await r.text()
                    if r.status >= 300:
                        raise RuntimeError(f"{method} {path}: {r.status} {text[:200]}")
                    return dict(json.loads(text))
            raise RuntimeError(f"{method} {path}: still overloaded")

    async def close(self) -> None:
        await self.session.close()


def ns(j: int) -> str:
    return f"bench-ns-{j % NAMESPACES}"


def slice_of(j: int, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{j}-1", "namespace": ns(j),
                         "labels": {"kubernetes.io/service-name": f"svc-{j}"}},
            "addressType": "IPv4", "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.213.7.{2 + j % 200}"], "conditions": {"ready": ready}}]}


async def populate(api: Api, configs: int, unrelated: int, ca_bundle: str) -> dict[str, float]:
    services = configs * HOOKS_PER_CONFIG
    timings: dict[str, float] = {}

    async def phase(name: str, jobs: list[Any]) -> None:
        t0 = time.perf_counter()
        await asyncio.gather(*jobs)
        timings[name] = time.perf_counter() - t0
        print(f"   created {len(jobs):>6} {name:<28} in {timings[name]:6.1f} s", flush=True)

    await phase("namespaces", [api.send("POST", "/api/v1/namespaces", {"metadata": {"name": f"bench-ns-{k}"}})
                               for k in range(NAMESPACES)])
    await phase("services (headless)", [api.send("POST", f"/api/v1/namespaces/{ns(j)}/services", {
        "metadata": {"name": f"svc-{j}"},
        "spec": {"clusterIP": "None", "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}})
        for j in range(services)])
    await phase("referenced EndpointSlices", [api.send(
        "POST", f"/apis/discovery.k8s.io/v1/namespaces/{ns(j)}/endpointslices", slice_of(j, True))
        for j in range(services)])
    await phase("unrelated EndpointSlices", [api.send(
        "POST", f"/apis/discovery.k8s.io/v1/namespaces/{ns(m)}/endpointslices", {
            "metadata": {"name": f"other-{m}", "labels": {"kubernetes.io/service-name": f"other-{m}"}},
            "addressType": "IPv4", "ports": [{"name": "x", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.213.7.{2 + m % 200}"], "conditions": {"ready": True}}]})
        for m in range(unrelated)])

    def config(c: int) -> dict[str, Any]:
        hooks = [{"name": f"hook-{w}.bench.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                  "failurePolicy": "Ignore", "timeoutSeconds": 5,
                  # never called by the apiserver: no namespace carries this label
                  "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}},
                  "clientConfig": {"caBundle": ca_bundle, "service": {
                      "namespace": ns(c * HOOKS_PER_CONFIG + w), "name": f"svc-{c * HOOKS_PER_CONFIG + w}",
                      "port": 443, "path": "/validate"}},
                  "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                             "resources": ["configmaps"]}]} for w in range(HOOKS_PER_CONFIG)]
        return {"metadata": {"name": f"bench-{c}"}, "webhooks": hooks}

    await phase("webhook configurations", [api.send(
        "POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", config(c))
        for c in range(configs)])
    return timings


# -- measuring --------------------------------------------------------------------------------------------
def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fetch(session: Any, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, await r.text()


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                     "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")  # what Prometheus 3 sends


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


REQUESTS = re.compile(r'^admission_webhook_exporter_api_requests_total\{verb="(\w+)",resource="(\w+)"\} ([\d.e+]+)$',
                      re.M)


def requests_of(text: str) -> dict[tuple[str, str], int]:
    return {(m[1], m[2]): int(float(m[3])) for m in REQUESTS.finditer(text)}


def summarize(counts: dict[tuple[str, str], int]) -> str:
    by_verb: dict[str, int] = {}
    for (verb, _), n in counts.items():
        by_verb[verb] = by_verb.get(verb, 0) + n
    return ", ".join(f"{n} {verb}" for verb, n in sorted(by_verb.items())) or "none"


async def measure(args: argparse.Namespace) -> None:
    import aiohttp

    from tests.controlplane.harness import ControlPlane  # run from the repository root, as `python -m bench`

    print(f"== discovery cost: {args.configs} configurations x {HOOKS_PER_CONFIG} webhooks = "
          f"{args.configs * HOOKS_PER_CONFIG} webhooks, as many Services and referenced EndpointSlices, "
          f"{args.unrelated} unrelated EndpointSlices, in {NAMESPACES} namespaces", flush=True)
    cp = ControlPlane()
    cp.start()
    worker: asyncio.subprocess.Process | None = None
    try:
        api = Api(cp.server_url, cp.admin_token, cp.ssl_context())
        try:
            await populate(api, args.configs, args.unrelated, CertificateAuthority.create("bench CA").ca_bundle)
            t0 = time.perf_counter()
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.discovery_cost", "worker", str(cp.kubeconfig_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert worker.stdout is not None
            port = int(await worker.stdout.readline())
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                while (await fetch(session, base + "/readyz"))[0] != 200:
                    if time.perf_counter() - t0 > 300:
                        raise RuntimeError("exporter not ready within 300 s")
                    await asyncio.sleep(0.05)
                startup = time.perf_counter() - t0
                _, text = await fetch(session, base + "/metrics")
                at_ready = requests_of(text)
                rss_ready = rss_mib(worker.pid)
                targets = re.search(r"^admission_webhook_exporter_targets ([\d.]+)$", text, re.M)
                await asyncio.sleep(args.steady)
                _, text = await fetch(session, base + "/metrics")
                after = requests_of(text)
                steady = {k: n - at_ready.get(k, 0) for k, n in after.items() if n != at_ready.get(k, 0)}
                latencies = await detection(api, session, base, args)
                rss_end, hwm = rss_mib(worker.pid), rss_mib(worker.pid, "VmHWM")
                render = []
                for _ in range(5):
                    t1 = time.perf_counter()
                    _, text = await fetch(session, base + "/metrics")
                    render.append((time.perf_counter() - t1) * 1000)
                churned = await churn(api, session, base, worker, args) if args.churn else None
        finally:
            await api.close()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        lists = sum(n for (verb, _), n in steady.items() if verb == "list")
        rows = [
            ("start-up to /readyz", f"{startup:.2f} s", ""),
            ("targets", f"{float(targets[1]) if targets else float('nan'):.0f}", ""),
            ("API requests during start-up", summarize(at_ready),
             "; ".join(f"{v} {r}={n}" for (v, r), n in sorted(at_ready.items()))),
            (f"API requests in {args.steady:.0f} s steady state", summarize(steady) if steady else "0",
             f"LIST: {lists} (target 0)"),
            ("exporter RSS at ready / end / peak", f"{rss_ready:.1f} / {rss_end:.1f} / {hwm:.1f} MiB",
             "target < 100 MiB at 2,000 webhooks"),
            (f"lost endpoint -> endpoints_ready 0 (n={len(latencies)})",
             f"median {statistics.median(latencies) * 1000:.0f} ms, worst {max(latencies) * 1000:.0f} ms",
             "target < 2 s"),
            ("/metrics at this size", f"{series} series, {len(text)} bytes, median "
                                      f"{statistics.median(render):.0f} ms over HTTP", ""),
        ]
        if churned is not None:
            scrapes, cpu, audits = churned
            rows += [
                (f"churn {args.churn:.0f} s, a slice every {args.churn_every:g} s: /metrics as Prometheus asks",
                 f"median {statistics.median(scrapes):.0f} ms, p90 {p90(scrapes):.0f} ms, worst {max(scrapes):.0f} ms",
                 f"n={len(scrapes)}; a scrape never waits on the audit"),
                ("churn: exporter CPU, audits run", f"{cpu:.0%} of a core, {audits} audits", ""),
            ]
        width = max(len(r[0]) for r in rows)
        for name, value, note in rows:
            print(f"   {name:<{width}}  {value:<40} {note}")
    finally:
        if worker is not None:
            await end_child(worker)
        cp.stop()


async def end_child(proc: asyncio.subprocess.Process) -> None:
    """A child that stops when its stdin closes: close it, wait up to 30 s, then kill."""
    if proc.stdin:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.9) - 1)]


async def churn(api: Api, session: Any, base: str, worker: asyncio.subprocess.Process,
                args: argparse.Namespace) -> tuple[list[float], float, str]:
    """Slices change every `churn_every` s while /metrics is scraped every second: scrape ms, CPU share, audits."""
    assert worker.stdin is not None and worker.stdout is not None

    async def audits() -> Any:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(b"audits?\n")
        await worker.stdin.drain()
        return json.loads(await worker.stdout.readline())["audits"]

    services = args.configs * HOOKS_PER_CONFIG
    flipped: set[int] = set()
    stop = time.monotonic() + args.churn

    async def flip() -> None:
        k = 0
        while time.monotonic() < stop:
            j = (k * 37) % services
            ready = j in flipped
            await api.send("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{ns(j)}/endpointslices/svc-{j}-1",
                           {"endpoints": slice_of(j, ready)["endpoints"]}, "application/merge-patch+json")
            (flipped.discard if ready else flipped.add)(j)
            k += 1
            await asyncio.sleep(args.churn_every)

    before_audits, before_cpu, t0 = await audits(), cpu_seconds(worker.pid), time.monotonic()
    flipper = asyncio.create_task(flip())
    scrapes = []
    try:
        while time.monotonic() < stop:
            t1 = time.perf_counter()
            async with session.get(base + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT}) as r:
                await r.read()
            scrapes.append((time.perf_counter() - t1) * 1000)
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t1)))
        await flipper
    finally:
        flipper.cancel()
    cpu = (cpu_seconds(worker.pid) - before_cpu) / (time.monotonic() - t0)
    after_audits = await audits()
    for j in flipped:  # every slice ready again
        await api.send("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{ns(j)}/endpointslices/svc-{j}-1",
                       {"endpoints": slice_of(j, True)["endpoints"]}, "application/merge-patch+json")
    counted = "?" if before_audits is None else str(after_audits - before_audits)
    return scrapes, cpu, counted


async def detection(api: Api, session: Any, base: str, args: argparse.Namespace) -> list[float]:
    """Take one referenced slice's only endpoint out of service; time until /metrics says 0; put it back."""
    latencies = []
    services = args.configs * HOOKS_PER_CONFIG
    for trial in range(args.trials):
        j = (trial * 97) % services  # spread over configurations and namespaces
        c, w = divmod(j, HOOKS_PER_CONFIG)
        line = re.compile(rf'^admission_webhook_endpoints_ready\{{configuration="bench-{c}",'
                          rf'name="hook-{w}.bench.example.com",type="validating"\}} ([\d.]+)$', re.M)
        path = f"/apis/discovery.k8s.io/v1/namespaces/{ns(j)}/endpointslices/svc-{j}-1"
        patch = {"endpoints": slice_of(j, False)["endpoints"]}
        t0 = time.perf_counter()
        await api.send("PATCH", path, patch, "application/merge-patch+json")
        while True:
            _, text = await fetch(session, base + "/metrics")
            m = line.search(text)
            if m and float(m[1]) == 0:
                break
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(f"slice {path}: not reflected within 30 s")
            # Not back to back: each scrape renders ~14k series on the exporter's worker thread, and a scraper
            # that never pauses would starve the event loop that applies the change (Prometheus scrapes
            # every 15-30 s). 100 ms is the resolution of this figure.
            await asyncio.sleep(POLL_SECONDS)
        latencies.append(time.perf_counter() - t0)
        await api.send("PATCH", path, {"endpoints": slice_of(j, True)["endpoints"]}, "application/merge-patch+json")
        await asyncio.sleep(0.2)
    return latencies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        asyncio.run(_worker(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=500, help=f"webhook configurations ({HOOKS_PER_CONFIG} "
                                                                 "webhooks each)")
    parser.add_argument("--unrelated", type=int, default=10000)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--churn", type=float, default=120.0, help="seconds of slice churn (0: none)")
    parser.add_argument("--churn-every", type=float, default=1.0, help="seconds between two slice changes")
    asyncio.run(measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
