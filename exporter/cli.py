"""Command line: `serve`, `check`, `demo`, `audit`, `explain`.

Bad flags and unusable manifests print one line on stderr and exit 2; `check` exits 1 when a
`failurePolicy: Fail` webhook is unhealthy, and `audit` when a finding reaches `--fail-on`, so both can gate
a pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .app import Exporter
from .audit import SEVERITIES, at_or_above, audit
from .audit import to_json as audit_json
from .audit import to_text as audit_text
from .discovery import Discovery
from .explain import explain, probe_verdicts
from .explain import to_json as explain_json
from .explain import to_text as explain_text
from .inventory import build_inventory
from .kubeapi import KubeApi
from .kubeconfig import Credentials, KubeconfigError, load_credentials
from .log import configure, event
from .manifests import ManifestError, load_manifests
from .model import Inventory
from .report import summarize, to_json, to_table
from .scheduler import probe_once
from .server import parse_listen_address
from .targets import plan

log = logging.getLogger("exporter")

DEFAULT_PORT = 10047  # outside the fully allocated 9100-9999 exporter range; see README
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the operator: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="admission-webhook-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--probe-concurrency", type=_positive_int, default=64,
                       help="probes in flight at most (default 64)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])

    def sources(p: argparse.ArgumentParser) -> None:
        p.add_argument("--manifests", action="append", default=[], metavar="PATH",
                       help="read webhook configurations, Services and EndpointSlices from a .yaml/.yml/.json file "
                            "or folder (repeatable) instead of watching the cluster")
        p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account, else "
                                            "$KUBECONFIG or ~/.kube/config, as kubectl)")
        p.add_argument("--context", help="kubeconfig context (default: the current context)")

    serve = sub.add_parser("serve", help="run the exporter")
    sources(serve)
    serve.add_argument("--listen-address", default=f":{DEFAULT_PORT}", help=f"[host]:port (default :{DEFAULT_PORT})")
    serve.add_argument("--probe-interval", type=_positive_float, default=30.0, help="seconds between probes (30)")
    common(serve)

    check = sub.add_parser("check", help="probe every webhook once and print a table; exit 1 if a Fail webhook "
                                         "is unhealthy")
    sources(check)
    check.add_argument("--output", choices=["table", "json"], default="table")
    common(check)

    audit_cmd = sub.add_parser("audit", help="report webhook configurations that can wedge the cluster; exit 1 "
                                             "when a finding reaches --fail-on")
    sources(audit_cmd)
    audit_cmd.add_argument("--output", choices=["text", "json"], default="text")
    audit_cmd.add_argument("--fail-on", choices=[*SEVERITIES, "never"], default="critical",
                           help="exit 1 when a finding of this severity or above exists (default critical)")
    audit_cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    audit_cmd.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])

    explain_cmd = sub.add_parser("explain", help="explain an apiserver/kubectl admission webhook error; with a "
                                                 "cluster or manifests, add the webhook's probe verdict now")
    explain_cmd.add_argument("text", nargs="?", default="-", help="the error text; '-' or absent: read stdin")
    sources(explain_cmd)
    explain_cmd.add_argument("--output", choices=["text", "json"], default="text")
    common(explain_cmd)

    demo = sub.add_parser("demo", help="start local faulty webhook backends and serve the exporter against them")
    demo.add_argument("--listen-address", default=f"127.0.0.1:{DEFAULT_PORT}")
    demo.add_argument("--probe-interval", type=_positive_float, default=5.0)
    demo.add_argument("--duration", type=float, default=0.0,
                      help="stop after this many seconds (default: run until interrupted)")
    common(demo)
    return parser


def load_inventory(paths: Sequence[str]) -> Inventory:
    objects, unusable = load_manifests(paths)
    inventory = build_inventory(objects)
    if unusable:
        inventory = Inventory(webhooks=inventory.webhooks, services=inventory.services,
                              endpoint_slices=inventory.endpoint_slices, namespaces=inventory.namespaces,
                              invalid=(*unusable, *inventory.invalid), loaded_at=inventory.loaded_at)
    return inventory


def _report_invalid(inventory: Inventory) -> None:
    for bad in inventory.invalid:
        print(f"skipped {bad.kind or 'document'} {bad.name or ''} in {bad.source}: {bad.reason}".replace("  ", " "),
              file=sys.stderr)


async def _credentials(args: argparse.Namespace) -> Credentials:
    """Loaded and used once up front: a kubeconfig problem, or an exec plugin or token file that fails, is one
    line and exit 2 at start, not a watch retried forever."""
    creds = load_credentials(args.kubeconfig, args.context)
    await asyncio.to_thread(creds.token)
    return creds


async def _discovery(args: argparse.Namespace, adopt: Callable[[Inventory], None]) -> Discovery:
    return Discovery(KubeApi(await _credentials(args)), adopt)


async def _live_inventory(args: argparse.Namespace, limit: float = 60) -> Inventory:
    """One consistent snapshot of the cluster (the same list+watch machinery, stopped once synced).

    A 401/403 on a list is permanent for a one-shot command: it fails at once instead of retrying for `limit`."""
    discovery = await _discovery(args, lambda _: None)
    try:
        await discovery.start()
        synced = asyncio.ensure_future(discovery.wait_synced())
        refused = asyncio.ensure_future(discovery.api.refused.wait())
        try:
            done, _ = await asyncio.wait({synced, refused}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (synced, refused):
                waiter.cancel()
        if synced in done:
            synced.result()
            return discovery.inventory
        if discovery.api.refusal is not None:
            raise UsageError(f"{discovery.api.server} refused the credentials: {discovery.api.refusal}")
        raise UsageError(f"could not list webhook configurations within {limit:g}s: "
                         f"{discovery.last_error or 'no answer from the API'}")
    finally:
        await discovery.close()


async def run_check(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.manifests) if args.manifests else await _live_inventory(args)
    _report_invalid(inventory)
    plans = plan(inventory)
    results = await probe_once(plans, concurrency=args.probe_concurrency)
    statuses = summarize(plans, results)
    print(to_json(statuses) if args.output == "json" else to_table(statuses))
    unhealthy = [s for s in statuses if s.failure_policy == "Fail" and s.unhealthy]
    return EXIT_UNHEALTHY if unhealthy else 0


async def run_audit(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.manifests) if args.manifests else await _live_inventory(args)
    _report_invalid(inventory)
    findings = audit(inventory, plan(inventory))
    render = audit_json if args.output == "json" else audit_text
    print(render(findings, webhooks=len(inventory.webhooks)))
    failing = args.fail_on != "never" and at_or_above(findings, args.fail_on)
    return EXIT_UNHEALTHY if failing else 0


async def run_explain(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise UsageError("explain needs the error text: as an argument, or on stdin")
    inventory: Inventory | None = None
    if args.manifests:
        inventory = load_inventory(args.manifests)
    elif args.kubeconfig or args.context:
        inventory = await _live_inventory(args)
    explanation = explain(text, inventory)
    if inventory is not None and explanation.webhook:
        verdicts = await probe_verdicts(inventory, explanation.webhook, concurrency=args.probe_concurrency)
        explanation = dataclasses.replace(explanation, verdicts=verdicts)
    print(explain_json(explanation) if args.output == "json" else explain_text(explanation))
    return EXIT_UNHEALTHY if explanation.kind == "unknown" else 0


async def _serve_until_stopped(exporter: Exporter, host: str, port: int, *, duration: float = 0.0,
                               on_ready: Callable[[int], Awaitable[None]] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or `duration`), then stop within a bounded time."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        try:
            bound = await exporter.serve(host, port)
        except OSError as err:
            raise UsageError(f"cannot listen on {host or '*'}:{port}: {err.strerror or err}") from err
        event(log, logging.INFO, "listening", address=f"{host or '0.0.0.0'}:{bound}", metrics="/metrics")
        if on_ready is not None:
            await on_ready(bound)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration if duration > 0 else None)
        event(log, logging.INFO, "stopping")
    finally:
        await asyncio.wait_for(exporter.close(), 5)
    return 0


async def run_serve(args: argparse.Namespace) -> int:
    host, port = parse_listen_address(args.listen_address)
    if args.manifests:
        inventory = load_inventory(args.manifests)
        exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval)
        exporter.state.adopt(inventory)
        event(log, logging.INFO, "inventory_loaded", webhooks=len(inventory.webhooks),
              invalid=len(inventory.invalid), targets=len(exporter.scheduler.targets))
        return await _serve_until_stopped(exporter, host, port)
    exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval)
    discovery = await _discovery(args, exporter.state.adopt)
    exporter.attach(discovery)
    await discovery.start()
    event(log, logging.INFO, "discovery_started", server=discovery.api.server)
    return await _serve_until_stopped(exporter, host, port)


async def run_demo(args: argparse.Namespace) -> int:
    from .demo import start_demo

    host, port = parse_listen_address(args.listen_address)
    with tempfile.TemporaryDirectory(prefix="awe-demo-") as tmp:
        demo = await start_demo(Path(tmp))  # a fresh temporary folder: nothing to create
        try:
            exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval)
            exporter.state.adopt(load_inventory([str(demo.folder)]))

            async def show(bound: int) -> None:
                await asyncio.wait_for(exporter.scheduler.wait_first_round(), 30)
                shown = f"{host or 'localhost'}:{bound}"
                print(f"Demo webhooks: {demo.folder}/demo-webhooks.yaml\n"
                      f"Metrics:       http://{shown}/metrics\n"
                      f"Ready:         http://{shown}/readyz\n\n"
                      "First probe round (the table `admission-webhook-exporter check` prints):\n", flush=True)
                print(to_table(summarize(exporter.state.plans, exporter.results.snapshot())), flush=True)
                print("\nServing; Ctrl-C to stop.", flush=True)

            return await _serve_until_stopped(exporter, host, port, duration=args.duration, on_ready=show)
        finally:
            await demo.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "manifests", None) and (args.kubeconfig or args.context):
            raise UsageError("--manifests and --kubeconfig/--context are alternatives: pick one source")
        configure(args.log_level, args.log_format)
        runner = {"serve": run_serve, "check": run_check, "demo": run_demo, "audit": run_audit,
                  "explain": run_explain}[args.command]
        return asyncio.run(runner(args))
    except (UsageError, ManifestError, KubeconfigError, ValueError) as err:
        print(f"admission-webhook-exporter: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
