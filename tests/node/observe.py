"""Watching the node from the test's side: EndpointSlice changes as the apiserver announces them, events, the
alerts a Prometheus rule evaluator would fire on what the exporter serves."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .chart import Sample
from .harness import REPO_ROOT, NodeCluster

RULES = sorted((REPO_ROOT / "alerts" / "rules").glob("*.yaml"))
EXPORTER_JOB = "admission-webhook-exporter"  # the job the rules select (alerts/config.yaml)


@dataclass(frozen=True)
class SliceEvent:
    at: float  # time.time() when the watch delivered it
    type: str
    name: str
    ready: int  # endpoints with conditions.ready true


class SliceWatch:
    """A watch of a Service's EndpointSlices from the test process, recording when each change arrives.

    Why: "the exporter reports no_endpoints within 2 s of the EndpointSlice change" is measured between two
    receivers of the same apiserver event (this watch and the exporter's), not against a scrape loop that
    the machine's load would slow down.
    """

    def __init__(self, node: NodeCluster, namespace: str, service: str) -> None:
        assert node.cp is not None
        self.node = node
        self.path = (f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?watch=1"
                     f"&labelSelector=kubernetes.io/service-name%3D{service}&timeoutSeconds=600")
        self.events: list[SliceEvent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slice-watch")
        self._conn: http.client.HTTPSConnection | None = None
        self._ready = threading.Event()
        self.error: str | None = None

    def _run(self) -> None:
        cp = self.node.cp
        assert cp is not None
        conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context(), timeout=650)
        self._conn = conn
        try:
            conn.request("GET", self.path, headers={"Authorization": f"Bearer {cp.admin_token}"})
            resp = conn.getresponse()
            self._ready.set()
            while not self._stop.is_set():
                line = resp.readline()
                if not line:
                    break
                ev = json.loads(line)
                obj = ev["object"]
                ready = sum(1 for e in obj.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))
                self.events.append(SliceEvent(time.time(), ev["type"], obj["metadata"]["name"], ready))
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self._stop.is_set():
                self.error = repr(e)
        finally:
            conn.close()
            self._ready.set()

    def __enter__(self) -> SliceWatch:
        self._thread.start()
        self._ready.wait(15)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def first(self, ready: int, after: float = 0.0) -> SliceEvent | None:
        """The first change after ``after`` that left ``ready`` ready endpoints (summed over the slices)."""
        totals: dict[str, int] = {}
        for e in self.events:
            totals[e.name] = 0 if e.type == "DELETED" else e.ready
            if e.at >= after and sum(totals.values()) == ready:
                return e
        return None


def events(node: NodeCluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    out = node.kubectl("-n", namespace, "get", "events", "--field-selector", f"reason={reason}", "-o", "json").stdout
    return list(json.loads(out)["items"])


# --------------------------------------------------------------------------------------------- #
# alerts: the project's rules, evaluated by promtool on the series the exporter served


def promtool() -> str | None:
    return shutil.which("promtool")


def _series(sample: Sample, instance: str) -> str:
    labels = {**sample.labels, "job": EXPORTER_JOB, "instance": instance}
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{sample.name}{{{body}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def firing(samples: list[Sample], alertname: str, *, after: str = "10m", **labels: str) -> bool:
    """Whether ``alertname`` fires with ``labels`` once the scraped ``samples`` have stayed as they are for
    ``after`` (longer than every ``for:`` of the rule), with the committed rules (alerts/rules), by promtool.

    A scrape is one point in time; a rule with ``for: 2m`` needs the same values for 2 minutes. promtool
    replays the point as a constant series in virtual time, so the check takes a second, not minutes.
    """
    tool = promtool()
    if tool is None:
        raise FileNotFoundError("promtool not on PATH: run alerts/install-promtool.sh")
    series = [{"series": _series(s, "exporter:10047"), "values": f"{_number(s.value)}x40"}
              for s in samples if s.name.startswith("admission_webhook_") and not s.name.endswith("_created")]
    selector = ",".join([f'alertname="{alertname}"', 'alertstate="firing"',
                         *(f'{k}="{_escape(v)}"' for k, v in labels.items())])
    test = {"rule_files": [str(p) for p in RULES], "evaluation_interval": "30s",
            "tests": [{"interval": "30s", "input_series": series,
                       "promql_expr_test": [{"expr": f"count(ALERTS{{{selector}}})", "eval_time": after,
                                             "exp_samples": [{"labels": "{}", "value": 1}]}]}]}
    with tempfile.TemporaryDirectory(prefix="awe-promtool-") as d:
        path = Path(d) / "test.yaml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        done = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120,
                              check=False)
    if done.returncode == 0:
        return True
    if "exp:" in done.stdout + done.stderr and "got:" in done.stdout + done.stderr:
        return False  # evaluated, and the alert is not firing
    raise RuntimeError(f"promtool test rules failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) else repr(v)
