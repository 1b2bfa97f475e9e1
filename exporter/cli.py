"""Command line: `serve`, `check`, `demo`, `audit`, `explain`.

Bad flags and unusable manifests print one line on stderr and exit 2; `check` exits 1 when a
`failurePolicy: Fail` webhook is unhealthy, and `audit` when a finding reaches `--fail-on`, so both can gate
a pipeline. Both also exit 1 when they checked nothing (no webhook; `--allow-empty` when that is expected) or
not everything (an object skipped as malformed). `explain` exits with the number of admission webhook errors
it found in the text (0: none, capped at 100). An unexpected exception is a bug, not a usage error: it
prints its traceback and exits 3. A reader that goes away (`| head`) ends the command quietly, with 141 as a
process killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .log import configure, event
from .model import SEVERITIES, Inventory

# Each command imports what it uses when it runs (`--help`, `explain` and `audit` of a file start in a fraction
# of the time the exporter's server, prober and watches take to import), so these are for annotations only.
if TYPE_CHECKING:
    import asyncio

    from .app import Exporter
    from .canary import CanaryConfig
    from .clientauth import WebhookClientConfig
    from .discovery import Discovery
    from .kubeconfig import Credentials
    from .report import Gate
    from .webconfig import WebSecurity

log = logging.getLogger("exporter")

DEFAULT_PORT = 10047  # outside the fully allocated 9100-9999 exporter range; see README
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3  # a bug: distinct from 1 (unhealthy) so a pipeline does not read a crash as a verdict
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # the reader went away, as a shell reports a process SIGPIPE killed
EXIT_COUNT_CAP = 100  # `explain`: the number of errors found, at most this


class UsageError(Exception):
    """Bad input from the operator: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Bounded:
    """An argparse `type` for a finite number within [low, high]; out of range is refused, never clamped.

    It raises only `ArgumentTypeError`, whose text argparse prints as is: any other exception would make
    argparse print "invalid <function name> value".
    """

    kind: type[int] | type[float]
    low: float
    high: float
    unit: str = ""  # "seconds", or "" for a count
    hint: str = ""  # appended to the error, e.g. what to do instead

    def __call__(self, value: str) -> float:
        try:
            number = self.kind(value.strip())
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and self.low <= number <= self.high):
            what = f"a number of {self.unit}" if self.unit else "a whole number"
            raise argparse.ArgumentTypeError(
                f"expected {what} from {self.low:g} to {self.high:g}, got {value!r}{self.hint}")
        return number


# Ranges, with why. A probe interval below 1 s is a probe storm against the backends, above a day and
# certificate and endpoint changes go unseen; each probe in flight holds a socket, and 1024 is the usual
# open-file limit; a demo runs at least long enough for its first round to print.
PROBE_INTERVAL = Bounded(float, 1, 86_400, "seconds")
PROBE_CONCURRENCY = Bounded(int, 1, 1024)
CANARY_INTERVAL = Bounded(float, 1, 86_400, "seconds")
CANARY_DEFAULT_INTERVAL = 60.0  # canary.DEFAULT_INTERVAL (a test keeps them equal): `--help` loads no aiohttp
DEMO_DURATION = Bounded(float, 1, 86_400, "seconds", hint=" (leave --duration out to run until interrupted)")
NAMESPACE_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label, as namespaces are named


