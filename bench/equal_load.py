"""CPU per probe at equal, paced load: the real `serve` process against blackbox_exporter, in one run.

The load users run, not saturation: each endpoint probed once per interval, spread over the interval.
- Backends: N webhook backends in one private nginx (`bench.nginx`: ECDSA, full handshakes only, the
  AdmissionReview uid echoed by njs). Both probers probe the same backends with the same POST.
- Ours: `admission-webhook-exporter serve --manifests <N url webhooks> --probe-interval N/rate`, the real
  command in its own process, at its own schedule.
- Theirs: blackbox_exporter (module `http`, the same POST, the caBundle as `ca_file`), driven by this process
  at the same rate, evenly paced (one `/probe` every 1/rate seconds, round-robin over the N targets), as
  Prometheus spreads its scrapes. The driver's own CPU is not counted against blackbox_exporter.
- Both run at the same time, each pinned to one core (`taskset`), so that whatever else the machine does
  weighs on both alike; the cores are swapped on every repeat. After a warm-up, CPU (utime + stime from
  /proc/<pid>/stat) over a fixed window divided by the probes done in that window (ours: the
  `admission_webhook_exporter_probes_total` counter, read outside the CPU window so that the scrape is not
  counted; theirs: the driver's answered `/probe` requests).
Printed per N: each repeat's figures, then the median ratio ours/blackbox and its spread (min-max).

Then the steady state: `serve` with 1,000 endpoints every 30 s, CPU as a share of one core.
Everything dials 127.0.0.1 only; every process is private, bounded in time, and stopped at the end.
Usage: python -m bench.equal_load [--counts 100,1000] [--rate 100] [--window 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.nginx import NginxBackends, free_ports
from bench.probe_cost import BLACKBOX, blackbox_config, cpu_seconds, inventory_for, plans_for, raise_fd_limit
from exporter.probe import admission_review
from tests.controlplane.harness import stop_process

PROBES = re.compile(r'^admission_webhook_exporter_probes_total\{result="(\w+)"\} ([\d.e+]+)$', re.M)


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if core is not None and shutil.which("taskset") else argv


# -- ours: the real serve process -----------------------------------------------------------------------
class Serve:
    """`admission-webhook-exporter serve --manifests ...` as its own process, on a free loopback port."""

    def __init__(self, manifest: Path, *, interval: float, core: int | None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        (self.port,) = free_ports(1)
        argv = [sys.executable, "-m", "exporter", "serve", "--manifests", str(manifest), "--probe-interval",
                f"{interval:g}", "--listen-address", f"127.0.0.1:{self.port}", "--log-level", "warning",
                *(extra or [])]
        self.proc = subprocess.Popen(pinned(core, argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                                     # `python -m` puts the working folder first on sys.path: another checkout
                                     # given by PYTHONPATH (--baseline) must run from its own folder.
                                     cwd=(env or {}).get("PYTHONPATH"))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"serve exited {self.proc.returncode}: {err[-800:]}")
            try:
                self.probes()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("serve did not answer /metrics within 60 s") from None
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the command: same pid

    def probes(self) -> tuple[int, int]:
        """(probes, failures) since start, from its own /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as response:
            text = response.read().decode()
        counts = {result: int(float(value)) for result, value in PROBES.findall(text)}
        return counts.get("success", 0) + counts.get("failure", 0), counts.get("failure", 0)

    def close(self) -> None:
        stop_process(self.proc, 15)


