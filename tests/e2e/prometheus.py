"""A real Prometheus server for end-to-end tests, on 127.0.0.1, in a throw-away directory.

Why a real one: the alert rules and the dashboards are PromQL that only a Prometheus evaluates. promtool's
unit tests (alerts/tests/) pin each rule on synthetic series; this harness checks the same rules, and every
dashboard query, against what the running exporter and a real kube-apiserver actually expose.

Typical use::

    with Prometheus(exporter_port=port, apiserver=ApiserverTarget.of(control_plane)) as prom:
        prom.wait_for_targets()
        prom.query('admission_webhook_probe_success == 0')     # -> list of {"metric": ..., "value": ...}
        prom.alerts()                                          # -> GET /api/v1/alerts, data.alerts

What it writes (all under one ``tempfile.mkdtemp`` directory, removed by ``stop()``):

* ``prometheus.yml``: scrape and evaluation every 1 s; job ``admission-webhook-exporter`` scrapes the
  exporter's ``/metrics``, job ``apiserver`` scrapes the kube-apiserver over HTTPS with a bearer token file and
  its CA. These are the job names the rules select on (alerts/config.yaml's ``exporter_selector`` and
  ``apiserver_selector``). The apiserver job keeps only ``apiserver_admission_webhook_*`` (``metric_relabel``),
  because the rules and dashboards use nothing else and its full /metrics is thousands of series per second.
* ``rules/``: a copy of ``alerts/rules/*.yaml`` with shortened timing (``shorten_rules``). The committed
  rules wait minutes (``for: 2m``, ``for: 15m``) to ride out one failed probe; a test cannot. Every ``for:``
  becomes ``for_duration`` (default 3 s: still several 1 s evaluations, so pending -> firing is exercised),
  and, only when ``range_window`` is given, every range selector ``[5m]`` in ``expr`` becomes that window.
  The default keeps the ranges: ``rate``/``max_over_time`` over 5 m work from the second sample on, and a
  shorter window would change what the rules mean (e.g. how long an expired certificate stays visible).
  Nothing else in the rules changes: the copies are parsed and dumped as YAML, with only those values edited.
* ``data/`` (the TSDB) and ``prometheus.log``.

The process is started the way tests/controlplane starts etcd and kube-apiserver (its launcher: one
long-lived thread, ``PR_SET_PDEATHSIG=SIGKILL``), so it dies with the test process even if that is
SIGKILLed; ``stop()`` sends SIGTERM to its PID, waits, then SIGKILLs, and removes the directory. Nothing
listens afterwards.

The binary is ``prometheus`` on PATH (alerts/install-promtool.sh installs it next to ``promtool``), or
``$AWE_PROMETHEUS``. Missing, it is ``PrometheusUnavailable``: the fixture skips then, or fails when
``AWE_REQUIRE_PROMTOOL=1`` (CI), so a broken install cannot turn these tests into silent skips.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
import yaml

from tests.controlplane.harness import _spawn as spawn  # one launcher thread for every test child process
from tests.controlplane.harness import free_port, stop_process
from tests.helpers import poll, unavailable

ROOT = Path(__file__).resolve().parent.parent.parent
RULES_DIR = ROOT / "alerts" / "rules"
REQUIRE_ENV = "AWE_REQUIRE_PROMTOOL"
BINARY_ENV = "AWE_PROMETHEUS"
EXPORTER_JOB = "admission-webhook-exporter"
APISERVER_JOB = "apiserver"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
API_TIMEOUT_S = 10.0
# A range selector such as [5m] or [1h30m]; subqueries ([5m:1m]) do not match and are left alone.
RANGE = re.compile(r"\[((?:\d+(?:ms|[smhdwy]))+)\]")


class PrometheusUnavailable(RuntimeError):
    """Prometheus cannot run here; ``reason`` is meant for ``pytest.skip``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrometheusError(RuntimeError):
    """The server failed (exited, not ready in time, an API call failed); the message carries the log tail."""