def namespace_name(value: str) -> str:
    """An argparse `type` for a namespace name; anything else is refused with what a name may hold."""
    if not NAMESPACE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected a namespace name (lowercase letters, digits and '-', at most 63, "
                                         f"starting and ending with a letter or digit), got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="admission-webhook-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--probe-concurrency", type=PROBE_CONCURRENCY, default=64, metavar="N",
                       help="probes in flight at most, 1-1024 (default 64)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])

    def client_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--webhook-client-config", metavar="PATH",
                       help="the kube-apiserver's AdmissionConfiguration kubeConfigFile: present to each webhook the "
                            "client certificate (and token) the apiserver presents; without it a backend that "
                            "requires one is reported as client_auth_required")

    def gate(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-empty", action="store_true",
                       help="pass when there is no webhook at all (a cluster or folder expected to hold none); "
                            "without it an empty inventory fails, as a gate that checked nothing must")

    def sources(p: argparse.ArgumentParser) -> None:
        p.add_argument("--manifests", action="append", default=[], metavar="PATH",
                       help="read webhook configurations, Services and EndpointSlices from a .yaml/.yml/.json file "
                            "or folder (repeatable) instead of watching the cluster")
        p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account, else "
                                            "$KUBECONFIG or ~/.kube/config, as kubectl)")
        p.add_argument("--context", help="kubeconfig context (default: the current context)")

    def exporter_namespace(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--exporter-namespace", type=namespace_name, metavar="NAMESPACE",
                       help="the namespace the exporter runs in, e.g. monitoring: the audit then also reports Fail "
                            "webhooks that would keep its Pod from being recreated while their backend is down "
                            f"(fail_policy_gates_exporter); the rule runs only when it is known ({default})")

    serve = sub.add_parser("serve", help="run the exporter")
    sources(serve)
    serve.add_argument("--listen-address", default=f":{DEFAULT_PORT}", help=f"[host]:port (default :{DEFAULT_PORT})")
    serve.add_argument("--probe-interval", type=PROBE_INTERVAL, default=30.0, metavar="SECONDS",
                       help="seconds between probes of one endpoint, 1-86400 (default 30)")
    serve.add_argument("--canary-namespace", metavar="NAMESPACE",
                       help="opt in to the canary: a dry-run create (dryRun=All, nothing stored) per webhook through "
                            "the apiserver's own path, of an object in this existing namespace (needs `create` on "
                            "the canary's resources there); off unless given")
    serve.add_argument("--canary-interval", type=CANARY_INTERVAL, default=CANARY_DEFAULT_INTERVAL, metavar="SECONDS",
                       help="seconds between two canaries of one webhook, 1-86400 "
                            f"(default {CANARY_DEFAULT_INTERVAL:g})")
    serve.add_argument("--canary-resources", default="configmaps,pods", metavar="LIST",
                       help="what the canary may create (dry run), in order of preference: configmaps, pods or both "
                            "(default configmaps,pods)")
    serve.add_argument("--web.config.file", dest="web_config_file", metavar="PATH",
                       help="exporter-toolkit web configuration file: TLS, client certificates, basic auth and "
                            "bearer tokens for --listen-address, re-read when it changes (docs/securing-metrics.md)")
    serve.add_argument("--health-listen-address", metavar="[HOST]:PORT",
                       help="also serve /healthz and /readyz here, plain HTTP and without authentication, for the "
                            "kubelet's probes when --web.config.file requires a client certificate or credentials")
    client_config(serve)
    exporter_namespace(serve, "default: the Pod's own, from its service account; outside a Pod, none")
    common(serve)

    check = sub.add_parser("check", help="probe every webhook once and print a table; exit 1 if a Fail webhook "
                                         "is unhealthy, or if there was nothing to check or something was skipped")
    sources(check)
    check.add_argument("--output", choices=["table", "json"], default="table")
    client_config(check)
    gate(check)
    common(check)

    audit_cmd = sub.add_parser("audit", help="report webhook configurations that can wedge the cluster; exit 1 "
                                             "when a finding reaches --fail-on, or if there was nothing to audit "
                                             "or something was skipped")
    sources(audit_cmd)
    audit_cmd.add_argument("--output", choices=["text", "json"], default="text")
    gate(audit_cmd)
    exporter_namespace(audit_cmd, "default: none")
    audit_cmd.add_argument("--fail-on", choices=[*SEVERITIES, "never"], default="critical",
                           help="exit 1 when a finding of this severity or above exists (default critical); never: "
                                "findings never fail the run (nothing to audit, or a skipped object, still does)")
    audit_cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    audit_cmd.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])

    explain_cmd = sub.add_parser("explain", help="explain each apiserver/kubectl admission webhook error in a text; "
                                                 "with a cluster or manifests, add the webhooks' probe verdicts now; "
                                                 "exit status: how many errors it found")
    explain_cmd.add_argument("text", nargs="?", default="-", help="the error text; '-' or absent: read stdin")
    sources(explain_cmd)
    explain_cmd.add_argument("--output", choices=["text", "json"], default="text")
    client_config(explain_cmd)
    common(explain_cmd)

    demo = sub.add_parser("demo", help="start local faulty webhook backends and serve the exporter against them")
    demo.add_argument("--listen-address", default=f"127.0.0.1:{DEFAULT_PORT}")
    demo.add_argument("--probe-interval", type=PROBE_INTERVAL, default=5.0, metavar="SECONDS",
                      help="seconds between probes of one endpoint, 1-86400 (default 5)")
    demo.add_argument("--duration", type=DEMO_DURATION, default=None, metavar="SECONDS",
                      help="stop after this many seconds, 1-86400 (default: run until interrupted)")
    common(demo)
    return parser


