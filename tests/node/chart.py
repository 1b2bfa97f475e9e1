"""The exporter as users install it, on the test node: the README's helm command and ``kubectl apply -k``,
what runs (the Pod, its process), what it reports (its /metrics, reached through its Service), and what an
uninstall leaves behind."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .docs import code_blocks, commands
from .harness import REPO_ROOT, NodeCluster, NodeError, eventually

CHART = REPO_ROOT / "deploy" / "helm" / "admission-webhook-exporter"
MANIFESTS = REPO_ROOT / "deploy" / "manifests"
CRDS = REPO_ROOT / "tests" / "fixtures" / "crds"
README = REPO_ROOT / "README.md"
INSTALL_SECTION = "Install with kube-prometheus-stack"
RELEASE = "admission-webhook-exporter"  # the README's release name, and deploy/manifests' object names
NAMESPACE = "monitoring"  # the README's namespace
SERVICE, PORT = RELEASE, "metrics"
SELECTOR = f"app.kubernetes.io/name=admission-webhook-exporter,app.kubernetes.io/instance={RELEASE}"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
EXCLUDE_LABEL = "admission-webhook-exporter.io/exclude"
#: namespaced kinds the chart or the manifests can create (and the ones Kubernetes derives from them)
NAMESPACED_KINDS = ("deployments", "replicasets", "pods", "services", "endpoints", "endpointslices", "configmaps",
                    "secrets", "serviceaccounts", "roles", "rolebindings", "networkpolicies", "poddisruptionbudgets")
CLUSTER_KINDS = ("clusterroles", "clusterrolebindings")
OPERATOR_KINDS = ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")
READY_TIMEOUT_S = 120.0


def chart_image() -> str:
    """The image the chart runs by default: ``image.repository`` at the chart's appVersion."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"


def readme_install_commands(release_label: str = "kube-prometheus-stack") -> tuple[str, str, str]:
    """The README's install section, as written: the helm install, the ``kubectl apply -k``, and the label
    command of the namespace exclusion (``<your kube-prometheus-stack release>`` filled in)."""
    blocks = [c for b in code_blocks(README, INSTALL_SECTION) for c in commands(b)]
    helm = next(c for c in blocks if c.startswith("helm install"))
    apply = next(c for c in blocks if c.startswith("kubectl apply -k"))
    label = next(c for c in blocks if c.startswith("kubectl label namespace"))
    return helm.replace("<your kube-prometheus-stack release>", release_label), apply, label


def readme_namespace_selector() -> dict[str, Any]:
    """The ``namespaceSelector`` the README tells every webhook to carry (its yaml block, parsed)."""
    (block,) = code_blocks(README, INSTALL_SECTION, "yaml")
    return dict(yaml.safe_load(block)["namespaceSelector"])


def create_namespace(node: NodeCluster, name: str, labels: dict[str, str]) -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    node.kubectl("apply", "-f", "-", input=json.dumps(doc))
    node.wait_namespace_usable(name)


def delete_namespace(node: NodeCluster, name: str, timeout_s: float = 90.0) -> None:
    """Delete and wait until it is gone (the namespace controller empties it first)."""
    node.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")
    eventually(lambda: node.request(f"/api/v1/namespaces/{name}")[0] == 404, timeout_s=timeout_s,
               what=f"namespace {name} deleted", on_timeout=lambda: node.describe(name))


def operator_crds(node: NodeCluster) -> list[str]:
    """The prometheus-operator CRDs the chart's optional kinds need, those the cluster has."""
    names = node.kubectl("get", "crd", "-o", "name").stdout.split()
    return [k for k in OPERATOR_KINDS if f"customresourcedefinition.apiextensions.k8s.io/{k}" in names]


