"""Probe cost, side by side: the exporter's engine and Prometheus's blackbox_exporter on the same backends.

For each key type (ECDSA P-256, RSA-2048) and each N, N real TLS webhook backends run on loopback in one
process (`bench.backends`), and both engines probe every one of them with the same request: a dry-run
AdmissionReview POST, verified against the same CA. Each engine runs as its own process so its CPU and
memory are its own: the exporter's engine as `python -m bench.probe_cost worker` (the real `probe_once`,
`--concurrency` probes in flight), blackbox_exporter driven with `--concurrency` concurrent `/probe`
requests. Printed per engine: probes/s at saturation, CPU seconds per probe (utime + stime from
/proc/<pid>/stat over the measured rounds), peak RSS (VmHWM), and the exporter/blackbox ratio. Then the
floor: `openssl s_time` full handshakes per CPU second against one of the same backends, and our CPU per
probe as a multiple of one handshake. Finally the steady state the targets speak of: 1,000 endpoints on the
real scheduler at a 30 s interval, as a share of one core.

Everything dials 127.0.0.1 only. Bounded: backends exit with their parent (stdin) or after --seconds.
Usage: python -m bench.probe_cost [--counts 100,1000,5000] [--keys ecdsa,rsa] [--rounds 2] [--no-blackbox]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.cli import _loop_factory
from exporter.inventory import SourcedObject, build_inventory
from exporter.probe import admission_review
from exporter.results import ResultStore
from exporter.scheduler import ProbeScheduler, probe_once
from exporter.targets import WebhookPlan, plan

CLK_TCK = os.sysconf("SC_CLK_TCK")
BLACKBOX = "prometheus-blackbox-exporter"


# -- /proc ------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (its threads included), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5), after "(comm)"


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


# -- the exporter's side ----------------------------------------------------------------------------------
def inventory_for(ports: list[int], ca_bundle: str) -> list[SourcedObject]:
    hooks = [{"name": f"hook-{i}.bench.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
              "timeoutSeconds": 10, "clientConfig": {"url": f"https://127.0.0.1:{p}/validate", "caBundle": ca_bundle},
              "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                         "resources": ["configmaps"]}]} for i, p in enumerate(ports)]
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
              "metadata": {"name": "bench"}, "webhooks": hooks}
    return [SourcedObject("bench", config)]


def plans_for(spec: dict[str, Any]) -> tuple[WebhookPlan, ...]:
    return plan(build_inventory(inventory_for(spec["ports"], spec["ca_bundle"])))


async def _worker(args: argparse.Namespace) -> None:
    """The measured process: reads the backends' spec on stdin, warms up, says "ready", waits for "go"."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    plans = plans_for(spec)
    await probe_once(plans, concurrency=args.concurrency)  # warm-up: contexts cached, code paths hot
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    started, failures, probes = time.perf_counter(), 0, 0
    if args.steady:
        results = ResultStore()
        scheduler = ProbeScheduler(results=results, concurrency=args.concurrency, interval=args.interval)
        scheduler.update(plans)
        await asyncio.sleep(args.steady)
        await scheduler.close()
        counts = scheduler.counts()
        probes, failures = counts.total, counts.by_result["failure"]
    else:
        for _ in range(args.rounds):
            results_round = await probe_once(plans, concurrency=args.concurrency)
            probes += len(results_round)
            failures += sum(not r.success for r in results_round.values())
    print(json.dumps({"probes": probes, "failures": failures, "wall": time.perf_counter() - started}), flush=True)


@dataclass
class Measured:
    probes: int
    failures: int
    wall: float
    cpu: float
    peak_rss_mib: float

    @property
    def per_second(self) -> float:
        return self.probes / self.wall if self.wall else 0.0

    @property
    def cpu_ms_per_probe(self) -> float:
        return self.cpu / self.probes * 1000 if self.probes else float("nan")