def load_inventory(paths: Sequence[str]) -> Inventory:
    from .inventory import build_inventory
    from .manifests import load_manifests

    objects, unusable = load_manifests(paths)
    inventory = build_inventory(objects)
    if unusable:
        inventory = Inventory(webhooks=inventory.webhooks, services=inventory.services,
                              endpoint_slices=inventory.endpoint_slices, namespaces=inventory.namespaces,
                              invalid=(*unusable, *inventory.invalid), loaded_at=inventory.loaded_at)
    return inventory


def _report_invalid(inventory: Inventory) -> None:
    from .report import skip_messages

    for line in skip_messages(inventory.invalid):
        print(line, file=sys.stderr)


def _gate(args: argparse.Namespace, inventory: Inventory, failures: Sequence[str]) -> Gate:
    """The gate of `check`/`audit`: the inventory's own failures (said on stderr) and the command's."""
    from .report import Gate, inventory_failures

    source = "the cluster" if not args.manifests else f"--manifests {' '.join(args.manifests)}"
    own = inventory_failures(inventory, source=source, allow_empty=args.allow_empty)
    for failure in own:
        print(f"admission-webhook-exporter: gate failed: {failure}", file=sys.stderr)
    return Gate(failures=(*own, *failures), skipped=inventory.invalid)


async def _credentials(args: argparse.Namespace) -> Credentials:
    """Loaded and used once up front: a kubeconfig problem, or an exec plugin or token file that fails, is one
    line and exit 2 at start, not a watch retried forever."""
    import asyncio

    from .kubeconfig import load_credentials

    creds = load_credentials(args.kubeconfig, args.context)
    await asyncio.to_thread(creds.token)
    return creds


async def _discovery(args: argparse.Namespace) -> Discovery:
    from .discovery import Discovery
    from .kubeapi import KubeApi

    return Discovery(KubeApi(await _credentials(args)))


async def _live_inventory(args: argparse.Namespace, limit: float = 60) -> Inventory:
    """One consistent snapshot of the cluster (the same list+watch machinery, stopped once synced).

    A 401/403 on a list is permanent for a one-shot command: it fails at once instead of retrying for `limit`."""
    import asyncio

    discovery = await _discovery(args)
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


def _client_config(args: argparse.Namespace) -> WebhookClientConfig | None:
    if not getattr(args, "webhook_client_config", None):
        return None
    from .clientauth import WebhookClientConfig
    from .kubeconfig import KubeconfigError

    try:
        return WebhookClientConfig.load(args.webhook_client_config)
    except KubeconfigError as err:  # the file is read as a kubeconfig: say which flag named it
        raise UsageError(f"--webhook-client-config: {err}") from err


