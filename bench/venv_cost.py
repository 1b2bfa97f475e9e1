"""What each dependency costs in the image's virtualenv, and what a running exporter actually loads.

Runs a probe script inside the image tests/image/build.sh built (the private podman; `--python PATH` measures
another interpreter's environment instead, e.g. a fresh `pip install admission-webhook-exporter` venv) and prints:
1. per installed distribution: bytes on disk (its RECORD files plus their compiled .pyc) and which of the
   project's direct dependencies pull it in; the virtualenv's total; what each direct dependency costs with
   everything only it pulls in;
2. the image's layers and their sizes (`podman history`);
3. the modules `serve` has loaded once it is serving a cluster in-cluster (real kube-apiserver of
   tests/controlplane, its token and CA mounted where a pod has them), grouped by distribution, with the
   process's RSS; and `python -X importtime` of the CLI's imports.
Nothing is asserted: these are figures for the image's README and for deciding what to strip.
Usage: python -m bench.venv_cost [--python PATH] [--no-serve]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the measured environment: stdlib only (the image has no pip, no packaging).
PROBE = r'''
import importlib.metadata as md, json, os, re, sys
def size(dist):
    recorded = {os.path.realpath(str(f.locate())) for f in dist.files or ()}
    total = 0
    for p in recorded:
        if not os.path.isfile(p):
            continue
        total += os.path.getsize(p)
        if p.endswith(".py"):  # .pyc that compileall wrote after pip (pip's own are in RECORD already)
            d, stem = os.path.split(p)
            cache = os.path.join(d, "__pycache__")
            if os.path.isdir(cache):
                total += sum(os.path.getsize(os.path.join(cache, c)) for c in os.listdir(cache)
                             if c.startswith(stem[:-3] + ".") and os.path.join(cache, c) not in recorded)
    return total
def name(s):
    return re.match(r"[A-Za-z0-9._-]+", s).group().lower().replace("_", "-").replace(".", "-")
dists = {}
for d in md.distributions():
    reqs = [name(r) for r in (d.requires or []) if "extra ==" not in r]
    dists[name(d.metadata["Name"])] = {"version": d.version, "bytes": size(d), "requires": reqs}
venv = 0
for dirpath, _, files in os.walk(sys.prefix):
    venv += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                if not os.path.islink(os.path.join(dirpath, f)))
print(json.dumps({"dists": dists, "venv_bytes": venv, "prefix": sys.prefix}))
'''

# Runs `serve` in the image and, once it has synced with the cluster, prints what it loaded.
SERVE_PROBE = r'''
import json, os, re, sys, threading, time, urllib.request
from exporter.cli import main
def report():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%s/readyz" % os.environ["PORT"], timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    rss = next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]
    print("AWE-LOADED " + json.dumps({"modules": sorted(m for m in sys.modules), "rss_kb": int(rss)}), flush=True)
    os._exit(0)
threading.Thread(target=report, daemon=True).start()
main(["serve", "--listen-address", "127.0.0.1:" + os.environ["PORT"], "--log-level", "warning"])
'''


def mb(n: int) -> str:
    return f"{n / 1e6:7.1f}"


def closure(root: str, dists: dict[str, Any]) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        d = todo.pop()
        if d in seen or d not in dists:
            continue
        seen.add(d)
        todo.extend(dists[d]["requires"])
    return seen


def podman_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "tests/image/build.sh"), "--env"], capture_output=True, text=True, check=True)
    env = dict(os.environ)
    for line in out.stdout.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v
    return env


def image_name() -> str:
    cache = Path(os.environ.get("AWE_CACHE") or Path.home() / ".cache/admission-webhook-exporter")
    env = dict(line.split("=", 1) for line in (cache / "images/images.env").read_text().split())
    return env["AWE_IMAGE"]


def in_image(env: dict[str, str], image: str, *args: str, volumes: tuple[str, ...] = (),
             extra: tuple[str, ...] = ()) -> str:
    cmd = ["podman", "run", "--rm", "--network", "host", "--entrypoint", "python",
           *(a for v in volumes for a in ("--volume", v)), *extra, image, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"podman run failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def table(report: dict[str, Any], project: str = "admission-webhook-exporter") -> None:
    dists = report["dists"]
    direct = dists[project]["requires"]
    pulled = {d: sorted(t for t in direct if d in closure(t, dists)) for d in dists}
    print(f"{'distribution':32} {'version':>12} {'MB':>7}  pulled in by")
    for d, info in sorted(dists.items(), key=lambda kv: -kv[1]["bytes"]):
        by = ", ".join(pulled[d]) or ("(the project)" if d == project else "(venv tooling)")
        print(f"{d:32} {info['version']:>12} {mb(info['bytes'])}  {by}")
    total = sum(i["bytes"] for i in dists.values())
    print(f"{'all distributions':45} {mb(total)}\n{'virtualenv on disk (' + report['prefix'] + ')':45} "
          f"{mb(report['venv_bytes'])}\n")
    print(f"{'direct dependency':32} {'with all it pulls':>18} {'only it pulls':>14}")
    for t in direct:
        if t not in dists:
            print(f"{t:32} {'(not installed)':>18}")
            continue
        mine = closure(t, dists)
        others = set().union(*(closure(o, dists) for o in direct if o != t and o in dists))
        print(f"{t:32} {mb(sum(dists[d]['bytes'] for d in mine)):>18} "
              f"{mb(sum(dists[d]['bytes'] for d in mine - others)):>14}")


def loaded(env: dict[str, str], image: str, dists: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.controlplane.harness import ControlPlane, free_port

    cp = ControlPlane()
    cp.start()
    try:
        with tempfile.TemporaryDirectory(prefix="awe-bench-sa-") as tmp:
            sa = Path(tmp)
            sa.chmod(0o755)
            (sa / "token").write_text(cp.admin_token)
            (sa / "ca.crt").write_bytes(cp.ca_path.read_bytes())
            for f in sa.iterdir():
                f.chmod(0o644)
            port = cp.server_url.rsplit(":", 1)[1]
            started = time.monotonic()
            out = in_image(env, image, "-c", SERVE_PROBE,
                           volumes=(f"{sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro",),
                           extra=("--env", "KUBERNETES_SERVICE_HOST=127.0.0.1", "--env",
                                  f"KUBERNETES_SERVICE_PORT={port}", "--env", f"PORT={free_port()}"))
            took = time.monotonic() - started
    finally:
        cp.stop()
    data = json.loads(next(line for line in out.splitlines() if line.startswith("AWE-LOADED "))[len("AWE-LOADED "):])
    by_dist: dict[str, int] = {}
    for m in data["modules"]:
        owner = _module_owner(m.split(".")[0], dists)
        by_dist[owner] = by_dist.get(owner, 0) + 1
    print(f"\n`serve` in-cluster, ready after {took:.1f} s (container start included): {len(data['modules'])} "
          f"modules loaded, RSS {data['rss_kb'] / 1024:.1f} MiB")
    for owner, n in sorted(by_dist.items(), key=lambda kv: -kv[1]):
        print(f"  {owner:32} {n:5} modules")


def _module_owner(top: str, dists: dict[str, Any]) -> str:
    """Best effort: the distribution whose name matches the top-level package, else the standard library."""
    aliases = {"yaml": "pyyaml", "cel": "common-expression-language", "prometheus_client": "prometheus-client",
               "exporter": "admission-webhook-exporter", "_cffi_backend": "cffi"}
    name = aliases.get(top, top.replace("_", "-").lower())
    return name if name in dists else "(standard library)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="measure this interpreter's environment instead of the image")
    parser.add_argument("--no-serve", action="store_true", help="skip the in-cluster `serve` measurement")
    args = parser.parse_args(argv)
    if args.python:
        report = json.loads(subprocess.run([args.python, "-c", PROBE], capture_output=True, text=True,
                                           check=True).stdout)
        table(report)
        return 0
    env, image = podman_env(), image_name()
    report = json.loads(in_image(env, image, "-c", PROBE))
    print(f"image {image}\n")
    table(report)
    history = subprocess.run(["podman", "history", "--format", "{{.Size}}\t{{.CreatedBy}}", image], env=env,
                             capture_output=True, text=True, check=True).stdout
    size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"\nlayers (top first), image {int(size) / 1e6:.1f} MB:")
    for line in history.splitlines():
        layer_size, _, created = line.partition("\t")
        if layer_size.strip() not in ("0B", "0 B"):
            print(f"  {layer_size:>10}  {created[:100]}")
    importtime = subprocess.run(["podman", "run", "--rm", "--network", "none", "--entrypoint", "python", image,
                                 "-X", "importtime", "-c", "import exporter.cli"], env=env, capture_output=True,
                                text=True, check=True, timeout=120).stderr
    rows = [line.split("|") for line in importtime.splitlines() if line.startswith("import time:") and "|" in line]
    # Packages (names without a dot), wherever they are first imported: what `import exporter.cli` pays for each.
    cumulative = sorted(((int(r[1]), r[2].strip()) for r in rows if r[1].strip().isdigit()), reverse=True)
    print("\n`import exporter.cli` in the image (python -X importtime), the costliest packages (cumulative):")
    for us, mod in [c for c in cumulative if "." not in c[1]][:10]:
        print(f"  {us / 1000:8.1f} ms  {mod}")
    if not args.no_serve:
        loaded(env, image, report["dists"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