class QueryError(PrometheusError):
    """A query answered ``status: error``: ``error_type`` and ``error`` are Prometheus' own words."""

    def __init__(self, promql: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error}\n  in: {promql}")
        self.promql = promql
        self.error_type = error_type
        self.error = error


@dataclass(frozen=True)
class ApiserverTarget:
    """Where and how to scrape a kube-apiserver's /metrics: ``host:port``, a bearer token, the CA file."""

    address: str
    token: str
    ca_path: Path

    @classmethod
    def of(cls, control_plane: Any) -> ApiserverTarget:
        """From tests/controlplane's ``ControlPlane`` (its admin is in system:masters, so /metrics is allowed)."""
        url = urllib.parse.urlsplit(control_plane.server_url)
        return cls(address=url.netloc, token=control_plane.admin_token, ca_path=Path(control_plane.ca_path))


def find_prometheus() -> Path:
    explicit = os.environ.get(BINARY_ENV)
    found = explicit or shutil.which("prometheus")
    if not found or not os.access(found, os.X_OK):
        where = f"${BINARY_ENV}={explicit}" if explicit else "PATH"
        raise PrometheusUnavailable(f"no prometheus binary on {where}; run alerts/install-promtool.sh")
    return Path(found)


def version(binary: Path | None = None) -> str:
    """``2.42.0`` (whatever ``prometheus --version`` says first), for reports."""
    out = subprocess.run([str(binary or find_prometheus()), "--version"], capture_output=True, text=True,
                         timeout=10, check=False)
    match = re.search(r"version (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (expressions, descriptions) as ``|`` blocks, so the copies read like the originals."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def shorten_rules(sources: Iterable[Path], dest: Path, *, for_duration: str = "3s",
                  range_window: str | None = None) -> list[Path]:
    """Write a copy of each rule file into ``dest`` with every ``for:`` set to ``for_duration``.

    With ``range_window`` also every range selector in ``expr`` (``[5m]`` -> ``[range_window]``). Rules
    without ``for:`` (recording rules, alerts that fire at once) stay as they are. Returns the written paths.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        doc = yaml.safe_load(source.read_text())
        out = copy.deepcopy(doc)
        for group in out.get("groups") or []:
            for rule in group.get("rules") or []:
                if "for" in rule:
                    rule["for"] = for_duration
                if range_window is not None:
                    rule["expr"] = RANGE.sub(f"[{range_window}]", str(rule["expr"]))
        path = dest / source.name
        path.write_text(f"# Copy of {source.name} for an end-to-end test: for: {for_duration}"
                        f"{f', ranges [{range_window}]' if range_window else ''}.\n"
                        + yaml.dump(out, Dumper=_BlockDumper, sort_keys=False, width=1000))
        written.append(path)
    return written


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $HTTP_PROXY: loopback only


class PrometheusApi:
    """The HTTP API of a Prometheus server at ``url``: what the tests ask a Prometheus, wherever it runs.

    ``Prometheus`` below (a process of ours) and tests/monitoring's operator-managed Prometheus (a Pod) share
    it; ``log_tail`` is what an error message adds, when the caller can read the server's log.
    """

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def log_tail(self, lines: int = 30) -> str:
        return ""

    def api(self, path: str, /, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<path>`` and return the JSON envelope (``status``, ``data``, ``errorType``, ``error``)
        whatever the status: a bad query is answered 400 with an envelope, which is what the caller wants."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with _NO_PROXY.open(url, timeout=API_TIMEOUT_S) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        except OSError as e:
            raise PrometheusError(f"GET {url}: {e}; log tail:\n{self.log_tail()}") from e
        try:
            envelope: dict[str, Any] = json.loads(body)
        except ValueError as e:
            raise PrometheusError(f"GET {url}: not JSON: {body[:300]!r}") from e
        return envelope

    def _data(self, path: str, **params: str) -> Any:
        envelope = self.api(path, **params)
        if envelope.get("status") != "success":
            raise QueryError(params.get("query", path), envelope.get("errorType", "?"), envelope.get("error", "?"))
        return envelope["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query at now: the ``result`` list (vector/matrix), or ``[result]`` for a scalar/string.

        Raises ``QueryError`` when Prometheus rejects the expression."""
        data = self._data("query", query=promql)
        result = data["result"]
        return list(result) if data["resultType"] in ("vector", "matrix") else [result]

    def query_range(self, promql: str, *, seconds: float = 30.0, step: str = "1s") -> list[dict[str, Any]]:
        """A range query over the last ``seconds`` (what a time series panel asks): the ``result`` matrix."""
        end = time.time()
        data = self._data("query_range", query=promql, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step=step)
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v1/alerts: every pending and firing alert (``labels``, ``annotations``, ``state``)."""
        return list(self._data("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._data("targets")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self._data("rules")["groups"])

    def config_yaml(self) -> str:
        """GET /api/v1/status/config: the configuration the server runs now (after its last reload)."""
        return str(self._data("status/config")["yaml"])

    def alertmanagers(self) -> list[dict[str, Any]]:
        """GET /api/v1/alertmanagers: the Alertmanagers alerts are sent to (``activeAlertmanagers``)."""
        return list(self._data("alertmanagers")["activeAlertmanagers"])

    def wait_for(self, predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.5) -> Any:
        """Poll ``predicate`` until it returns something truthy (returned); PrometheusError after ``timeout_s``."""
        return poll(predicate, timeout_s=timeout_s, what=what, every_s=every_s, error=PrometheusError)


class Prometheus(PrometheusApi):
    """One Prometheus process. ``start()`` returns once ``/-/ready`` answers 200; ``stop()`` is idempotent.

    Args:
        exporter_port: the exporter's port on 127.0.0.1 (job ``admission-webhook-exporter``); None: no job.
        apiserver: the kube-apiserver to scrape (job ``apiserver``); None: no job.
        rule_files: rule files to load, copied through ``shorten_rules`` (default: alerts/rules/*.yaml).
        for_duration, range_window: see ``shorten_rules``; ``for_duration=None`` loads the rules unchanged.
        interval: scrape and evaluation interval (also the scrape timeout, which may not exceed it).
        apiserver_metrics: regex of the apiserver metric names kept.
        exporter_scrape: more keys of the exporter's scrape job (``scheme``, ``tls_config``, ``authorization``,
            ``basic_auth``: how a --web.config.file exporter is scraped).
        extra_scrape_configs: more scrape jobs, as written.
    """

    def __init__(
        self,
        *,
        exporter_port: int | None = None,
        apiserver: ApiserverTarget | None = None,
        rule_files: Sequence[Path] | None = None,
        for_duration: str | None = "3s",
        range_window: str | None = None,
        interval: str = "1s",
        apiserver_metrics: str = "apiserver_admission_webhook_.*",
        exporter_scrape: dict[str, Any] | None = None,
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        binary: Path | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        super().__init__("")  # the URL is known once started: ``url`` below
        self.binary = binary or find_prometheus()
        self.exporter_port = exporter_port
        self.apiserver = apiserver
        self.rule_sources = list(rule_files if rule_files is not None else sorted(RULES_DIR.glob("*.yaml")))
        self.for_duration = for_duration
        self.range_window = range_window
        self.interval = interval
        self.apiserver_metrics = apiserver_metrics
        self.exporter_scrape = dict(exporter_scrape or {})
        self.extra_scrape_configs = list(extra_scrape_configs)
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.dir: Path | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._last_log = ""

    # ---- files ----

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def _write_config(self, d: Path) -> Path:
        if self.for_duration is None:
            (d / "rules").mkdir()
            rule_paths = [Path(shutil.copy(src, d / "rules" / src.name)) for src in self.rule_sources]
        else:
            rule_paths = shorten_rules(self.rule_sources, d / "rules", for_duration=self.for_duration,
                                       range_window=self.range_window)
        scrapes: list[dict[str, Any]] = []
        if self.exporter_port is not None:
            scrapes.append({"job_name": EXPORTER_JOB, **self.exporter_scrape,
                            "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}]})
        if self.apiserver is not None:
            token = d / "apiserver.token"
            token.touch(mode=0o600)
            token.write_text(self.apiserver.token)
            scrapes.append({
                "job_name": APISERVER_JOB,
                "scheme": "https",
                "authorization": {"type": "Bearer", "credentials_file": str(token)},
                "tls_config": {"ca_file": str(self.apiserver.ca_path)},
                "static_configs": [{"targets": [self.apiserver.address]}],
                "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": self.apiserver_metrics,
                                            "action": "keep"}],
            })
        config = {
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in rule_paths],
            "scrape_configs": [*scrapes, *self.extra_scrape_configs],
        }
        path = d / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ---- lifecycle ----

    def start(self, attempts: int = 3) -> Prometheus:
        if self.dir is not None:
            raise RuntimeError("already started")
        self.dir = Path(tempfile.mkdtemp(prefix="awe-prometheus-"))
        atexit.register(self.stop)  # a forgotten stop() still removes the process and the directory
        try:
            config = self._write_config(self.dir)
            for attempt in range(attempts):
                self.port = free_port()
                self._spawn(config)
                try:
                    self._wait_ready()
                    return self
                except PrometheusError:
                    in_use = "address already in use" in self.log_tail()
                    self._terminate()
                    if not in_use or attempt == attempts - 1:
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _spawn(self, config: Path) -> None:
        assert self.dir is not None
        self._log = open(self.dir / "prometheus.log", "ab")  # closed by _terminate()
        argv = [
            str(self.binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
        ]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        # The control plane's launcher: forked from its one long-lived thread with PR_SET_PDEATHSIG=SIGKILL.
        self._popen = spawn(argv, self._log, env)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self._popen is None or self._popen.poll() is not None:
                code = self._popen.returncode if self._popen else "?"
                raise PrometheusError(f"prometheus exited with {code}; log tail:\n{self.log_tail()}")
            try:
                with _NO_PROXY.open(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {self.ready_timeout_s:.0f}s (last: {last}); "
                              f"log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.dir is not None and (self.dir / "prometheus.log").exists():
            self._last_log = "\n".join((self.dir / "prometheus.log").read_text(errors="replace")
                                       .splitlines()[-lines:])
        return self._last_log

    def _terminate(self) -> None:
        """SIGTERM by PID, wait up to STOP_TIMEOUT_S, then SIGKILL; always reaps and closes the log."""
        p, self._popen = self._popen, None
        stop_process(p, STOP_TIMEOUT_S, log=self._log)
        self._log = None

    def stop(self) -> None:
        """Stop the process and remove its directory (the last log lines stay in ``log_tail()``)."""
        self._terminate()
        if self.dir is not None:
            self.log_tail()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def wait_for_targets(self, timeout_s: float = 15.0) -> None:
        """Every configured job has an up target (its first scrape succeeded)."""
        jobs = {j for j, on in ((EXPORTER_JOB, self.exporter_port is not None),
                                (APISERVER_JOB, self.apiserver is not None)) if on}

        def all_up() -> bool:
            targets = self.targets()
            return jobs <= {t["labels"].get("job") for t in targets if t.get("health") == "up"}

        try:
            self.wait_for(all_up, timeout_s=timeout_s, what=f"jobs {sorted(jobs)} up", every_s=0.2)
        except PrometheusError as e:
            errors = [(t["labels"].get("job"), t.get("lastError")) for t in self.targets()]
            raise PrometheusError(f"{e}; targets: {errors}") from e


@pytest.fixture
def make_prometheus() -> Iterator[Callable[..., Prometheus]]:
    """Factory for started ``Prometheus`` servers (kwargs go to ``Prometheus``), all stopped after the test.

    ``start()`` blocks for about a second: from an async test call the factory with ``asyncio.to_thread`` so
    the exporter on the same event loop keeps answering. Import it into a test module to use it.
    """
    try:
        find_prometheus()
    except PrometheusUnavailable as e:
        unavailable("prometheus", e.reason, REQUIRE_ENV)
    started: list[Prometheus] = []

    def make(**kwargs: Any) -> Prometheus:
        prom = Prometheus(**kwargs)
        started.append(prom)
        return prom.start()

    try:
        yield make
    finally:
        for prom in started:
            prom.stop()