async def run_check(args: argparse.Namespace) -> int:
    from .probe import prober
    from .report import check_failures, summarize, to_json, to_table
    from .scheduler import probe_once
    from .targets import plan

    credentials = _client_config(args)
    inventory = load_inventory(args.manifests) if args.manifests else await _live_inventory(args)
    _report_invalid(inventory)
    plans = plan(inventory)
    results = await probe_once(plans, concurrency=args.probe_concurrency, probe_fn=prober(credentials))
    statuses = summarize(plans, results)
    gate = _gate(args, inventory, check_failures(statuses))
    print(to_json(statuses, gate) if args.output == "json" else to_table(statuses))
    return 0 if gate.passed else EXIT_UNHEALTHY


async def run_audit(args: argparse.Namespace) -> int:
    from .audit import at_or_above, audit
    from .audit import to_json as audit_json
    from .audit import to_text as audit_text
    from .targets import plan

    inventory = load_inventory(args.manifests) if args.manifests else await _live_inventory(args)
    _report_invalid(inventory)
    findings = audit(inventory, plan(inventory), exporter_namespace=args.exporter_namespace)
    failing = at_or_above(findings, args.fail_on) if args.fail_on != "never" else []
    gate = _gate(args, inventory, [f"{len(failing)} finding{'s' if len(failing) != 1 else ''} at or above "
                                   f"--fail-on {args.fail_on}"] if failing else [])
    if args.output == "json":
        print(json.dumps({**json.loads(audit_json(findings, webhooks=len(inventory.webhooks))), **gate.to_dict()},
                         indent=2))
    else:
        print(audit_text(findings, webhooks=len(inventory.webhooks)))
    return 0 if gate.passed else EXIT_UNHEALTHY


async def run_explain(args: argparse.Namespace) -> int:
    from .explain import MAX_INPUT_CHARS, explain_all, probe_verdicts, webhooks_to_probe, with_verdicts
    from .explain import to_json as explain_json
    from .explain import to_text as explain_text

    try:  # bounded: one character more than explain reads tells it the text was longer
        text = sys.stdin.read(MAX_INPUT_CHARS + 1) if args.text == "-" else args.text
    except UnicodeDecodeError as err:
        raise UsageError(f"stdin is not {sys.stdin.encoding} text ({err.reason})") from err
    if not text.strip():
        raise UsageError("explain needs the error text: as an argument, or on stdin")
    credentials = _client_config(args)
    inventory: Inventory | None = None
    source = ""
    if args.manifests:
        inventory, source = load_inventory(args.manifests), f"--manifests {' '.join(args.manifests)}"
    elif args.kubeconfig or args.context:
        inventory, source = await _live_inventory(args), "the cluster"
    result = explain_all(text, inventory, source=source)
    if inventory is not None and (names := webhooks_to_probe(result)):
        from .probe import prober

        verdicts = await probe_verdicts(inventory, names, concurrency=args.probe_concurrency,
                                        probe_fn=prober(credentials))
        result = with_verdicts(result, verdicts)
    print(explain_json(result) if args.output == "json" else explain_text(result))
    return min(result.count, EXIT_COUNT_CAP)


def _listen_address(value: str, flag: str = "--listen-address") -> tuple[str, int]:
    from .server import parse_listen_address

    try:
        return parse_listen_address(value, flag)
    except ValueError as err:  # its message names the flag and the value
        raise UsageError(str(err)) from err


def show_address(host: str, port: int) -> str:
    """`host:port` as the flag takes it back: `[::1]:port` for IPv6, `:port` for every interface."""
    from .targets import format_endpoint

    return f":{port}" if not host else format_endpoint(host, port)


