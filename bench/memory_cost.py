"""Memory of `serve --manifests` at 2,000 webhooks: RSS after it settles, and (`--tracemalloc`) where it goes.

Writes 500 ValidatingWebhookConfigurations of 4 service webhooks each (`--configs`), their 2,000 Services and
2,000 one-endpoint EndpointSlices in 50 namespaces into a temporary folder, starts real TLS webhook backends
on 127.0.0.1 (`--backends`, a process of their own, each with its own CA, as configurations each have their
own caBundle; its certificate names `*.<namespace>.svc`, so the probes succeed), and runs the real CLI
`admission-webhook-exporter serve --manifests` against it as its own process. After `--seconds` it prints the
process's RSS (VmRSS: anonymous and file-backed), then scrapes /metrics 5 times as Prometheus does (a second
apart, OpenMetrics asked first) and prints their durations, RSS and its peak (VmHWM). The child runs with
.pyc files, as an installed package does.

`--tracemalloc`: the same `serve`, under `python -X tracemalloc=12`; `--seconds` after it listens it prints
the Python heap by file, by the line that allocated, and by the first frame in this project (what a module
import holds is counted under `<import>`), then stops. tracemalloc sees only Python's allocator: RSS minus
the traced total is OpenSSL, the interpreter, shared libraries and allocator overhead.
Usage: python -m bench.memory_cost [--configs 500] [--backends 100] [--seconds 40] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

HOOKS_PER_CONFIG = 4
NAMESPACES = 50


def ns(j: int) -> str:
    return f"bench-ns-{j % NAMESPACES}"


# -- the backends -------------------------------------------------------------------------------------------
async def _backends(count: int, seconds: float) -> None:
    import resource

    from exporter.backend import WebhookBackend
    from exporter.pki import CertificateAuthority

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count * 4 + 256)), hard))
    names = [f"*.{ns(k)}.svc" for k in range(NAMESPACES)]
    cas = [CertificateAuthority.create(f"bench CA {i}") for i in range(count)]
    backends = [await WebhookBackend(ca.issue(names)).start() for ca in cas]
    print(json.dumps({"ca_bundles": [ca.ca_bundle for ca in cas], "ports": [b.port for b in backends]}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.read))
    await asyncio.wait([stdin_closed], timeout=seconds)
    for b in backends:
        await b.stop()


# -- the inventory ------------------------------------------------------------------------------------------
def manifests(configs: int, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """`configs` configurations of 4 service webhooks; configuration c is served by backend c % backends."""
    ports, bundles = spec["ports"], spec["ca_bundles"]
    out: list[dict[str, Any]] = []
    for c in range(configs):
        b = c % len(ports)
        hooks = []
        for w in range(HOOKS_PER_CONFIG):
            j = c * HOOKS_PER_CONFIG + w
            hooks.append({"name": f"hook-{w}.bench.example.com", "sideEffects": "None",
                          "admissionReviewVersions": ["v1"], "failurePolicy": "Fail" if w == 0 else "Ignore",
                          "timeoutSeconds": 5,
                          "clientConfig": {"caBundle": bundles[b], "service": {
                              "namespace": ns(j), "name": f"svc-{j}", "port": 443, "path": "/validate"}},
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                     "resources": ["pods" if w == 0 else "configmaps"]}]})
            out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns(j), "name": f"svc-{j}"},
                        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "https"}]}})
            out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"namespace": ns(j), "name": f"svc-{j}-1",
                                     "labels": {"kubernetes.io/service-name": f"svc-{j}"}},
                        "addressType": "IPv4", "ports": [{"name": "https", "port": ports[b], "protocol": "TCP"}],
                        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})
        out.append({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                    "metadata": {"name": f"bench-{c}"}, "webhooks": hooks})
    return out


# -- the measured process under tracemalloc -----------------------------------------------------------------
def _traced_serve(argv: list[str]) -> int:
    """`serve` in this process; on SIGUSR1 (from the parent, `--seconds` after serve said it listens), print
    where the Python heap is, then SIGTERM ourselves."""
    from exporter.cli import main

    def report(*_: object) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        print_heap(snapshot)
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop

    signal.signal(signal.SIGUSR1, report)
    return main(argv)


def _site(frames: tracemalloc.Traceback) -> str:
    """Who holds it: `<import>` when a module import made it, else the innermost frame in this project."""
    if any(f.filename.startswith("<frozen importlib") for f in frames):
        return "<import> (module code, constants and classes)"
    for f in reversed(frames):  # a traceback lists the oldest call first: walk from the innermost
        if "/exporter/" in f.filename:
            return f"{f.filename.split('/exporter/', 1)[1]}:{f.lineno}"
    innermost = frames[-1]
    return f"{innermost.filename.rsplit('/', 2)[-1]}:{innermost.lineno}"


def print_heap(snapshot: tracemalloc.Snapshot, top: int = 20) -> None:
    total = sum(s.size for s in snapshot.statistics("filename"))
    print(f"\n-- Python heap (tracemalloc): {total / 2**20:.1f} MiB traced, RSS now {rss_mib(os.getpid()):.1f} MiB")
    sites: dict[str, int] = {}
    for trace in snapshot.traces:
        key = _site(trace.traceback)
        sites[key] = sites.get(key, 0) + trace.size
    print("\nby holder (the first frame in exporter/, or <import>):")
    for key, size in sorted(sites.items(), key=lambda kv: -kv[1])[:top]:
        print(f"   {size / 2**20:8.2f} MiB  {key}")
    print("\nby file that allocated:")
    for stat in snapshot.statistics("filename")[:top]:
        frame = stat.traceback[0]
        print(f"   {stat.size / 2**20:8.2f} MiB  {stat.count:>8} blocks  {frame.filename.rsplit('/', 3)[-3:]}")
    print("\nby line that allocated:")
    for stat in snapshot.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        print(f"   {stat.size / 2**20:8.2f} MiB  {stat.count:>8} blocks  "
              f"{'/'.join(frame.filename.rsplit('/', 2)[-2:])}:{frame.lineno}")
    sys.stdout.flush()


# -- measuring ----------------------------------------------------------------------------------------------
def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_parts(pid: int) -> str:
    """RSS split into anonymous memory (heaps, buffers) and file-backed pages (the interpreter, libraries)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0]) / 1024
    return f"anonymous {fields.get('Anonymous', 0):.1f}, files {fields.get('Rss', 0) - fields.get('Anonymous', 0):.1f}"


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                     "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")  # what Prometheus 3 sends
LISTENING = re.compile(r"event=listening address=127\.0\.0\.1:(\d+)")