def write_manifest(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / "webhooks.json"
    (obj,) = inventory_for(spec["ports"], spec["ca_bundle"])
    path.write_text(json.dumps(obj.raw))
    return path


# -- theirs: blackbox_exporter driven evenly paced -------------------------------------------------------
class Blackbox:
    def __init__(self, spec: dict[str, Any], folder: Path, *, core: int | None) -> None:
        binary = shutil.which(BLACKBOX)
        if binary is None:
            raise RuntimeError(f"{BLACKBOX} is not installed: run bench/install-blackbox.sh")
        ca_file = folder / "ca.pem"
        ca_file.write_bytes(base64.b64decode(spec["ca_bundle"]))
        target = plans_for({"ports": spec["ports"][:1], "ca_bundle": spec["ca_bundle"]})[0].targets[0]
        assert target.review is not None  # a sideEffects None webhook: probed with a review
        body = json.dumps(admission_review(target.review, "bench-blackbox"), separators=(",", ":"))
        config = folder / "blackbox.yml"
        config.write_text(blackbox_config(ca_file, body))
        (self.port,) = free_ports(1)
        argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=error"]
        self.proc = subprocess.Popen(pinned(core, argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        from bench.probe_cost import _wait_listening

        _wait_listening(self.port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        stop_process(self.proc, 15)


def _failure_summary(text: str) -> str:
    """blackbox's answer to a failed probe in one line: its duration, status and the time of each phase."""
    wanted = ("probe_duration_seconds", "probe_http_status_code", "probe_http_duration_seconds",
              "probe_failed_due_to_regex")
    return ", ".join(line.replace("probe_http_duration_seconds", "").replace("probe_", "")
                     for line in text.splitlines() if line.startswith(wanted))


class PacedDriver:
    """One `/probe` request every 1/rate seconds, round-robin over the targets, as Prometheus spreads scrapes."""

    def __init__(self, port: int, targets: list[str], rate: float) -> None:
        self.port, self.targets, self.rate = port, targets, rate
        self.answered = 0
        self.failed = 0
        self.late = 0  # requests fired more than one period late: the driver could not keep the pace
        self.first_failure: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        period = 1 / self.rate
        url = f"http://127.0.0.1:{self.port}/probe"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            pending: set[asyncio.Task[None]] = set()

            async def one(target: str) -> None:
                try:
                    async with session.get(url, params={"module": "awe", "target": target}) as response:
                        text = await response.text()
                    ok = re.search(r"^probe_success 1$", text, re.M) is not None
                    if not ok and self.first_failure is None:
                        self.first_failure = _failure_summary(text)
                except (aiohttp.ClientError, TimeoutError) as err:
                    ok = False
                    if self.first_failure is None:
                        self.first_failure = repr(err)
                self.answered += 1
                self.failed += not ok

            loop = asyncio.get_running_loop()
            next_at, i = loop.time(), 0
            while not stop.is_set():
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > period:
                    self.late += 1
                task = asyncio.create_task(one(self.targets[i % len(self.targets)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
                next_at += period
            await asyncio.gather(*pending, return_exceptions=True)


# -- one run ---------------------------------------------------------------------------------------------
@dataclass
class Side:
    probes: int
    failures: int
    cpu: float
    window: float
    core: int | None

    @property
    def ms_per_probe(self) -> float:
        return self.cpu / self.probes * 1000 if self.probes else float("nan")

    @property
    def rate(self) -> float:
        return self.probes / self.window


@dataclass
class Repeat:
    label: str  # which serve: "exporter" (this checkout) or "baseline" (--baseline)
    endpoints: int
    rate: float  # the pace asked of both
    ours: Side
    theirs: Side | None
    backends_cpu: float
    failure: str | None = None  # blackbox's first failed probe, as it answered

    @property
    def ratio(self) -> float | None:
        return self.ours.ms_per_probe / self.theirs.ms_per_probe if self.theirs else None

    @property
    def on_pace(self) -> bool:
        """Equal load held: both probers within 10% of the pace, and no failed probe (a failure is other work)."""
        return all(abs(side.rate - self.rate) <= 0.1 * self.rate and not side.failures
                   for side in (self.ours, self.theirs) if side is not None)


async def _measure(label: str, backends: NginxBackends, manifest: Path, folder: Path, *, rate: float, warmup: float,
                   window: float, ours_core: int | None, theirs_core: int | None, blackbox: bool,
                   serve_env: dict[str, str] | None) -> Repeat:
    count = len(backends.ports)
    serve = Serve(manifest, interval=count / rate, core=ours_core, env=serve_env)
    bb = Blackbox(backends.spec, folder, core=theirs_core) if blackbox else None
    stop = asyncio.Event()
    driver = PacedDriver(bb.port, [f"https://127.0.0.1:{p}/validate" for p in backends.ports], rate) if bb else None
    driving = asyncio.create_task(driver.run(stop)) if driver else None
    try:
        await asyncio.sleep(warmup)
        ours0, ours_failed0 = await asyncio.to_thread(serve.probes)
        nginx = backends.pids()
        cpu_ours0, started = cpu_seconds(serve.pid), time.monotonic()
        cpu_bb0 = cpu_seconds(bb.pid) if bb else 0.0
        nginx0 = sum(cpu_seconds(p) for p in nginx)
        answered0, bb_failed0 = (driver.answered, driver.failed) if driver else (0, 0)
        await asyncio.sleep(window)
        cpu_ours1, elapsed = cpu_seconds(serve.pid), time.monotonic() - started
        cpu_bb1 = cpu_seconds(bb.pid) if bb else 0.0
        nginx1 = sum(cpu_seconds(p) for p in nginx)
        answered1, bb_failed1 = (driver.answered, driver.failed) if driver else (0, 0)
        ours1, ours_failed1 = await asyncio.to_thread(serve.probes)
    finally:
        stop.set()
        if driving is not None:
            await driving
        serve.close()
        if bb is not None:
            bb.close()
    ours = Side(ours1 - ours0, ours_failed1 - ours_failed0, cpu_ours1 - cpu_ours0, elapsed, ours_core)
    theirs = Side(answered1 - answered0, bb_failed1 - bb_failed0, cpu_bb1 - cpu_bb0, elapsed, theirs_core) \
        if bb else None
    return Repeat(label, count, rate, ours, theirs, nginx1 - nginx0, driver.first_failure if driver else None)


HEADER = (f"{'endpoints':>9} {'repeat':>6} {'engine':>9} {'core':>4} {'probes/s':>8} {'failed':>6} "
          f"{'CPU ms/probe':>12} {'% of a core':>11} {'ours/bb':>7} {'on pace':>7}")


def print_repeat(r: Repeat, n: int) -> None:
    for name, side in ((r.label, r.ours), ("blackbox", r.theirs)):
        if side is None:
            continue
        first = name == r.label
        ratio = f"{r.ratio:.2f}" if first and r.ratio is not None else ""
        pace = ("yes" if r.on_pace else "no") if first else ""
        print(f"{r.endpoints:>9} {n:>6} {name:>9} {side.core if side.core is not None else '-':>4} "
              f"{side.rate:>8.1f} {side.failures:>6} {side.ms_per_probe:>12.3f} "
              f"{side.cpu / side.window * 100:>10.1f}% {ratio:>7} {pace:>7}", flush=True)
    if r.failure:
        print(f"{'':>17}(blackbox's first failure: {r.failure})", flush=True)


def _spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary(count: int, label: str, repeats: list[Repeat]) -> str:
    """Medians (min-max) over the repeats at equal load; over all of them, said so, when none held the pace."""
    kept = [r for r in repeats if r.on_pace]
    scope = f"{len(kept)} of {len(repeats)} repeats on pace"
    if not kept:
        kept, scope = repeats, f"no repeat on pace: all {len(repeats)}, NOT at equal load"
    line = f"{count:>9} median {label} {_spread([r.ours.ms_per_probe for r in kept], 3)} ms/probe"
    ratios = [r.ratio for r in kept if r.ratio is not None]
    if ratios:
        theirs = [r.theirs.ms_per_probe for r in kept if r.theirs is not None]
        line += f", blackbox {_spread(theirs, 3)}, ours/bb {_spread(ratios, 2)} (target <= 0.75)"
    return f"{line}; {scope}"


Engines = list[tuple[str, dict[str, str]]]  # (label, environment of its serve)


def compare(counts: list[int], *, rate: float, warmup: float, window: float, repeats: int, key: str,
            blackbox: bool, engines: Engines) -> dict[tuple[int, str], list[Repeat]]:
    available = cores()
    pair = (available[0], available[1]) if len(available) >= 2 else (None, None)
    print(f"== equal load: real `serve` vs blackbox_exporter at {rate:g} probes/s each, evenly paced, at the same "
          f"time on nginx TLS backends ({key}, full handshakes, uid echoed); each prober pinned to one core, cores "
          f"swapped every repeat; {warmup:g} s warm-up, {window:g} s window, {repeats} repeats"
          + (f" of each of {', '.join(label for label, _ in engines)}, interleaved" if len(engines) > 1 else ""))
    print(HEADER)
    print("-" * len(HEADER))
    out: dict[tuple[int, str], list[Repeat]] = {}
    for count in counts:
        raise_fd_limit(count * 4 + 1024)
        with tempfile.TemporaryDirectory(prefix="awe-bench-eq-") as tmp, \
                NginxBackends(count, key=key, workers=len(available)) as backends:
            manifest = write_manifest(Path(tmp), backends.spec)
            for n in range(repeats):
                a, b = pair if n % 2 == 0 else pair[::-1]
                for label, env in engines:
                    # The first round probes every endpoint at once; the warm-up also covers a few intervals.
                    warm = max(warmup, 2 * count / rate)
                    row = asyncio.run(_measure(label, backends, manifest, Path(tmp), rate=rate, warmup=warm,
                                               window=window, ours_core=a, theirs_core=b, blackbox=blackbox,
                                               serve_env=env))
                    out.setdefault((count, label), []).append(row)
                    print_repeat(row, n + 1)
            for label, _ in engines:
                print(summary(count, label, out[(count, label)]), flush=True)
    return out


def steady(count: int, interval: float, *, warmup: float, window: float, key: str,
           env: dict[str, str] | None = None) -> Side:
    """`serve` alone, `count` endpoints every `interval` seconds: its CPU over the window."""
    raise_fd_limit(count * 4 + 1024)
    with tempfile.TemporaryDirectory(prefix="awe-bench-steady-") as tmp, NginxBackends(count, key=key) as backends:
        manifest = write_manifest(Path(tmp), backends.spec)
        serve = Serve(manifest, interval=interval, core=None, env=env)
        try:
            time.sleep(warmup)
            probes0, failed0 = serve.probes()
            cpu0, started = cpu_seconds(serve.pid), time.monotonic()
            time.sleep(window)
            cpu1, elapsed = cpu_seconds(serve.pid), time.monotonic() - started
            probes1, failed1 = serve.probes()
        finally:
            serve.close()
    return Side(probes1 - probes0, failed1 - failed0, cpu1 - cpu0, elapsed, None)


def prioritise(nice: int) -> None:
    """This process and what it starts at `nice`, its session's autogroup too: with autogroup scheduling (the
    default on most kernels) every session gets an equal share of the CPU whatever its processes' nice values,
    so on a shared machine only the autogroup's nice keeps a paced prober on pace. Needs root for < 0."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,1000", help="endpoints, comma-separated")
    parser.add_argument("--rate", type=float, default=100, help="probes per second, each prober")
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument("--no-blackbox", action="store_true")
    parser.add_argument("--steady-seconds", type=float, default=90,
                        help="window of the 1,000 endpoints / 30 s steady state of `serve` (0 to skip)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also measure the exporter of another checkout (e.g. a worktree of main), interleaved "
                             "with this one's in the same run: its serve runs with PYTHONPATH=DIR")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of this checkout's serve, e.g. AWE_EVENT_LOOP=asyncio (repeatable)")
    parser.add_argument("--nice", type=int, help="run everything at this nice value, session autogroup included "
                                                 "(e.g. -10 as root on a shared machine; see bench/README.md)")
    args = parser.parse_args(argv)
    if args.nice is not None:
        prioritise(args.nice)
    blackbox = not args.no_blackbox
    if blackbox and shutil.which(BLACKBOX) is None:
        print(f"   ({BLACKBOX} not installed: run bench/install-blackbox.sh; exporter only)")
        blackbox = False
    env = dict(item.split("=", 1) for item in args.serve_env)
    engines: Engines = [("exporter", env)]
    if args.baseline is not None:
        if not (args.baseline / "exporter" / "__main__.py").exists():
            parser.error(f"--baseline {args.baseline}: no exporter/ there")
        engines.append(("baseline", {"PYTHONPATH": str(args.baseline.resolve())}))
    compare([int(c) for c in args.counts.split(",")], rate=args.rate, warmup=args.warmup, window=args.window,
            repeats=args.repeats, key=args.key, blackbox=blackbox, engines=engines)
    if args.steady_seconds > 0:
        print()
        for label, engine_env in engines:
            s = steady(1000, 30.0, warmup=45, window=args.steady_seconds, key=args.key, env=engine_env)
            print(f"== steady state: `serve` ({label}), 1000 endpoints ({args.key}, nginx) every 30 s, "
                  f"{s.window:.0f} s window: {s.probes} probes, {s.failures} failed, CPU {s.cpu:.2f} s = "
                  f"{s.cpu / s.window * 100:.1f}% of one core (target <= 5%), {s.ms_per_probe:.3f} ms/probe",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