async def _serve_until_stopped(exporter: Exporter, host: str, port: int, *, duration: float | None = None,
                               on_ready: Callable[[int], Awaitable[None]] | None = None,
                               security: WebSecurity | None = None, health: tuple[str, int] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or `duration` seconds), then stop within a bounded time."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        try:
            bound = await exporter.serve(host, port, security=security, health_host=health[0] if health else "",
                                         health_port=health[1] if health else None)
        except OSError as err:
            # asyncio's own text repeats the address as a Python tuple; the errno's wording is enough.
            why = os.strerror(err.errno) if err.errno else str(err)
            where = show_address(host, port) + (f" and {show_address(*health)}" if health else "")
            raise UsageError(f"cannot listen on {where}: {why}") from err
        event(log, logging.INFO, "listening", address=show_address(host, bound), metrics="/metrics",
              tls=security is not None and security.ssl_context is not None)
        if health is not None and exporter.server is not None and exporter.server.health_port is not None:
            event(log, logging.INFO, "listening_health", address=show_address(health[0], exporter.server.health_port),
                  paths="/healthz,/readyz")
        if on_ready is not None:
            await on_ready(bound)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        event(log, logging.INFO, "stopping")
    finally:
        await asyncio.wait_for(exporter.close(), 5)
    return 0


def _canary_config(args: argparse.Namespace) -> CanaryConfig:
    from .canary import CanaryConfig, parse_resources

    try:
        resources = parse_resources(n.strip() for n in args.canary_resources.split(",") if n.strip())
        return CanaryConfig(namespace=args.canary_namespace, resources=resources, interval=args.canary_interval)
    except ValueError as err:
        raise UsageError(f"--canary-resources: {err}") from err


def _exporter_namespace(args: argparse.Namespace) -> str | None:
    """Where this exporter runs, for the audit: --exporter-namespace, else the Pod's own (its service account's
    namespace file), else unknown (outside a Pod)."""
    from .kubeconfig import pod_namespace

    return str(args.exporter_namespace) if args.exporter_namespace else pod_namespace()


async def run_serve(args: argparse.Namespace) -> int:
    from .app import Exporter
    from .canary import Canary
    from .probe import prober
    from .webconfig import WebConfigError, WebSecurity

    host, port = _listen_address(args.listen_address)
    if args.canary_namespace is not None:
        if args.manifests:
            raise UsageError("--canary-namespace needs a cluster: the canary asks the apiserver, --manifests has none")
        _canary_config(args)  # a bad value is a usage error before anything starts
    health = (_listen_address(args.health_listen_address, "--health-listen-address")
              if args.health_listen_address else None)
    try:  # read and checked before anything starts: a bad file is one line and exit 2
        security = WebSecurity(Path(args.web_config_file)) if args.web_config_file else None
    except WebConfigError as err:
        raise UsageError(str(err)) from err
    credentials = _client_config(args)
    where = _exporter_namespace(args)
    if args.manifests:
        inventory = load_inventory(args.manifests)
        exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval,
                            probe_fn=prober(credentials), exporter_namespace=where)
        exporter.adopt(inventory)
        event(log, logging.INFO, "inventory_loaded", webhooks=len(inventory.webhooks),
              invalid=len(inventory.invalid), targets=len(exporter.scheduler.targets), exporter_namespace=where or "")
        return await _serve_until_stopped(exporter, host, port, security=security, health=health)
    discovery = await _discovery(args)
    canary = Canary(discovery.api, _canary_config(args)) if args.canary_namespace else None
    exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval, discovery=discovery,
                        canary=canary, probe_fn=prober(credentials), exporter_namespace=where)
    await exporter.start()
    event(log, logging.INFO, "discovery_started", server=discovery.api.server, exporter_namespace=where or "")
    if canary is not None:
        event(log, logging.INFO, "canary_enabled", namespace=canary.config.namespace, interval=canary.config.interval,
              resources=",".join(r.plural for r in canary.config.resources))
    return await _serve_until_stopped(exporter, host, port, security=security, health=health)