def run(args: argparse.Namespace) -> None:
    backends = subprocess.Popen([sys.executable, "-m", "bench.memory_cost", "backends", str(args.backends),
                                 str(args.seconds + 600)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    serve: subprocess.Popen[str] | None = None
    try:
        assert backends.stdout is not None
        spec = json.loads(backends.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="awe-bench-mem-") as tmp:
            path = Path(tmp) / "inventory.json"
            path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(args.configs, spec)}))
            cli = ["serve", "--manifests", str(path), "--listen-address", "127.0.0.1:0",
                   "--probe-interval", str(args.interval)]
            if args.tracemalloc:
                command = [sys.executable, "-X", "tracemalloc=12", "-m", "bench.memory_cost", "traced", *cli]
            else:
                command = [sys.executable, "-m", "exporter", *cli]
            t0 = time.monotonic()
            # With the .pyc files an installed package has: compiling sources would count in the heap.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            serve = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
            assert serve.stderr is not None
            port = None
            for line in serve.stderr:
                if m := LISTENING.search(line):
                    port = int(m[1])
                    break
            if port is None:
                raise RuntimeError("serve did not start")
            threading.Thread(target=serve.stderr.read, daemon=True).start()  # drain its log
            print(f"== memory: serve --manifests, {args.configs * HOOKS_PER_CONFIG} service webhooks, as many "
                  f"Services and one-endpoint EndpointSlices, {args.backends} TLS backends, probe interval "
                  f"{args.interval:g} s; RSS of the serve process", flush=True)
            listening = time.monotonic() - t0
            print(f"   listening after {listening:.1f} s (inventory loaded and adopted)", flush=True)
            if args.tracemalloc:
                time.sleep(args.seconds)
                serve.send_signal(signal.SIGUSR1)
                serve.wait(900)
                return
            marks = [m for m in (5, 10, 20, 40, 60, 90, 120) if m < args.seconds] + [args.seconds]
            for mark in marks:
                time.sleep(max(0.0, t0 + mark - time.monotonic()))
                print(f"   after {mark:>4.0f} s: RSS {rss_mib(serve.pid):6.1f} MiB ({rss_parts(serve.pid)})",
                      flush=True)
            took = []
            for _ in range(5):  # as Prometheus asks: OpenMetrics first
                request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                                 headers={"Accept": PROMETHEUS_ACCEPT, **args.headers})
                t1 = time.perf_counter()
                with urllib.request.urlopen(request, timeout=60) as response:
                    t2 = time.perf_counter()
                    body = response.read()
                took.append(f"{(t2 - t1) * 1000:.0f}+{(time.perf_counter() - t2) * 1000:.0f}")
                time.sleep(1)
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            print(f"   after 5 scrapes ({series} series; headers+body ms: {', '.join(took)}): RSS "
                  f"{rss_mib(serve.pid):6.1f} MiB ({rss_parts(serve.pid)}), peak (VmHWM) "
                  f"{rss_mib(serve.pid, 'VmHWM'):6.1f} MiB   target < 100 MiB", flush=True)
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        if backends.stdin:
            backends.stdin.close()
        try:
            backends.wait(60)
        except subprocess.TimeoutExpired:
            backends.kill()
            backends.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backends"]:
        asyncio.run(_backends(int(argv[1]), float(argv[2])))
        return 0
    if argv[:1] == ["traced"]:
        return _traced_serve(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=500, help=f"configurations of {HOOKS_PER_CONFIG} webhooks")
    parser.add_argument("--backends", type=int, default=100)
    parser.add_argument("--interval", type=float, default=30.0, help="serve's --probe-interval")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--tracemalloc", action="store_true", help="where the Python heap goes, at --seconds")
    parser.add_argument("--gzip", dest="headers", action="store_const", const={"Accept-Encoding": "gzip"},
                        default={}, help="scrape with Accept-Encoding: gzip, as Prometheus does")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
