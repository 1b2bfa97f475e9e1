"""kube-prometheus-stack's machinery on a test cluster: CRDs, operator, Prometheus and Alertmanager resources.

The objects are fixtures/kube-prometheus-stack.yaml (what the chart renders by default for a release named
``kube-prometheus-stack`` in ``monitoring``; its header names the chart version and every difference) with the
images tests/monitoring/install.sh built. Two ways to run the operator:

* ``in_cluster=True`` (a node is there): the operator is the fixture's Deployment, and it runs Prometheus and
  Alertmanager as StatefulSet Pods from the local Debian images; the tests talk to them on their Pod IPs.
* ``in_cluster=False`` (an apiserver only): the operator is a process on this machine (``KUBECONFIG``), which
  still selects ServiceMonitors and PrometheusRules and writes the configuration it generates into the
  ``prometheus-<name>`` Secret and the rule ConfigMaps; ``generated_config()`` and ``generated_rules()`` read
  them. Nothing runs them: that needs a node.

Every call is synchronous (the official client); a test that serves something on an event loop at the same
time calls these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import string
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from tests.controlplane.harness import _spawn as spawn
from tests.controlplane.harness import stop_process
from tests.e2e.prometheus import PrometheusApi
from tests.helpers import poll
from tests.monitoring.build import MonitoringBuild

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "kube-prometheus-stack.yaml"
CHART_VERSION = "77.0.0"  # kube-prometheus-stack, whose defaults the fixture copies (see its header)
NAMESPACE = "monitoring"
RELEASE = "kube-prometheus-stack"
OPERATOR = f"{RELEASE}-operator"
PROMETHEUS = f"{RELEASE}-prometheus"
ALERTMANAGER = f"{RELEASE}-alertmanager"
FIELD_MANAGER = "awe-tests"
CRD_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class _CrdLoader(yaml.SafeLoader):
    """SafeLoader that reads ``=`` as the string it is in the CRDs' enums (relabel action ``=``), not YAML 1.1's
    ``value`` tag, which PyYAML cannot construct."""


_CrdLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:value"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


class StackError(RuntimeError):
    """Something of the stack did not become ready in time; the message says what it saw last."""


def render(build: MonitoringBuild, receiver_url: str) -> list[dict[str, Any]]:
    """The fixture's objects with this build's images and the receiver's URL filled in."""
    text = string.Template(FIXTURE.read_text()).substitute(
        operator_image=build.operator_image, reloader_image=build.reloader_image,
        prometheus_image=build.prometheus_image, prometheus_version=build.prometheus_version,
        alertmanager_image=build.alertmanager_image, alertmanager_version=build.alertmanager_version,
        receiver_url=receiver_url)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def eventually(predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.5,
               describe: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); StackError after ``timeout_s``."""
    return poll(predicate, timeout_s=timeout_s, what=what, every_s=every_s, describe=describe, error=StackError)


@dataclass(frozen=True)
class Notification:
    """One Alertmanager webhook notification as the receiver recorded it."""

    received_at: float
    body: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts") or [])


class Stack:
    """The CRDs and the fixture's objects on one cluster (admin ``api_client``); ``uninstall()`` removes them."""

    def __init__(self, api_client: Any, build: MonitoringBuild, *, in_cluster: bool,
                 kubeconfig: Path | None = None) -> None:
        from kubernetes import client
        from kubernetes.dynamic import DynamicClient

        self.api_client = api_client
        self.build = build
        self.in_cluster = in_cluster
        self.kubeconfig = kubeconfig
        self.dynamic = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)
        self.created: list[dict[str, Any]] = []
        #: reads a container's log (namespace, pod, container), for failure messages; the node can, the API cannot
        self.pod_log: Callable[[str, str, str], str] | None = None
        self._operator: subprocess.Popen[bytes] | None = None
        self._operator_log: IO[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="awe-kps-"))

    # ---- objects ----

    def apply(self, obj: dict[str, Any]) -> Any:
        """Server-side apply of one object (created or updated; remembered for ``uninstall``)."""
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        result = resource.server_side_apply(body=obj, name=meta["name"], namespace=meta.get("namespace"),
                                            field_manager=FIELD_MANAGER, force_conflicts=True)
        if not any(o["kind"] == obj["kind"] and o["metadata"]["name"] == meta["name"]
                   and o["metadata"].get("namespace") == meta.get("namespace") for o in self.created):
            self.created.append(obj)
        return result

    def delete(self, obj: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        with contextlib.suppress(ApiException):
            resource.delete(name=meta["name"], namespace=meta.get("namespace"))

    def install_crds(self) -> list[str]:
        """Every CRD of the operator's module, applied server-side and waited for ``Established``."""
        names = []
        for path in self.build.crd_files():
            crd = yaml.load(path.read_text(), Loader=_CrdLoader)
            self.apply(crd)
            names.append(crd["metadata"]["name"])
        # Deleted after everything else (uninstall goes newest first): put them at the front.
        crds = [o for o in self.created if o["kind"] == "CustomResourceDefinition"]
        self.created = crds + [o for o in self.created if o["kind"] != "CustomResourceDefinition"]

        def established() -> bool:
            for name in names:
                crd: Any = self.extensions.read_custom_resource_definition(name)
                conditions = {c.type: c.status for c in (crd.status.conditions or [])}
                if conditions.get("Established") != "True":
                    return False
            return True

        eventually(established, timeout_s=CRD_TIMEOUT_S, what=f"CRDs {names} Established")
        return names

    def ensure_namespace(self, name: str = NAMESPACE) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def install(self, receiver_url: str) -> None:
        """CRDs, the ``monitoring`` namespace and the fixture's objects; then the operator (a Deployment in the
        cluster, or a process here)."""
        self.install_crds()
        self.ensure_namespace()
        for obj in render(self.build, receiver_url):
            if not self.in_cluster and obj["kind"] == "Deployment":
                continue  # the operator runs here instead
            self.apply(obj)
        if not self.in_cluster:
            self.start_operator_process()

    def uninstall(self) -> None:
        """Delete what ``install``/``apply`` created, newest first, the CRDs last (a cluster shared by the
        session is left without them, as other tests expect to find it); the operator process is stopped.
        Namespaces stay: their deletion needs the namespace controller, which only a node's cluster runs."""
        self.stop_operator_process()
        for obj in reversed(self.created):
            if obj["kind"] != "Namespace":
                self.delete(obj)
        self.created.clear()

    # ---- the operator out of the cluster ----

    def start_operator_process(self) -> None:
        if self.kubeconfig is None:
            raise ValueError("an operator process needs the cluster's kubeconfig")
        deployment = next(o for o in render(self.build, "http://unused") if o["kind"] == "Deployment")
        args = list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
        # Its own web server on a free loopback port instead of :8080 in a Pod of its own.
        from tests.controlplane.harness import free_port

        args.append(f"--web.listen-address=127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["KUBECONFIG"] = str(self.kubeconfig)
        self._operator_log = open(self._dir / "operator.log", "ab")  # closed by stop_operator_process()
        self._operator = spawn([str(self.build.operator_bin), *args], self._operator_log, env)

    def operator_log(self, lines: int = 40) -> str:
        path = self._dir / "operator.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_operator_process(self) -> None:
        p, self._operator = self._operator, None
        stop_process(p, STOP_TIMEOUT_S, log=self._operator_log)
        self._operator_log = None

    def close(self) -> None:
        self.uninstall()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

    # ---- what the operator generated ----

    def generated_config(self) -> str | None:
        """The Prometheus configuration the operator generated (Secret ``prometheus-<name>``,
        ``prometheus.yaml.gz``), or None before it wrote one."""
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(f"prometheus-{PROMETHEUS}", NAMESPACE)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = (secret.data or {}).get("prometheus.yaml.gz")
        return gzip.decompress(base64.b64decode(data)).decode() if data else None

    def generated_rules(self) -> dict[str, str]:
        """The rule files the operator generated from the selected PrometheusRules: file name -> YAML."""
        cms = self.core.list_namespaced_config_map(
            NAMESPACE, label_selector=f"prometheus-name={PROMETHEUS}").items
        return {name: text for cm in cms for name, text in (cm.data or {}).items()}

    def release_rule_groups(self, release: str, namespace: str = NAMESPACE) -> list[str]:
        """The group names of the PrometheusRule a Helm release of the chart created, as applied to the cluster."""
        api = self.dynamic.resources.get(api_version="monitoring.coreos.com/v1", kind="PrometheusRule")
        rules = [r for r in api.get(namespace=namespace).to_dict()["items"]
                 if (r["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == release]
        if len(rules) != 1:
            raise StackError(f"{len(rules)} PrometheusRules of release {release} in {namespace}")
        return [g["name"] for g in rules[0]["spec"]["groups"]]

    def scrape_jobs(self) -> list[str]:
        config = self.generated_config()
        return [j["job_name"] for j in (yaml.safe_load(config) or {}).get("scrape_configs") or []] if config else []

    def publish_apiserver_endpoints(self, address: str, port: int) -> None:
        """Write the ``default/kubernetes`` Endpoints the kube-apiserver's endpoint reconciler would write.

        The test control plane runs ``--endpoint-reconciler-type=none`` (it binds loopback only, and loopback
        is no valid endpoint address), so nothing else writes them. ``address:port`` is where Pods reach the
        apiserver (tests/node: 10.0.0.1:443, forwarded to the loopback apiserver); the port is named ``https``
        as the reconciler names it, which is what kube-prometheus-stack's apiserver ServiceMonitor selects.
        """
        self.apply({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": "kubernetes", "namespace": "default"},
                    "subsets": [{"addresses": [{"ip": address}],
                                 "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]})

    # ---- the Pods (in the cluster) ----

    def pod_ip(self, name: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod: Any = self.core.read_namespaced_pod(name, NAMESPACE)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        return str(pod.status.pod_ip) if ready and pod.status.pod_ip else None

    def custom_status(self, plural: str, name: str) -> dict[str, str]:
        """``status.conditions`` of a Prometheus/Alertmanager resource as type -> status."""
        from kubernetes.client.exceptions import ApiException

        api = self.dynamic.resources.get(api_version="monitoring.coreos.com/v1",
                                         kind={"prometheuses": "Prometheus", "alertmanagers": "Alertmanager"}[plural])
        try:
            obj = api.get(name=name, namespace=NAMESPACE).to_dict()
        except ApiException:
            return {}
        return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}

    def wait_ready(self, timeout_s: float = 240.0) -> tuple[PrometheusApi, str]:
        """The operator's Prometheus and Alertmanager Pods Ready and their resources ``Available``: returns the
        Prometheus API (on its Pod IP) and Alertmanager's URL."""
        if not self.in_cluster:
            raise ValueError("Prometheus and Alertmanager run only in the cluster")

        def ready() -> tuple[str, str] | None:
            prom = self.pod_ip(f"prometheus-{PROMETHEUS}-0")
            am = self.pod_ip(f"alertmanager-{ALERTMANAGER}-0")
            if not (prom and am):
                return None
            if self.custom_status("prometheuses", PROMETHEUS).get("Available") != "True":
                return None
            if self.custom_status("alertmanagers", ALERTMANAGER).get("Available") != "True":
                return None
            return prom, am

        prom_ip, am_ip = eventually(ready, timeout_s=timeout_s, what="Prometheus and Alertmanager ready",
                                    every_s=1.0, describe=self.describe_pods)
        return PrometheusApi(f"http://{prom_ip}:9090"), f"http://{am_ip}:9093"

    def describe_pods(self) -> str:
        pods: list[Any] = self.core.list_namespaced_pod(NAMESPACE).items
        out = []
        for pod in pods:
            statuses = pod.status.container_statuses or []
            states = [f"{c.name}:{_container_state(c)}" for c in statuses]
            out.append(f"{pod.metadata.name} {pod.status.phase} {states}")
            for c in statuses:
                if not c.ready and self.pod_log is not None:
                    tail = self.pod_log(NAMESPACE, pod.metadata.name, c.name).splitlines()[-8:]
                    out.append(f"  {c.name} log: " + "\n    ".join(tail))
        return "pods: " + "; ".join(out) if out else "no pods in monitoring"


def _container_state(status: Any) -> str:
    if status.ready:
        return "ready"
    if status.state.waiting:
        return f"waiting ({status.state.waiting.reason}: {status.state.waiting.message or ''})"
    if status.state.terminated:
        return f"terminated ({status.state.terminated.reason}, exit {status.state.terminated.exit_code})"
    return "running, not ready"


@contextlib.contextmanager
def installed(api_client: Any, build: MonitoringBuild, *, in_cluster: bool, receiver_url: str,
              kubeconfig: Path | None = None) -> Iterator[Stack]:
    stack = Stack(api_client, build, in_cluster=in_cluster, kubeconfig=kubeconfig)
    try:
        stack.install(receiver_url)
        yield stack
    finally:
        stack.close()