def measure_exporter(spec: dict[str, Any], *, rounds: int, concurrency: int, steady: float = 0,
                     interval: float = 30.0) -> Measured:
    argv = [sys.executable, "-m", "bench.probe_cost", "worker", "--rounds", str(rounds), "--concurrency",
            str(concurrency), "--steady", str(steady), "--interval", str(interval)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("exporter worker did not warm up")
        cpu0 = cpu_seconds(proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        done = json.loads(proc.stdout.readline())
        cpu = cpu_seconds(proc.pid) - cpu0
        return Measured(done["probes"], done["failures"], done["wall"], cpu, peak_rss_mib(proc.pid))
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


# -- blackbox_exporter's side -----------------------------------------------------------------------------
def blackbox_config(ca_file: Path, body: str) -> str:
    """A module doing what our probe does: POST the AdmissionReview over TLS verified against the CA."""
    module = {
        "modules": {
            "awe": {
                "prober": "http",
                "timeout": "10s",
                "http": {
                    "method": "POST",
                    "headers": {"Content-Type": "application/json", "Accept": "application/json"},
                    "body": body,
                    "valid_status_codes": [200],
                    "fail_if_not_ssl": True,
                    "fail_if_body_not_matches_regexp": ['"kind": ?"AdmissionReview"'],
                    "preferred_ip_protocol": "ip4",
                    "ip_protocol_fallback": False,
                    "tls_config": {"ca_file": str(ca_file)},
                },
            }
        }
    }
    return json.dumps(module)  # JSON is YAML


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive_blackbox(port: int, targets: list[str], concurrency: int, rounds: int,
                          on_measured: Any) -> tuple[int, int, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(target: str) -> bool:
            async with semaphore:
                url = f"http://127.0.0.1:{port}/probe"
                async with session.get(url, params={"module": "awe", "target": target}) as response:
                    text = await response.text()
            return bool(re.search(r"^probe_success 1$", text, re.M))

        await asyncio.gather(*(one(t) for t in targets))  # warm-up
        on_measured(True)
        started, failures = time.perf_counter(), 0
        for _ in range(rounds):
            ok = await asyncio.gather(*(one(t) for t in targets))
            failures += sum(not o for o in ok)
        wall = time.perf_counter() - started
        on_measured(False)
        return len(targets) * rounds, failures, wall


def measure_blackbox(spec: dict[str, Any], *, rounds: int, concurrency: int, workdir: Path) -> Measured | None:
    binary = shutil.which(BLACKBOX)
    if binary is None:
        return None
    ca_file = workdir / "ca.pem"
    import base64

    ca_file.write_bytes(base64.b64decode(spec["ca_bundle"]))
    review = admission_review(plans_for({"ports": spec["ports"][:1], "ca_bundle": spec["ca_bundle"]})[0]
                              .targets[0].review, "bench-blackbox")  # type: ignore[arg-type]  # always set
    config = workdir / "blackbox.yml"
    config.write_text(blackbox_config(ca_file, json.dumps(review, separators=(",", ":"))))
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, proc)
        marks: dict[bool, float] = {}

        def mark(start: bool) -> None:
            marks[start] = cpu_seconds(proc.pid)

        targets = [f"https://127.0.0.1:{p}/validate" for p in spec["ports"]]
        probes, failures, wall = asyncio.run(_drive_blackbox(port, targets, concurrency, rounds, mark))
        return Measured(probes, failures, wall, marks[False] - marks[True], peak_rss_mib(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"blackbox_exporter exited: {err[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("blackbox_exporter did not listen within 15 s")


# -- the floor --------------------------------------------------------------------------------------------
def openssl_handshakes_per_cpu_second(port: int, ca_file: Path, seconds: int = 5) -> float | None:
    """`openssl s_time -new`: full TLS handshakes per CPU second of the client (its own user time)."""
    binary = shutil.which("openssl")
    if binary is None:
        return None
    out = subprocess.run([binary, "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
                          "-CAfile", str(ca_file), "-verify", "1"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    match = re.search(r"([\d.]+) connections/user sec", out)
    return float(match.group(1)) if match else None


# -- orchestration ----------------------------------------------------------------------------------------
class Backends:
    """`bench.backends` as a child process: N TLS webhook backends on 127.0.0.1."""

    def __init__(self, count: int, key: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.backends", "--count", str(count), "--key", key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.spec: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Row:
    key: str
    endpoints: int
    ours: Measured
    theirs: Measured | None
    floor_per_cpu_s: float | None


def run(counts: list[int], keys: list[str], rounds: int, concurrency: int, blackbox: bool) -> list[Row]:
    raise_fd_limit(max(counts) * 2 + 1024)
    rows = []
    with tempfile.TemporaryDirectory(prefix="awe-bench-") as tmp:
        for key in keys:
            for count in counts:
                backends = Backends(count, key)
                try:
                    ours = measure_exporter(backends.spec, rounds=rounds, concurrency=concurrency)
                    theirs = measure_blackbox(backends.spec, rounds=rounds, concurrency=concurrency,
                                              workdir=Path(tmp)) if blackbox else None
                    import base64

                    ca_file = Path(tmp) / "ca.pem"
                    ca_file.write_bytes(base64.b64decode(backends.spec["ca_bundle"]))
                    floor = openssl_handshakes_per_cpu_second(backends.spec["ports"][0], ca_file)
                finally:
                    backends.close()
                rows.append(Row(key, count, ours, theirs, floor))
                print_row(rows[-1], header=len(rows) == 1)
    return rows


HEADER = (f"{'key':>5} {'endpoints':>9} {'engine':>9} {'probes':>7} {'failed':>6} {'probes/s':>9} "
          f"{'CPU ms/probe':>12} {'peak RSS MiB':>12} {'ours/bb CPU':>11} {'ours/bb p/s':>11} "
          f"{'floor hs/CPU s':>14} {'ours/floor':>10}")


def print_row(row: Row, header: bool = False) -> None:
    if header:
        print(HEADER)
        print("-" * len(HEADER))
    floor_ms = 1000 / row.floor_per_cpu_s if row.floor_per_cpu_s else None
    for name, m in (("exporter", row.ours), ("blackbox", row.theirs)):
        if m is None:
            continue
        ratio_cpu = ratio_rate = ""
        if name == "exporter" and row.theirs is not None:
            ratio_cpu = f"{m.cpu_ms_per_probe / row.theirs.cpu_ms_per_probe:.2f}"
            ratio_rate = f"{m.per_second / row.theirs.per_second:.2f}"
        floor = f"{row.floor_per_cpu_s:.0f}" if row.floor_per_cpu_s and name == "exporter" else ""
        multiple = f"{m.cpu_ms_per_probe / floor_ms:.1f}x" if floor_ms else ""
        print(f"{row.key:>5} {row.endpoints:>9} {name:>9} {m.probes:>7} {m.failures:>6} {m.per_second:>9.0f} "
              f"{m.cpu_ms_per_probe:>12.3f} {m.peak_rss_mib:>12.1f} {ratio_cpu:>11} {ratio_rate:>11} "
              f"{floor:>14} {multiple:>10}", flush=True)


def steady_state(count: int, key: str, seconds: float, interval: float, concurrency: int) -> Measured:
    raise_fd_limit(count * 2 + 1024)
    backends = Backends(count, key)
    try:
        return measure_exporter(backends.spec, rounds=0, concurrency=concurrency, steady=seconds, interval=interval)
    finally:
        backends.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        parser = argparse.ArgumentParser(prog="bench.probe_cost worker")
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--concurrency", type=int, default=64)
        parser.add_argument("--steady", type=float, default=0)
        parser.add_argument("--interval", type=float, default=30)
        # The event loop serve runs on (uvloop where installed), so the engine measured is serve's.
        with asyncio.Runner(loop_factory=_loop_factory("serve")) as runner:
            runner.run(_worker(parser.parse_args(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,1000,5000")
    parser.add_argument("--keys", default="ecdsa,rsa")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-blackbox", action="store_true", help="only the exporter's engine")
    parser.add_argument("--steady-seconds", type=float, default=60,
                        help="length of the 1,000 endpoints / 30 s steady-state run (0 to skip)")
    args = parser.parse_args(argv)
    print("== saturation (not the load users run: see bench.equal_load): exporter engine vs blackbox_exporter, "
          f"N loopback TLS backends, {args.concurrency} probes in flight back to back, {args.rounds} measured rounds "
          "after a warm-up round")
    if not args.no_blackbox and shutil.which(BLACKBOX) is None:
        print(f"   ({BLACKBOX} not installed: run bench/install-blackbox.sh; exporter only)")
    run([int(c) for c in args.counts.split(",")], args.keys.split(","), args.rounds, args.concurrency,
        not args.no_blackbox)
    if args.steady_seconds > 0:
        m = steady_state(1000, "ecdsa", args.steady_seconds, 30.0, args.concurrency)
        share = m.cpu / m.wall * 100
        print(f"\n== steady state: 1000 endpoints (ecdsa) every 30 s on the real scheduler for {m.wall:.0f} s: "
              f"{m.probes} probes, {m.failures} failed, CPU {m.cpu:.2f} s = {share:.1f}% of one core "
              f"(target <= 5%), peak RSS {m.peak_rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