async def run_demo(args: argparse.Namespace) -> int:
    import asyncio

    from .app import Exporter
    from .demo import start_demo
    from .report import summarize, to_table
    from .targets import format_endpoint

    host, port = _listen_address(args.listen_address)
    with tempfile.TemporaryDirectory(prefix="awe-demo-") as tmp:
        demo = await start_demo(Path(tmp))  # a fresh temporary folder: nothing to create
        try:
            exporter = Exporter(concurrency=args.probe_concurrency, interval=args.probe_interval)
            exporter.adopt(load_inventory([str(demo.folder)]))

            async def show(bound: int) -> None:
                await asyncio.wait_for(exporter.scheduler.wait_first_round(), 30)
                shown = format_endpoint(host or "localhost", bound)
                print(f"Demo webhooks: {demo.folder}/demo-webhooks.yaml\n"
                      f"Metrics:       http://{shown}/metrics\n"
                      f"Ready:         http://{shown}/readyz\n\n"
                      "First probe round (the table `admission-webhook-exporter check` prints):\n", flush=True)
                print(to_table(summarize(exporter.state.snapshot.plans, exporter.results.snapshot())), flush=True)
                print("\nServing; Ctrl-C to stop.", flush=True)

            return await _serve_until_stopped(exporter, host, port, duration=args.duration, on_ready=show)
        finally:
            await demo.stop()


def _usage_error(err: Exception) -> bool:
    """Bad input: ours, or an unusable manifest or kubeconfig (their modules load here, on this path only)."""
    from .kubeconfig import KubeconfigError
    from .manifests import ManifestError

    return isinstance(err, (UsageError, ManifestError, KubeconfigError))


LONG_RUNNING = ("serve", "demo")


def _loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the commands that probe for hours, where it is installed: its TLS and socket transports are
    C, where asyncio's are Python, and a probe costs ~15% less CPU (bench/equal_load.py). The one-shot commands
    keep asyncio's loop and do not pay for the import. AWE_EVENT_LOOP=asyncio chooses asyncio's everywhere."""
    choice = os.environ.get("AWE_EVENT_LOOP", "")
    if choice not in ("", "asyncio", "uvloop"):
        raise UsageError(f"AWE_EVENT_LOOP={choice!r}: expected asyncio or uvloop")
    if choice == "asyncio" or (command not in LONG_RUNNING and choice != "uvloop"):
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("AWE_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _offline(args: argparse.Namespace) -> bool:
    """`audit` of files and `explain` of a text alone wait on no I/O: they need no event loop (importing asyncio,
    and ssl with it, was a sixth of their start-up)."""
    if args.command == "audit":
        return bool(args.manifests)
    return args.command == "explain" and not (args.manifests or args.kubeconfig or args.context)


def _run_offline(command: Coroutine[Any, Any, int]) -> int:
    """Run to its end a command coroutine that never suspends (`_offline`): one step, no loop."""
    try:
        command.send(None)
    except StopIteration as done:
        result: int = done.value
        return result
    command.close()
    raise RuntimeError("an offline command waited on I/O")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "manifests", None) and (args.kubeconfig or args.context):
            raise UsageError("--manifests and --kubeconfig/--context are alternatives: pick one source")
        configure(args.log_level, args.log_format)
        runner = {"serve": run_serve, "check": run_check, "demo": run_demo, "audit": run_audit,
                  "explain": run_explain}[args.command]
        if _offline(args):
            return _run_offline(runner(args))
        import asyncio  # after the parser: `--help` and a usage error exit without it

        with asyncio.Runner(loop_factory=_loop_factory(args.command)) as loop:
            return loop.run(runner(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whatever is left to print has nowhere to go; point stdout at /dev/null so that the interpreter's own
        # flush at exit does not fail (and complain) a second time.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as err:
        if _usage_error(err):
            print(f"admission-webhook-exporter: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        # anything else is a bug: show it as one, never as a usage error
        traceback.print_exc()
        print(f"admission-webhook-exporter: internal error: {type(err).__name__}: {err} "
              "(a bug: please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
