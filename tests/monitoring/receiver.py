"""The alert receiver Pod (receiver_server.py in a ConfigMap, run by the local Debian Python image) and the
test's view of it: the notifications Alertmanager sent, read over the Pod network from this machine."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.monitoring.kps import NAMESPACE, Notification, Stack, StackError, eventually

NAME = "awe-alert-receiver"
PORT = 8080
SCRIPT = Path(__file__).resolve().parent / "receiver_server.py"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # Pod IPs only, never via a proxy


def objects(image: str) -> list[dict[str, Any]]:
    """A ConfigMap with the program and a Pod running it as nobody, read-only root, no capabilities."""
    labels = {"app.kubernetes.io/name": NAME}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME, "namespace": NAMESPACE},
         "data": {"receiver_server.py": SCRIPT.read_text()}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
         "spec": {
             "automountServiceAccountToken": False,
             "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                 "seccompProfile": {"type": "RuntimeDefault"}},
             "containers": [{
                 "name": "receiver", "image": image, "imagePullPolicy": "IfNotPresent",
                 "args": ["/receiver/receiver_server.py", str(PORT)],
                 "ports": [{"name": "http", "containerPort": PORT}],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 1},
                 "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "program", "mountPath": "/receiver", "readOnly": True}],
             }],
             "volumes": [{"name": "program", "configMap": {"name": NAME}}],
         }},
    ]


class Receiver:
    """The receiver Pod of one stack: ``url`` is what Alertmanager posts to (the Pod's IP: no DNS here)."""

    def __init__(self, stack: Stack, image: str) -> None:
        self.stack = stack
        self.image = image
        self.ip = ""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{PORT}/"

    def start(self, timeout_s: float = 120.0) -> Receiver:
        for obj in objects(self.image):
            self.stack.apply(obj)
        self.ip = eventually(lambda: self.stack.pod_ip(NAME), timeout_s=timeout_s, what="receiver Pod Ready",
                             every_s=0.5, describe=self.stack.describe_pods)
        return self

    def notifications(self) -> list[Notification]:
        try:
            with _NO_PROXY.open(f"{self.url}notifications", timeout=10) as r:
                items = json.loads(r.read())
        except (OSError, urllib.error.URLError, ValueError) as e:
            raise StackError(f"GET {self.url}notifications: {e}") from e
        return [Notification(float(i["received_at"]), dict(i["body"])) for i in items]

    def alerts(self, status: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        """Every alert of every notification, with when it was received; ``status`` firing/resolved filters."""
        return [(n.received_at, a) for n in self.notifications() for a in n.alerts
                if status is None or a.get("status") == status]

    def wait_for_alert(self, predicate: Callable[[dict[str, Any]], bool], *, status: str, timeout_s: float,
                       what: str, since: float = 0.0) -> tuple[float, dict[str, Any]]:
        """The first alert with ``status`` matching ``predicate`` received at ``since`` or later (the receiver
        keeps every notification of the session: an earlier test's page must not count): (received at, alert)."""
        def found() -> tuple[float, dict[str, Any]] | None:
            return next(((t, a) for t, a in self.alerts(status) if t >= since and predicate(a)), None)

        result: tuple[float, dict[str, Any]] = eventually(
            found, timeout_s=timeout_s, what=what, every_s=1.0,
            describe=lambda: f"received: {[(a['labels'].get('alertname'), a['status']) for _, a in self.alerts()]}")
        return result

    @staticmethod
    def since(t0: float, items: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [a for t, a in items if t >= t0]


def now() -> float:
    return time.time()
