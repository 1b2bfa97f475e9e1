"""Run the benchmarks and print their tables: `python -m bench [--only equal,probe,fairness,...] [--quick]`.

Figures, not pass/fail: see bench/README.md for the targets they are read against. Each part runs in its
own processes, one after the other (on a small machine two at once would measure each other).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

PARTS = ("equal", "probe", "fairness", "scrape", "discovery", "memory", "startup", "canary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke run of every part in about two minutes), not the figures")
    parser.add_argument("--no-blackbox", action="store_true", help="probe cost of the exporter's engine only")
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(wanted) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    commands = {
        "equal": ["bench.equal_load", *(["--counts", "100", "--repeats", "2", "--window", "15",
                                         "--steady-seconds", "30"] if args.quick else []),
                  *(["--no-blackbox"] if args.no_blackbox else [])],
        "probe": ["bench.probe_cost", *(["--counts", "100,1000", "--keys", "ecdsa", "--steady-seconds", "10"]
                                        if args.quick else []), *(["--no-blackbox"] if args.no_blackbox else [])],
        "fairness": ["bench.fairness", *(["--window", "20"] if args.quick else [])],
        "scrape": ["bench.scrape_cost", *(["--series", "1000,10000", "--repeats", "5"] if args.quick else [])],
        "discovery": ["bench.discovery_cost", *(["--configs", "50", "--unrelated", "1000", "--steady", "10",
                                                  "--trials", "5", "--churn", "20"] if args.quick else [])],
        "memory": ["bench.memory_cost", *(["--configs", "100", "--backends", "20", "--seconds", "10"]
                                          if args.quick else [])],
        "startup": ["bench.startup_cost", *(["--repeats", "3"] if args.quick else [])],
        "canary": ["bench.canary_cost", *(["--configs", "50", "--interval", "10", "--window", "20"]
                                          if args.quick else [])],
    }
    blackbox = shutil.which("prometheus-blackbox-exporter")
    if {"equal", "probe"} & set(wanted) and not args.no_blackbox and blackbox is None:
        print("note: blackbox_exporter is not installed (bench/install-blackbox.sh); the probe costs run without it\n")
    failed = []
    for part in wanted:
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", *commands[part]])
        print(f"({part}: {time.monotonic() - started:.0f} s{'' if code == 0 else f', exit {code}'})\n", flush=True)
        if code:
            failed.append(part)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
