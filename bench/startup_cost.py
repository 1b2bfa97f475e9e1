"""Start-up cost of the CLI: CPU seconds (user + system) of whole commands a person types.

Each command runs as its own process, `--repeats` times, with the `.pyc` files an installed package has (one
unmeasured run writes them first: `PYTHONDONTWRITEBYTECODE` is cleared for the children); printed: median and
spread of its CPU time (from the child's rusage, so other processes on the machine do not count, though a busy
machine still slows caches), how many modules it imported, and (`no .pyc`) its median when every source is
compiled at start, as in a checkout run with PYTHONDONTWRITEBYTECODE set. The floor is `python -c pass` in the
same interpreter. Commands: `--help`, `explain "<an apiserver error>"` (no cluster), `audit --manifests` of one
small file (one configuration with a caBundle, its Service and EndpointSlice), and `serve --help`.
`--importtime` also prints, for each command, its ten costliest imports (`python -X importtime`, cumulative).
Usage: python -m bench.startup_cost [--repeats 9] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGET_CPU_SECONDS = 0.3
EXPLAIN_TEXT = ('Internal error occurred: failed calling webhook "validate.kyverno.svc-fail": failed to call '
                'webhook: Post "https://kyverno-svc.kyverno.svc:443/validate/fail?timeout=10s": no endpoints '
                'available for service "kyverno-svc"')
SMALL: dict[str, Any] = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
     "metadata": {"name": "small"},
     "webhooks": [{"name": "validate.small.example.com", "sideEffects": "None", "failurePolicy": "Fail",
                   "admissionReviewVersions": ["v1"],
                   "clientConfig": {"service": {"namespace": "small", "name": "hook", "port": 443},
                                    "caBundle": ""},  # a real CA's, filled in by main()
                   "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"]}]}]},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "small", "name": "hook"},
     "spec": {"ports": [{"port": 443, "targetPort": 8443}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"namespace": "small", "name": "hook-1", "labels": {"kubernetes.io/service-name": "hook"}},
     "addressType": "IPv4", "ports": [{"port": 8443}],
     "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}]}
# Counts the modules a command imported, in its own process, just before it exits.
COUNT_MODULES = ("import atexit, sys; atexit.register(lambda: print(f'modules={len(sys.modules)}', file=sys.stderr)); "
                 "from exporter.cli import main; sys.exit(main(sys.argv[1:]))")


def environment(bytecode: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env if bytecode else {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def cpu_of(argv: list[str], *, bytecode: bool = True) -> tuple[float, str]:
    """CPU seconds (user + system) of one run of `argv`, and its stderr."""
    if not bytecode:
        argv = [argv[0], "-B", *argv[1:]]  # and no .pyc read either: the sources compiled at every start
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=environment(bytecode))
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped by wait4
    return usage.ru_utime + usage.ru_stime, err


def commands(small: Path) -> dict[str, list[str]]:
    return {"--help": ["--help"], "explain <error>": ["explain", EXPLAIN_TEXT],
            "audit --manifests small": ["audit", "--manifests", str(small), "--fail-on", "never"],
            "serve --help": ["serve", "--help"]}


def importtime(argv: list[str], top: int = 10) -> list[tuple[int, str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", COUNT_MODULES, *argv], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative), name.rstrip()))
    # Only top-level imports of a chain are worth reading: a child's time is already in its parent's.
    return sorted(rows, reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--importtime", action="store_true", help="print each command's costliest imports")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"== start-up: CPU seconds (user+system) of whole CLI commands, median of {args.repeats} "
          f"(load average {load[0]:.1f} on {os.cpu_count()} cores)")
    from exporter.pki import CertificateAuthority

    with tempfile.TemporaryDirectory(prefix="awe-bench-startup-") as tmp:
        small = Path(tmp) / "small.json"
        SMALL["items"][0]["webhooks"][0]["clientConfig"]["caBundle"] = CertificateAuthority.create().ca_bundle
        small.write_text(json.dumps(SMALL))
        floor = [cpu_of([sys.executable, "-c", "pass"])[0] for _ in range(args.repeats)]
        header = (f"{'command':<26} {'median CPU s':>12} {'min':>6} {'max':>6} {'modules':>8} "
                  f"{'no .pyc':>8}   target")
        print(header)
        print("-" * len(header))
        print(f"{'python -c pass (floor)':<26} {statistics.median(floor):>12.3f} {min(floor):>6.3f} "
              f"{max(floor):>6.3f} {'':>8} {'':>8}")
        for name, cli in commands(small).items():
            argv = [sys.executable, "-c", COUNT_MODULES, *cli]
            cpu_of(argv)  # once first: writes the .pyc files an installed package has (pip compiles them)
            runs = [cpu_of(argv) for _ in range(args.repeats)]
            times = [t for t, _ in runs]
            cold = statistics.median(cpu_of(argv, bytecode=False)[0] for _ in range(max(3, args.repeats // 3)))
            modules = next((line.split("=", 1)[1] for line in runs[-1][1].splitlines()
                            if line.startswith("modules=")), "?")
            print(f"{name:<26} {statistics.median(times):>12.3f} {min(times):>6.3f} {max(times):>6.3f} "
                  f"{modules:>8} {cold:>8.3f}   < {TARGET_CPU_SECONDS:g} s", flush=True)
            if args.importtime:
                for micros, module in importtime(cli):
                    print(f"      {micros / 1e6:6.3f} s  {module.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
