"""Where `serve`'s CPU goes at a paced load: py-spy samples the real process probing N nginx backends.

`serve --manifests <N url webhooks> --probe-interval N/rate` runs on its own (the same setup as
`bench.equal_load`, without blackbox_exporter). After a warm-up, `py-spy record` samples it for a window:
non-blocking, so the process runs undisturbed (except with `--native`, which pauses it per sample), idle frames
excluded (only what is on the CPU or holds the GIL). The samples are folded into two tables: the functions
where the samples were (self) and the functions on the stack (cumulative, each counted once per sample), as
a share of the samples. With `--native` the C frames are kept (OpenSSL's handshake then shows apart from the
Python around it). The raw stacks are kept with `--out`, for flamegraph.pl or speedscope.

py-spy is a PyPI package (`pip install py-spy`); it needs ptrace (root, or the same user with
kernel.yama.ptrace_scope 0).
Usage: python -m bench.profile [--endpoints 100] [--rate 100] [--seconds 30] [--native] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.equal_load import Serve, write_manifest
from bench.nginx import NginxBackends
from bench.probe_cost import cpu_seconds, raise_fd_limit

# Frames that say where, not what: the thread entry points and the event loop's own plumbing above every handler.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:]*)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def fold(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Samples, self counts and cumulative counts per function (`function (file)`, line numbers dropped)."""
    total, own, cumulative = 0, Counter[str](), Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    return total, own, cumulative


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            file = file.split("/", 1)[1] if marker == "/lib/python3." and "/" in file else file
    return f"{match['function']} ({file})"


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    lines = [f"-- {title} (share of {total} samples)"]
    lines += [f"{n / total * 100:6.1f}%  {name}" for name, n in counts.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100, help="probes per second (the interval is endpoints/rate)")
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--seconds", type=float, default=30, help="sampling window")
    parser.add_argument("--sample-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="keep C frames (OpenSSL, the interpreter)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument("--out", type=Path, help="where to keep py-spy's raw stacks (default: a temporary file)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for serve (repeatable)")
    args = parser.parse_args(argv)
    spy = py_spy()
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    raise_fd_limit(args.endpoints * 4 + 1024)
    interval = args.endpoints / args.rate
    with tempfile.TemporaryDirectory(prefix="awe-bench-prof-") as tmp, \
            NginxBackends(args.endpoints, key=args.key, workers=2) as backends:
        raw = args.out or Path(tmp) / "stacks.txt"
        manifest = write_manifest(Path(tmp), backends.spec)
        serve = Serve(manifest, interval=interval, core=None, extra=args.serve_arg)
        try:
            time.sleep(max(args.warmup, 2 * interval))
            probes0, _ = serve.probes()
            cpu0 = cpu_seconds(serve.pid)
            command = [spy, "record", "--pid", str(serve.pid), "--duration", str(int(args.seconds)), "--rate",
                       str(args.sample_rate), "--format", "raw", "--output", str(raw)]
            # C frames need the process paused per sample (py-spy's rule); Python frames alone do not.
            command.append("--native" if args.native else "--nonblocking")
            spied = subprocess.run(command, capture_output=True, text=True)
            cpu = cpu_seconds(serve.pid) - cpu0
            probes = serve.probes()[0] - probes0
        finally:
            serve.close()
        if spied.returncode != 0 or not raw.exists():
            print(f"py-spy failed ({spied.returncode}): {spied.stderr[-800:]}", file=sys.stderr)
            return 1
        total, own, cumulative = fold(raw)
        print(f"== profile of `serve`: {args.endpoints} endpoints every {interval:g} s ({args.key}, nginx), "
              f"py-spy {args.sample_rate}/s for {args.seconds:g} s{' with C frames' if args.native else ''}: "
              f"{probes} probes, {cpu:.2f} s CPU = {cpu / probes * 1000 if probes else float('nan'):.3f} ms/probe "
              "(py-spy's non-blocking sampling adds little; read shares, not absolute time)")
        print(table("self: where the CPU was", own, total, args.top))
        print(table("cumulative: on the stack", cumulative, total, args.top))
        if args.out:
            print(f"raw stacks: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