def install_operator_crds(node: NodeCluster) -> None:
    """ServiceMonitor and PrometheusRule CRDs (the chart renders both by default)."""
    node.kubectl("apply", "--server-side", "-f", str(CRDS))

    def established(crd: str) -> bool:
        status, body = node.request(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        conditions = json.loads(body).get("status", {}).get("conditions") or [] if status == 200 else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    # (`kubectl wait --for=condition=Established` fails at once on a CRD whose status is not written yet.)
    for crd in OPERATOR_KINDS:
        eventually(functools.partial(established, crd), timeout_s=60, what=f"CRD {crd} established")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(node: NodeCluster, namespace: str = NAMESPACE) -> list[Sample]:
    """The exporter's /metrics through its Service (the apiserver's service proxy)."""
    status, body = node.service_get(namespace, SERVICE, PORT, "/metrics")
    if status != 200:
        raise NodeError(f"GET /metrics through service {namespace}/{SERVICE} answered {status}: {body[:300]!r}")
    return [Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def find(samples: list[Sample], metric: str, /, **labels: str) -> list[Sample]:
    """Samples of ``metric`` carrying ``labels`` (a webhook's ``name`` label included)."""
    return [s for s in samples if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]


def pods(node: NodeCluster, namespace: str, selector: str = SELECTOR) -> list[dict[str, Any]]:
    out = node.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def wait_ready_pods(node: NodeCluster, namespace: str, selector: str = SELECTOR, count: int = 1,
                    timeout_s: float = READY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Exactly ``count`` Pods matching ``selector``, all Ready and none terminating."""

    def ready() -> list[dict[str, Any]] | None:
        found = pods(node, namespace, selector)
        ok = [p for p in found if is_ready(p)]
        return ok if len(ok) == count == len(found) else None

    return eventually(ready, timeout_s=timeout_s, what=f"{count} Ready pod(s) {selector} in {namespace}",
                      on_timeout=lambda: node.describe(namespace))


def container_pid(node: NodeCluster, pod: dict[str, Any]) -> int:
    """Host PID of the Pod's (first) container's main process, from containerd."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for line in node.ctr("tasks", "list").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            return int(pid)
    raise NodeError(f"no running task for container {cid}")


def process_identity(pid: int) -> tuple[list[int], list[int], str]:
    """(uids, gids, root mount options) of a process, as the kernel sees them."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids = [int(x) for x in next(li for li in status if li.startswith("Uid:")).split()[1:]]
    gids = [int(x) for x in next(li for li in status if li.startswith("Gid:")).split()[1:]]
    root = next(li for li in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if li.split()[4] == "/")
    return uids, gids, root.split()[5]


def leftovers(node: NodeCluster, name: str = RELEASE) -> list[str]:
    """Every object, in any namespace, that the chart or the manifests made (by the instance label, the
    helm release secret's labels, the Service name of EndpointSlices, or the object name)."""
    found: set[str] = set()
    kinds = ",".join(NAMESPACED_KINDS + CLUSTER_KINDS)
    crds = node.kubectl("get", "crd", "-o", "name", check=False).stdout
    kinds += "".join(f",{k}" for k in OPERATOR_KINDS if k in crds)
    for selector in (f"app.kubernetes.io/instance={name}", f"owner=helm,name={name}",
                     f"kubernetes.io/service-name={name}"):
        out = node.kubectl("get", kinds, "-A", "-l", selector, "-o", "name").stdout
        found |= {line for line in out.split() if line}
    everything = json.loads(node.kubectl("get", kinds, "-A", "-o", "json").stdout)["items"]
    found |= {f"{o['kind'].lower()}/{o['metadata']['name']}" for o in everything
              if o["metadata"]["name"].startswith(name)}
    return sorted(found)


def wait_nothing_left(node: NodeCluster, name: str = RELEASE, timeout_s: float = 90.0) -> float:
    """Seconds until :func:`leftovers` is empty (Pods terminate, the garbage collector removes ReplicaSets
    and EndpointSlices)."""
    t0 = time.monotonic()
    left: list[str] = []

    def gone() -> bool:
        nonlocal left
        left = leftovers(node, name)
        return not left

    eventually(gone, timeout_s=timeout_s, what=f"nothing of {name} left", every_s=1.0,
               on_timeout=lambda: f"left: {left}")
    return time.monotonic() - t0
